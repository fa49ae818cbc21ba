"""``make demo``: run the quickstart sweep (examples/quickstart.yaml), print its summary, write its report."""

from __future__ import annotations

import sys
from pathlib import Path

from .cli import main
from .sweep.config import load_config

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"

if __name__ == "__main__":
    extra = sys.argv[1:]
    main(["run", str(QUICKSTART), *extra], standalone_mode=False)
    storage = extra[extra.index("--storage") + 1] if "--storage" in extra else None
    main(["report", load_config(QUICKSTART, storage_override=storage).root], standalone_mode=False)
