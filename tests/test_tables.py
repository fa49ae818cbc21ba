"""The tables as a log of facts: newest wins, damage costs only its own rows, compaction, keys."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from repair_ray import load_tables
from repair_ray.io import storage
from repair_ray.io.tables import (
    compact_table,
    new_stem,
    read_arrow,
    table_file,
    table_files,
    write_current_keys,
    write_rows,
)


def pair_rows(key: str, analysis: str, seeds: tuple[int, int], loss: float, methods=(("none", "none"),)) -> dict:
    ident = {"sweep": "s", "model_key": key, "analysis_key": analysis, "seed_a": seeds[0], "seed_b": seeds[1]}
    rows = {"pairs": [], "curves": [], "layers": []}
    for align, correction in methods:
        m = {**ident, "align": align, "correction": correction}
        rows["pairs"].append({**m, "barrier_test_loss": loss, "status": "ok", "arch": "mlp", "width": 8.0, "depth": 1})
        rows["curves"] += [{**m, "split": "test", "alpha": a, "loss": loss * a, "acc": 0.9} for a in (0.0, 0.5, 1.0)]
        rows["layers"].append({**m, "layer": "l0", "layer_index": 0, "std_ratio": 0.5})
    return rows


def write_part(root: Path, rows: dict) -> str:
    stem = new_stem("part")
    for table in ("curves", "layers", "pairs"):
        write_rows(table_file(str(root), table, stem), table, rows[table])
    return stem


def test_a_fact_written_twice_comes_back_once_the_newest(tmp_path):
    write_part(tmp_path, pair_rows("k", "a1", (0, 1), loss=1.0))
    write_part(tmp_path, pair_rows("k", "a1", (0, 2), loss=2.0))
    write_part(tmp_path, pair_rows("k", "a1", (0, 1), loss=3.0))  # pair (0, 1) recomputed
    pairs = load_tables(tmp_path)["pairs"]
    assert len(pairs) == 2
    assert pairs.set_index("seed_b")["barrier_test_loss"].to_dict() == {1: 3.0, 2: 2.0}
    assert len(load_tables(tmp_path)["curves"]) == 6
    assert len(read_arrow(str(tmp_path), "pairs", newest=False).data) == 3  # the log keeps both


def test_a_truncated_file_costs_only_its_rows_and_is_named(tmp_path):
    write_part(tmp_path, pair_rows("k", "a1", (0, 1), loss=1.0))
    damaged = write_part(tmp_path, pair_rows("k", "a1", (0, 2), loss=2.0))
    path = Path(table_file(str(tmp_path), "pairs", damaged))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match=f"skipping unreadable file .*{damaged}"):
        tables = load_tables(tmp_path)
    assert list(tables["pairs"]["seed_b"]) == [1]
    assert len(tables["curves"]) == 6  # the other tables are whole
    read = read_arrow(str(tmp_path), "pairs")
    assert read.damaged == [str(path)]


def test_compaction_keeps_every_fact_once_and_sets_damage_aside(tmp_path):
    for b in range(1, 11):
        write_part(tmp_path, pair_rows("k", "a1", (0, b), loss=float(b)))
    write_part(tmp_path, pair_rows("k", "a1", (0, 3), loss=30.0))  # a newer version of one fact
    broken = Path(table_files(str(tmp_path), "curves")[0].path)
    broken.write_bytes(b"not parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = {t: load_tables(tmp_path)[t] for t in ("pairs", "curves", "layers")}
        assert compact_table(str(tmp_path), "pairs") == 11
        assert compact_table(str(tmp_path), "curves") == 11
    assert len(table_files(str(tmp_path), "pairs")) == 1 and len(table_files(str(tmp_path), "curves")) == 1
    assert (broken.parent / "_damaged" / broken.name).is_file()  # kept as evidence, hidden from readers
    after = load_tables(tmp_path)
    for table in ("pairs", "curves"):
        columns = ["seed_b", "align", "correction"] + (["alpha"] if table == "curves" else [])
        assert (
            after[table]
            .sort_values(columns)
            .reset_index(drop=True)
            .equals(before[table].sort_values(columns).reset_index(drop=True))
        )
    assert after["pairs"].set_index("seed_b").loc[3, "barrier_test_loss"] == 30.0
    # later writes still win over the compacted file
    write_part(tmp_path, pair_rows("k", "a1", (0, 3), loss=300.0))
    assert load_tables(tmp_path)["pairs"].set_index("seed_b").loc[3, "barrier_test_loss"] == 300.0


def test_a_compaction_killed_before_deleting_loses_nothing(tmp_path, monkeypatch):
    for b in range(1, 5):
        write_part(tmp_path, pair_rows("k", "a1", (0, b), loss=float(b)))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed between writing and deleting")

    monkeypatch.setattr(storage, "remove", crash)
    with pytest.raises(KeyboardInterrupt):
        compact_table(str(tmp_path), "pairs")
    monkeypatch.undo()
    assert len(table_files(str(tmp_path), "pairs")) == 5  # 4 parts + the compacted copy
    pairs = load_tables(tmp_path)["pairs"]
    assert sorted(pairs["seed_b"]) == [1, 2, 3, 4]


def test_readers_default_to_the_current_keys_and_never_pool(tmp_path):
    write_part(tmp_path, pair_rows("k", "old", (0, 1), loss=1.0))
    write_part(tmp_path, pair_rows("k", "new", (0, 1), loss=5.0))
    assert len(load_tables(tmp_path)["pairs"]) == 2  # no record of the current keys: every row
    write_current_keys(str(tmp_path), ["k"], ["new"])
    with pytest.warns(UserWarning, match="left out 1 row"):
        current = load_tables(tmp_path)["pairs"]
    assert list(current["barrier_test_loss"]) == [5.0]
    every = load_tables(tmp_path, keys="all")["pairs"]
    assert sorted(every["analysis_key"]) == ["new", "old"]
    from repair_ray import report

    summary = report.summarise(every)
    assert sorted(summary["pairs"]) == [1, 1]  # two analysis keys: two rows, never one pooled row
    assert set(summary["analysis_key"]) == {"new", "old"}
    with pytest.raises(ValueError, match="keys must be"):
        load_tables(tmp_path, keys="newest")
