"""Compaction as docs/resuming.md promises it: at the end of a run every table of more than 8 files
becomes few files holding exactly the facts readers saw (each once, the newest), `repair-ray
compact STORAGE/SWEEP [--all]` does it by hand, and a damaged file is set aside, never deleted."""

from __future__ import annotations

import datetime
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from repair_ray.cli import main
from repair_ray.io.tables import (
    COMPACT_AFTER,
    KEYS,
    new_stem,
    read_arrow,
    table_file,
    table_files,
    write_arrow,
    write_rows,
)
from repair_ray.sweep import runner
from repair_ray.sweep.config import parse_config
from repair_ray.sweep.runner import run_sweep

from .helpers import tiny_sweep

ROW_TABLES = ("models", "pairs", "curves", "layers")


def facts(root: str, table: str, *, newest: bool = True) -> pd.DataFrame:
    """The rows of ``table`` as readers see them (``newest``) or as the files hold them, in key order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a damaged file: its warning is asserted where it matters
        frame = read_arrow(root, table, newest=newest).data.to_pandas()
    return frame.sort_values(list(KEYS[table])).reset_index(drop=True)


def file_counts(root: str) -> dict[str, int]:
    return {table: len(table_files(root, table)) for table in ROW_TABLES}


def plant_pair_version(root: str, seed_b: int, loss: float, at: datetime.datetime | None = None) -> None:
    """Another version of the fact (pair 0-``seed_b``, align none, correction none), in a part file
    of its own written at ``at`` (default now: the newest)."""
    rows = read_arrow(root, "pairs").data
    mask = pc.and_(pc.equal(rows["seed_a"], 0), pc.equal(rows["seed_b"], seed_b))
    mask = pc.and_(mask, pc.and_(pc.equal(rows["align"], "none"), pc.equal(rows["correction"], "none")))
    row = rows.filter(mask)
    assert row.num_rows == 1
    index = row.schema.get_field_index("barrier_test_loss")
    row = row.set_column(index, row.schema.field(index), pa.array([loss], pa.float64()))
    write_arrow(table_file(root, "pairs", new_stem("part", at)), row)


def test_a_run_that_wrote_many_part_files_ends_with_one_per_table_holding_the_same_facts(
    ray_session, tmp_path, monkeypatch
):
    data = tiny_sweep(
        "compacted",
        str(tmp_path),
        seeds=3,
        align=["none", "weight"],
        correction=["none"],
        alphas=3,
        train={"epochs": 1, "batch_size": 64, "lr": 0.05},
        flush={"pairs": 1},  # a part file per pair and table
    )
    config = parse_config(data)
    run_sweep(config, say=lambda _: None)
    root = config.root
    assert file_counts(root) == {"models": 3, "pairs": 3, "curves": 3, "layers": 3}  # 8 or fewer: left as they are
    original = facts(root, "pairs").set_index(["seed_a", "seed_b", "align"])["barrier_test_loss"]
    plant_pair_version(root, seed_b=1, loss=123.0)  # recomputed since: the newest version wins
    plant_pair_version(root, seed_b=2, loss=456.0, at=datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))  # older

    seen: dict[str, dict] = {}

    def watched(sweep_root: str, **options) -> int:
        seen["files"] = file_counts(sweep_root)
        seen["facts"] = {table: facts(sweep_root, table) for table in ROW_TABLES}
        return compact_tables(sweep_root, **options)

    compact_tables = runner.compact_tables
    monkeypatch.setattr(runner, "compact_tables", watched)
    lines: list[str] = []
    result = run_sweep(parse_config({**data, "seeds": 6}), say=lines.append)  # 12 more pairs, a file each
    assert result.pairs.ran == 12 and result.train.ran == 3

    # before: 3 + 2 planted + 12 part files per pair table; 6 models files, which stay
    assert seen["files"] == {"models": 6, "pairs": 17, "curves": 15, "layers": 15}
    assert f"[sweep] compacted {17 + 15 + 15} table files" in lines
    assert file_counts(root) == {"models": 6, "pairs": 1, "curves": 1, "layers": 1}
    for table in ROW_TABLES:
        after = facts(root, table)
        assert after.equals(seen["facts"][table]), table  # exactly the facts readers saw before
        assert facts(root, table, newest=False).equals(after), table  # ... each held once
    pairs = facts(root, "pairs").set_index(["seed_a", "seed_b", "align"])["barrier_test_loss"]
    assert len(pairs) == 15 * 2
    assert pairs[(0, 1, "none")] == 123.0  # the newest version of a fact
    assert pairs[(0, 2, "none")] == original[(0, 2, "none")] != 456.0  # an older version is gone
    # a compacted table reads like any other: a run finds every pair done
    assert run_sweep(parse_config({**data, "seeds": 6}), say=lambda _: None).pairs.ran == 0


# ---------------------------------------------------------------------------------------------
# `repair-ray compact`


def write_pair_part(root: Path, seed_b: int, loss: float) -> str:
    """One part file per table of a pair's rows (align none and weight), as the pair stage writes them."""
    ident = {"sweep": "s", "model_key": "k", "analysis_key": "a", "seed_a": 0, "seed_b": seed_b, "correction": "none"}
    rows: dict[str, list[dict]] = {"curves": [], "layers": [], "pairs": []}
    for align in ("none", "weight"):
        m = {**ident, "align": align}
        rows["curves"] += [{**m, "split": "test", "alpha": a, "loss": loss + a, "acc": 0.5} for a in (0.0, 0.5, 1.0)]
        rows["layers"].append({**m, "layer": "layers.0", "layer_index": 0, "std_ratio": loss / 100})
        rows["pairs"].append({**m, "barrier_test_loss": loss, "status": "ok", "arch": "mlp", "width": 8.0})
    stem = new_stem("part")
    for table in ("curves", "layers", "pairs"):
        write_rows(table_file(str(root), table, stem), table, rows[table])
    return stem


def compact(*args: str):
    return CliRunner().invoke(main, ["compact", *args], catch_exceptions=False)


def test_repair_ray_compact_merges_a_table_of_many_files_and_sets_a_damaged_one_aside(tmp_path):
    root = tmp_path / "sweep"
    for b in range(1, 13):
        write_pair_part(root, b, loss=float(b))
    write_pair_part(root, 3, loss=30.0)  # a newer version of pair 0-3
    damaged = Path(table_files(str(root), "curves")[4].path)
    damaged.write_bytes(damaged.read_bytes()[:150])  # a torn copy
    torn = damaged.read_bytes()
    before = {table: facts(str(root), table) for table in ("pairs", "curves", "layers")}
    assert len(before["curves"]) == 12 * 2 * 3 - 2 * 3  # the torn file's rows cannot be read

    with pytest.warns(UserWarning, match=f"skipping unreadable file .*{damaged.name}"):
        result = compact(str(root))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "[compact] models: 0 -> 0 files (left as it is)",
        "[compact] pairs: 13 -> 1 files",
        "[compact] curves: 13 -> 1 files",  # the damaged file is no longer one of the table's
        "[compact] layers: 13 -> 1 files",
    ]
    for table, rows in before.items():
        assert facts(str(root), table).equals(rows), table
        assert facts(str(root), table, newest=False).equals(rows), table  # each fact once
    pairs = facts(str(root), "pairs").set_index(["seed_b", "align"])["barrier_test_loss"]
    assert pairs[(3, "none")] == pairs[(3, "weight")] == 30.0 and len(pairs) == 24
    # the damaged file is kept, as it was, beside the table where readers do not look
    aside = damaged.parent / "_damaged" / damaged.name
    assert not damaged.exists() and aside.read_bytes() == torn
    assert [p.name for p in damaged.parent.iterdir() if p.suffix == ".parquet"] == [
        table_files(str(root), "curves")[0].name
    ]


def test_repair_ray_compact_leaves_a_table_of_few_files_unless_told_all(tmp_path):
    root = tmp_path / "few"
    for b in range(1, COMPACT_AFTER - 3):
        write_pair_part(root, b, loss=float(b))
    before = facts(str(root), "pairs")
    names = sorted(p.name for p in (root / "tables" / "pairs").iterdir())

    result = compact(str(root))
    assert result.exit_code == 0 and "[compact] pairs: 4 -> 4 files (left as it is)" in result.output
    assert sorted(p.name for p in (root / "tables" / "pairs").iterdir()) == names

    result = compact(str(root), "--all")
    assert result.exit_code == 0 and "[compact] pairs: 4 -> 1 files" in result.output
    assert file_counts(str(root)) == {"models": 0, "pairs": 1, "curves": 1, "layers": 1}
    assert facts(str(root), "pairs").equals(before)


def test_repair_ray_compact_of_a_folder_without_tables_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["compact", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert f"error: no tables at {tmp_path / 'nothing'}" in result.output
