"""The result tables: one explicit pyarrow schema each, one writer and one reader for all.

A table is a folder of Parquet files under ``<storage>/<sweep>/tables/<table>/``, and a log of
facts: :data:`KEYS` names what one row is about, and two rows with the same key are the same fact,
of which readers keep the newest (files are named by their UTC write time). Every writer writes
whole files (atomically); every reader reads with the explicit schema, so columns a later
version adds come back as nulls from older files instead of being dropped, and nothing comes back
as a pandas Categorical. A file that cannot be read costs only its own rows: readers skip it with
a warning naming it, and the sweep's re-run recomputes what it held.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import re
import secrets
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from ..names import LINEAGE
from . import storage

_STR, _INT, _F64 = pa.string(), pa.int64(), pa.float64()
_TIME = pa.timestamp("us", tz="UTC")


def _schema(*fields: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field(name, kind) for name, kind in fields])


_IDS = (("sweep", _STR), ("model_key", _STR))
_MODEL_DESC = (
    ("arch", _STR),
    ("dataset", _STR),
    ("width", _F64),
    ("depth", _INT),
    ("norm", _STR),
    ("init", _STR),  # the zoo's initialisation (torch, he, lecun); null outside the zoo and for imported networks
    ("model_kwargs", _STR),  # a network's keyword arguments as canonical JSON (architectures outside the zoo)
    ("layer_widths", _STR),  # per-layer widths as JSON ("[300, 100]"; then width is null)
    ("train_override", _STR),  # models[i].train as written (canonical JSON); null: the sweep's train alone
)
_PAIR_IDS = (("seed_a", _INT), ("seed_b", _INT), ("align", _STR), ("correction", _STR))
_WHEN = (("started_at", _TIME), ("finished_at", _TIME))
# children of a trunk (stability studies) and rounds of IMP (lottery tickets): null for independent seeds
_LINEAGE = tuple((name, _F64 if name == "sparsity" else _INT) for name in LINEAGE)

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
        *_WHEN,
        ("checkpoint_bytes", _INT),
        *_LINEAGE,
        ("seeds_in_trial", _INT),  # how many seeds the trial trained together (train.seeds_per_trial)
        # trained in the vectorised loop of several seeds (seeds_per_trial > 1): its rounding differs from a
        # lone trial's, so a lost checkpoint is retrained the same way (then bit for bit, on the CPU)
        ("trained_together", pa.bool_()),
        ("history_json", _STR),  # each epoch's metrics, as JSON: [{"epoch": 1, "test_acc": ...}, ...]
        ("compiled", pa.bool_()),  # trained through torch.compile (train.compile)
        ("error_trace", _STR),  # the full traceback of a failure that raised (``error`` is its one line)
        # a network trained elsewhere (models[i].checkpoints): its file is checkpoint_uri, its bytes' SHA-256 this
        ("imported", pa.bool_()),
        ("checkpoint_sha256", _STR),
        ("workers", _INT),  # workers that trained it data-parallel (train.workers_per_trial; null: before it)
        ("data_path", _STR),  # memory: the dataset held in memory; stream: its images read from disk as needed
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
        ("analysis_key", _STR),
        *_WHEN,
        ("max_barrier_train_loss", _F64),
        ("max_barrier_train_error", _F64),
        ("max_barrier_test_loss", _F64),
        ("max_barrier_test_error", _F64),
        *_LINEAGE,
        # how many α one forward pass evaluated (several: one vmapped program, the same rows up to rounding)
        ("alphas_per_pass", _INT),
        ("error_trace", _STR),  # the full traceback of a failure that raised (``error`` is its one line)
        ("unloadable_seed", _INT),  # a failure to load a network's checkpoint: its seed (the sweep retrains it)
        # imported networks (models[i].checkpoints): each file and the SHA-256 of its bytes (null: trained here)
        ("source_a", _STR),
        ("source_b", _STR),
        ("sha256_a", _STR),
        ("sha256_b", _STR),
        ("data_path", _STR),  # memory | stream: how the pair's samples were read (streamed: decoded once per worker)
        # the sweep's `pairs` when the row was computed (all, disjoint, first:k, sample:K:seed=S, star:i; null: older)
        ("pair_design", _STR),
    ),
    "curves": _schema(
        *_IDS,
        *_PAIR_IDS,
        ("split", _STR),
        ("alpha", _F64),
        ("loss", _F64),
        ("acc", _F64),
        ("analysis_key", _STR),
    ),
    "layers": _schema(
        *_IDS,
        *_PAIR_IDS,
        ("layer", _STR),
        ("layer_index", _INT),
        ("std_ratio", _F64),
        ("mean_var_ratio", _F64),
        ("analysis_key", _STR),
        # which samples the two ratios were measured on, never REPAIR's own: train | test, and how many
        ("held_out", _STR),
        ("held_out_samples", _INT),
    ),
    # repair-ray tune: one row per Tune trial of a model config's recipe
    "recipes": _schema(
        *_IDS,
        ("tune_key", _STR),  # a hash of the tune section and the recipe it tunes (another tune: other rows)
        ("trial_id", _STR),
        *_MODEL_DESC,
        ("grid", _INT),  # which models[i] it tunes
        ("sampled_json", _STR),  # the sampled values, as trained: {"lr": 0.0312, ...}
        ("recipe_json", _STR),  # the whole recipe the trial trained with
        ("seeds_json", _STR),  # the seeds it trained and averaged
        ("metric", _STR),
        ("mode", _STR),
        ("value", _F64),  # the metric after its last epoch (NaN unless ok)
        ("epochs", _INT),
        ("max_epochs", _INT),  # what it would have trained, had it not been stopped
        ("stopped_early", pa.bool_()),  # stopped by the scheduler (ASHA) before max_epochs
        ("history_json", _STR),  # every epoch's val_acc, val_loss, train_loss, train_acc, seconds
        ("scheduler", _STR),
        ("val_samples", _INT),
        ("val_seed", _INT),
        ("status", _STR),  # ok | diverged (a NaN loss) | error
        ("error", _STR),
        ("best", pa.bool_()),  # the best complete ok trial of its model_key and tune_key: the recipe
        ("finished_at", _TIME),
    ),
}
TABLES = tuple(SCHEMAS)

# The columns that name one fact of each table: two rows with the same key are the same fact, and
# readers keep the newest (the row of the most recently written file).
KEYS: dict[str, tuple[str, ...]] = {
    "models": ("model_key", "seed"),
    "pairs": ("model_key", "analysis_key", "seed_a", "seed_b", "align", "correction"),
    "curves": ("model_key", "analysis_key", "seed_a", "seed_b", "align", "correction", "split", "alpha"),
    "layers": ("model_key", "analysis_key", "seed_a", "seed_b", "align", "correction", "layer"),
    "recipes": ("model_key", "tune_key", "trial_id"),
}

_STAMP = re.compile(r"^(\d{8}T\d{12}Z)-")


def table_dir(sweep_root: str, table: str) -> str:
    """The folder of ``table`` in a sweep."""
    if table not in SCHEMAS:
        raise KeyError(f"unknown table {table!r}; the tables are {', '.join(TABLES)}")
    return storage.join(sweep_root, "tables", table)


def table_file(sweep_root: str, table: str, stem: str) -> str:
    """The Parquet file ``stem`` of ``table``."""
    return storage.join(table_dir(sweep_root, table), f"{stem}.parquet")


def new_stem(label: str, at: datetime.datetime | None = None) -> str:
    """A file stem that sorts by write time: ``<UTC stamp>-<label>-<random>``; newer files win."""
    at = at or datetime.datetime.now(datetime.UTC)
    return f"{at.strftime('%Y%m%dT%H%M%S%f')}Z-{label}-{secrets.token_hex(3)}"


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


def write_arrow(uri: str, data: pa.Table) -> None:
    """Write an Arrow table as one Parquet file at ``uri`` atomically (readers never see half a file)."""
    buffer = io.BytesIO()
    pq.write_table(data, buffer)
    storage.write_bytes_atomic(uri, buffer.getvalue())


def write_rows(uri: str, table: str, rows: Iterable[Mapping]) -> None:
    """Write ``rows`` of ``table`` as one Parquet file at ``uri`` atomically."""
    write_arrow(uri, to_arrow(table, rows))


@dataclass(frozen=True)
class TableFile:
    """One Parquet file of a table; ``order`` ranks it by write time (older files first)."""

    uri: str
    path: str
    name: str

    @property
    def stamp(self) -> str:
        # files without a stamp (written by versions before 0.2) count as the oldest
        match = _STAMP.match(self.name)
        return match.group(1) if match else ""


def table_files(sweep_root: str, table: str) -> list[TableFile]:
    """The readable files of ``table``, oldest first (one listing; hidden files are skipped)."""
    folder = table_dir(sweep_root, table)
    filesystem, path = storage.resolve(folder)
    infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    files = [
        TableFile(storage.join(folder, info.base_name), info.path, info.base_name)
        for info in infos
        if info.type == pafs.FileType.File
        and info.base_name.endswith(".parquet")
        and not info.base_name.startswith((".", "_"))
    ]
    return sorted(files, key=lambda f: (f.stamp, f.name))


@dataclass
class TableRead:
    """What :func:`read_arrow` found: the rows, and the files it had to skip."""

    data: pa.Table
    damaged: list[str] = field(default_factory=list)


def read_arrow(
    sweep_root: str,
    table: str,
    *,
    columns: Sequence[str] | None = None,
    newest: bool = True,
    files: list[TableFile] | None = None,
) -> TableRead:
    """Every readable file of ``table`` as one Arrow table with the table's schema.

    Files written by older versions that lack a column give nulls in it. A file that cannot be
    read (truncated, not Parquet, gone while reading) is skipped with a warning naming it: it
    costs only its own rows. With ``newest`` (the default) a fact written twice (a recomputed
    pair, a retrained network) comes back once, from the newest file.
    """
    schema = SCHEMAS[table]
    wanted = list(schema.names) if columns is None else list(columns)
    keys = list(KEYS[table]) if newest else []
    scan = wanted + [k for k in keys if k not in wanted]
    files = table_files(sweep_root, table) if files is None else files
    if not files:
        return TableRead(schema.empty_table().select(wanted))
    filesystem, _ = storage.resolve(files[0].uri)
    try:  # one scan of every file: the fast path
        data = _scan([f.path for f in files], schema, scan, filesystem)
        damaged: list[str] = []
    except (OSError, pa.ArrowException):  # some file is damaged: read the files one by one to find it
        parts, damaged = [], []
        for index, f in enumerate(files):
            try:
                part = _scan([f.path], schema, scan, filesystem)
            except (OSError, pa.ArrowException) as error:
                if storage.exists(f.uri):  # a file compacted away meanwhile is not damage
                    damaged.append(f.uri)
                    warnings.warn(f"skipping unreadable file {f.uri}: {_first_line(error)}", stacklevel=2)
                continue
            parts.append(part.set_column(part.num_columns - 1, _ORDER, pa.array([index] * len(part), pa.int64())))
        data = pa.concat_tables(parts) if parts else _scan([], schema, scan, filesystem)
    if keys and data.num_rows:
        data = _keep_newest(data, keys)
    return TableRead(data.select(wanted), damaged)


_ORDER = "__fragment_index"


def _scan(paths: list[str], schema: pa.Schema, columns: list[str], filesystem: pafs.FileSystem) -> pa.Table:
    dataset = pads.dataset(paths, schema=schema, format="parquet", filesystem=filesystem)
    return dataset.to_table(columns=[*columns, _ORDER])


def _keep_newest(data: pa.Table, keys: list[str]) -> pa.Table:
    """One row per key: the row from the newest file (the highest fragment index)."""
    frame = data.select([*keys, _ORDER]).to_pandas()
    duplicated = frame.duplicated(keys, keep="last")
    if not duplicated.any():
        return data
    # rows of one file are in file order and files oldest first, so the last occurrence is the newest
    newest_last = frame.sort_values(_ORDER, kind="stable").duplicated(keys, keep="last")
    keep = ~newest_last.reindex(frame.index)
    return data.filter(pa.array(keep.to_numpy()))


COMPACT_ROWS = 2_000_000  # rows per compacted file
COMPACT_AFTER = 8  # a sweep run compacts a table that has more files than this
_OLDEST = "00000000T000000000000Z"


def compact_table(sweep_root: str, table: str, *, min_files: int = 2, rows_per_file: int = COMPACT_ROWS) -> int:
    """Rewrite ``table`` as few large files; returns how many files it replaced (0: nothing to do).

    The new files hold the newest row of every fact and are named with the newest input's time, so
    they rank where their rows did; they are written (atomically) before any input is deleted, so a
    crash in between leaves duplicates of the same facts, never a loss. Unreadable files are moved
    to ``_damaged/`` beside the table (readers skip it) instead of being deleted.
    """
    files = table_files(sweep_root, table)
    if len(files) < min_files:
        return 0
    read = read_arrow(sweep_root, table, files=files)
    stamp = max(f.stamp for f in files) or _OLDEST
    folder = table_dir(sweep_root, table)
    for start in range(0, read.data.num_rows, rows_per_file):
        chunk = read.data.slice(start, rows_per_file)
        write_arrow(table_file(sweep_root, table, f"{stamp}-compact-{secrets.token_hex(3)}"), chunk)
    for f in files:
        if f.uri in read.damaged:
            storage.move(f.uri, storage.join(folder, "_damaged", f.name))
        else:
            storage.remove(f.uri, missing_ok=True)
    return len(files)


def compact_tables(sweep_root: str, *, min_files: int = COMPACT_AFTER + 1) -> int:
    """:func:`compact_table` for every table with at least ``min_files`` files; files replaced."""
    return sum(compact_table(sweep_root, table, min_files=min_files) for table in TABLES)


def read_table(sweep_root: str, table: str, *, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Every readable file of ``table`` in a sweep as one DataFrame (see :func:`read_arrow`)."""
    return read_arrow(sweep_root, table, columns=columns).data.to_pandas()


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


CURRENT_KEYS = "current_keys.json"


def write_current_keys(
    sweep_root: str,
    model_keys: Sequence[str],
    analysis_keys: Sequence[str],
    networks: Mapping[str, Sequence[int]] | None = None,
) -> None:
    """Record which keys the sweep's current config makes (readers default to them); ``networks``:
    for model configs that import their networks, the numbers (seeds) of the current ones, so rows
    of a network whose file was rewritten or removed are not read with them."""
    payload: dict[str, object] = {"model_key": sorted(model_keys), "analysis_key": sorted(analysis_keys)}
    if networks:
        payload["networks"] = {key: sorted(int(s) for s in seeds) for key, seeds in sorted(networks.items())}
    storage.write_bytes_atomic(storage.join(sweep_root, CURRENT_KEYS), json.dumps(payload, indent=1).encode())


def current_keys(sweep_root: str) -> dict[str, list[str]] | None:
    """The keys of the sweep's current config, or None for a folder without them (tables copied alone)."""
    uri = storage.join(sweep_root, CURRENT_KEYS)
    try:
        return json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        return None


def select_keys(frame: pd.DataFrame, keys: Mapping[str, Any]) -> pd.Series:
    """Which rows of ``frame`` carry one of the given values in every key column it has; with a
    ``networks`` entry (model key -> seeds), rows of those model keys whose seeds (``seed``, or
    ``seed_a`` and ``seed_b``) are not among its seeds are left out too."""
    kept = pd.Series(True, index=frame.index)
    for column, values in keys.items():
        if column in frame.columns and column != "networks":
            kept &= frame[column].isin(list(values))
    networks = keys.get("networks") or {}
    if networks and "model_key" in frame.columns:
        for key, seeds in networks.items():
            mine = frame["model_key"] == key
            for column in ("seed", "seed_a", "seed_b"):
                if column in frame.columns:
                    kept &= ~mine | frame[column].isin(list(seeds))
    return kept


def load_tables(
    path: str | os.PathLike[str], *, keys: str | Mapping[str, Sequence[str]] = "current"
) -> dict[str, pd.DataFrame]:
    """The result tables of a sweep as pandas DataFrames keyed by name.

    Args:
        path: the sweep's folder, ``<storage>/<sweep name>`` (a local path, ``s3://`` or ``gs://``).
        keys: which rows: ``"current"`` (the default): the model and analysis keys of the config
            the sweep last ran with (every row for a folder that does not record them);
            ``"all"``: every fact ever written, old settings included; or a mapping such as
            ``{"model_key": [...], "analysis_key": [...]}``.

    Returns:
        ``{"models": ..., "pairs": ..., "curves": ..., "layers": ..., "recipes": ...}`` (``recipes``:
        every trial of ``repair-ray tune``, whatever ``keys`` says); a table with no rows yet
        is an empty DataFrame with its columns. Each fact comes once (the newest); unreadable
        files are skipped with a warning naming them.
    """
    root = storage.normalize(path)
    if not storage.exists(root):
        raise FileNotFoundError(f"no sweep at {root}")
    selection: Mapping[str, Sequence[str]] | None
    if isinstance(keys, str):
        if keys not in ("current", "all"):
            raise ValueError(f"keys must be 'current', 'all' or a mapping of key columns to values, got {keys!r}")
        selection = current_keys(root) if keys == "current" else None
    else:
        selection = keys
    tables = {}
    for name in TABLES:
        frame = read_table(root, name)
        if selection and name != "recipes":  # the search before a study, not a fact of its current keys
            kept = select_keys(frame, selection)
            if not kept.all():
                hint = "load_tables(..., keys='all') returns them" if keys == "current" else "as asked"
                warnings.warn(f"{name}: left out {int((~kept).sum())} row(s) of other keys ({hint})", stacklevel=2)
                frame = frame[kept].reset_index(drop=True)
        tables[name] = frame
    return tables
