"""Where results live: URI-aware storage, the Parquet result tables, and checkpoints."""
