"""Real processes, real SIGKILLs: a sweep killed half-way and re-run yields every row exactly once.

The sweep driver runs as a separate process (``repair-ray run``) joined to this test session's
Ray cluster; it is killed with SIGKILL (its whole process group) and started again.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from repair_ray import load_tables

from .helpers import tiny_sweep, write_yaml
from .processes import kill_when, run_driver, start_driver, wait_for_idle_cluster

KEY = ["model_key", "seed_a", "seed_b", "align", "correction"]


def parquet_files(root: Path, table: str) -> list[Path]:
    return [p for p in (root / "tables" / table).glob("*.parquet")]


@pytest.fixture
def address(ray_session):
    return ray_session.get_runtime_context().gcs_address


def test_driver_killed_in_the_pair_stage_then_rerun_holds_every_pair_once(ray_session, address, tmp_path, subprocesses):
    data = tiny_sweep(
        "killpairs",
        str(tmp_path),
        seeds=5,
        alphas=11,
        train={"epochs": 1, "batch_size": 64, "lr": 0.05},
        flush={"pairs": 1},  # a part file per pair: the kill lands between writes
    )
    config_path = write_yaml(tmp_path / "sweep.yaml", data)
    root = tmp_path / "killpairs"

    driver = start_driver(config_path, address)
    kill_when(driver, lambda: len(parquet_files(root, "pairs")) >= 2)
    done_at_kill = len(parquet_files(root, "pairs"))
    assert done_at_kill < 10, "every pair finished before the kill: the test tested nothing"
    wait_for_idle_cluster(ray_session)

    out = run_driver(config_path, address)
    # the stages are pipelined: the kill may land while some trials still train
    done, todo = map(int, re.search(r"\[train\] (\d+) of 5 trials already done; (\d+) to run", out).groups())
    assert done + todo == 5 and done >= 2
    skipped = int(out.split("[pairs] ")[1].split(" of 10 pairs already done")[0])
    assert skipped >= done_at_kill

    tables = load_tables(str(root))
    pairs, curves, layers = tables["pairs"], tables["curves"], tables["layers"]
    assert len(pairs) == 10 * 6 and not pairs.duplicated(KEY).any()
    assert (pairs["status"] == "ok").all()
    assert len(curves) == 10 * 6 * 2 * 11 and not curves.duplicated([*KEY, "split", "alpha"]).any()
    assert len(layers) == 10 * 6 * 2 and not layers.duplicated([*KEY, "layer"]).any()
    # no partial file is read: every visible file is a whole Parquet file (temporaries are hidden)
    for table in ("pairs", "curves", "layers"):
        for file in parquet_files(root, table):
            assert not file.name.startswith(".")
            pq.read_table(file)


def test_driver_killed_in_the_train_stage_retrains_no_finished_trial(ray_session, address, tmp_path, subprocesses):
    data = tiny_sweep(
        "killtrain",
        str(tmp_path),
        seeds=4,
        dataset={"name": "synthetic", "shape": [1, 8, 8], "num_classes": 4, "train_size": 4096, "test_size": 256},
        train={"epochs": 6, "batch_size": 16, "lr": 0.02, "checkpoint_every": 1},
    )
    config_path = write_yaml(tmp_path / "sweep.yaml", data)
    root = tmp_path / "killtrain"

    def finished():
        return {p.name.split("__seed-")[1].split("-")[0] for p in parquet_files(root, "models")}

    def checkpointed():
        return {p.stem.removeprefix("seed-") for p in (root / "checkpoints").rglob("seed-*.pt")}

    driver = start_driver(config_path, address)
    # kill once a trial has finished AND another is part-way, with a checkpoint to resume from
    kill_when(driver, lambda: finished() and checkpointed() - finished())
    done = finished()
    interrupted = checkpointed() - done
    assert len(done) < 4
    snapshot = {
        p: (p.stat().st_mtime_ns, p.read_bytes())
        for seed in done
        for p in [
            *(root / "checkpoints").rglob(f"seed-{seed}.pt"),
            *(root / "tables" / "models").glob(f"*__seed-{seed}-*.parquet"),
        ]
    }
    wait_for_idle_cluster(ray_session)

    out = run_driver(config_path, address)
    assert f"[train] {len(done)} of 4 trials already done; {4 - len(done)} to run" in out
    for path, (mtime, content) in snapshot.items():
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == content, f"{path} was trained again"
    models = load_tables(str(root))["models"]
    assert len(models) == 4 and (models["status"] == "ok").all()
    resumed = models[models["seed"].astype(str).isin(interrupted)]
    assert (resumed["resumed_from_epoch"] >= 1).all(), resumed[["seed", "resumed_from_epoch"]]
    assert (models["epochs"] == 6).all()
    pairs = load_tables(str(root))["pairs"]
    assert len(pairs) == 6 * 6 and not pairs.duplicated(KEY).any()
