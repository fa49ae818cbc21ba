"""The result tables: one explicit pyarrow schema each, one writer and one reader for all.

A table is a folder of Parquet files under ``<storage>/<sweep>/tables/<table>/``; every writer
writes whole files (atomically) and every reader reads the folder with the explicit schema, so
columns a later version adds come back as nulls from older files instead of being dropped, and
nothing comes back as a pandas Categorical.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from . import storage

_STR, _INT, _F64 = pa.string(), pa.int64(), pa.float64()


def _schema(*fields: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field(name, kind) for name, kind in fields])


_IDS = (("sweep", _STR), ("model_key", _STR))
_MODEL_DESC = (("arch", _STR), ("dataset", _STR), ("width", _F64), ("depth", _INT), ("norm", _STR))
_PAIR_IDS = (("seed_a", _INT), ("seed_b", _INT), ("align", _STR), ("correction", _STR))

SCHEMAS: dict[str, pa.Schema] = {
    "models": _schema(
        *_IDS,
        *_MODEL_DESC,
        ("seed", _INT),
        ("epochs", _INT),
        ("train_loss", _F64),
        ("train_acc", _F64),
        ("test_loss", _F64),
        ("test_acc", _F64),
        ("checkpoint_uri", _STR),
        ("train_seconds", _F64),
        ("status", _STR),
        # additions beyond the DESIGN.md contract
        ("error", _STR),
        ("init_seed", _INT),
        ("data_seed", _INT),
        ("resumed_from_epoch", _INT),
        ("device", _STR),
        ("node_id", _STR),
        ("config_json", _STR),
    ),
    "pairs": _schema(
        *_IDS,
        *_MODEL_DESC,
        *_PAIR_IDS,
        ("barrier_train_loss", _F64),
        ("barrier_train_error", _F64),
        ("barrier_test_loss", _F64),
        ("barrier_test_error", _F64),
        ("midpoint_test_loss", _F64),
        ("midpoint_test_acc", _F64),
        ("endpoint_test_acc_a", _F64),
        ("endpoint_test_acc_b", _F64),
        ("align_seconds", _F64),
        ("eval_seconds", _F64),
        ("device", _STR),
        ("status", _STR),
        ("error", _STR),
        # additions beyond the DESIGN.md contract
        ("midpoint_train_loss", _F64),
        ("midpoint_train_acc", _F64),
        ("midpoint_barrier_train_loss", _F64),
        ("midpoint_barrier_train_error", _F64),
        ("midpoint_barrier_test_loss", _F64),
        ("midpoint_barrier_test_error", _F64),
        ("endpoint_test_loss_a", _F64),
        ("endpoint_test_loss_b", _F64),
        ("node_id", _STR),
        ("stat_seconds", _F64),
    ),
    "curves": _schema(
        *_IDS,
        *_PAIR_IDS,
        ("split", _STR),
        ("alpha", _F64),
        ("loss", _F64),
        ("acc", _F64),
    ),
    "layers": _schema(
        *_IDS,
        *_PAIR_IDS,
        ("layer", _STR),
        ("layer_index", _INT),
        ("std_ratio", _F64),
    ),
}
TABLES = tuple(SCHEMAS)


def table_dir(sweep_root: str, table: str) -> str:
    """The folder of ``table`` in a sweep."""
    if table not in SCHEMAS:
        raise KeyError(f"unknown table {table!r}; the tables are {', '.join(TABLES)}")
    return storage.join(sweep_root, "tables", table)


def table_file(sweep_root: str, table: str, stem: str) -> str:
    """The Parquet file ``stem`` of ``table`` (``stem`` names one model or one pair)."""
    return storage.join(table_dir(sweep_root, table), f"{stem}.parquet")


def to_arrow(table: str, rows: Iterable[Mapping]) -> pa.Table:
    """``rows`` as an Arrow table of ``table``'s schema; a key the schema lacks is an error."""
    schema = SCHEMAS[table]
    rows = list(rows)
    names = set(schema.names)
    for row in rows:
        unknown = set(row) - names
        if unknown:
            raise KeyError(f"{table} table has no column {sorted(unknown)[0]!r}")
    return pa.Table.from_pylist(rows, schema=schema)


def write_rows(uri: str, table: str, rows: Iterable[Mapping]) -> None:
    """Write ``rows`` as one Parquet file at ``uri`` atomically (readers never see half a file)."""
    buffer = io.BytesIO()
    pq.write_table(to_arrow(table, rows), buffer)
    storage.write_bytes_atomic(uri, buffer.getvalue())


def read_table(sweep_root: str, table: str) -> pd.DataFrame:
    """Every file of ``table`` in a sweep as one DataFrame (empty, with the columns, if none).

    Files written by older versions that lack a column give nulls in it. Hidden files (a
    leading ``.`` or ``_``: temporary files of a writer) are skipped.
    """
    schema = SCHEMAS[table]
    folder = table_dir(sweep_root, table)
    filesystem, path = storage.resolve(folder)
    if not storage.exists(folder):
        return schema.empty_table().to_pandas()
    dataset = pads.dataset(path, schema=schema, format="parquet", filesystem=filesystem)
    return dataset.to_table().to_pandas()


def load_tables(path: str | os.PathLike[str]) -> dict[str, pd.DataFrame]:
    """The result tables of a sweep as pandas DataFrames keyed by name.

    Args:
        path: the sweep's folder, ``<storage>/<sweep name>`` (a local path, ``s3://`` or ``gs://``).

    Returns:
        ``{"models": ..., "pairs": ..., "curves": ..., "layers": ...}``; a table with no rows yet
        is an empty DataFrame with its columns.
    """
    root = storage.normalize(path)
    if not storage.exists(root):
        raise FileNotFoundError(f"no sweep at {root}")
    return {name: read_table(root, name) for name in TABLES}
