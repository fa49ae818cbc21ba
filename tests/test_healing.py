"""Sweeps at study scale on a real local Ray: keyed by their settings, healing after damage, relocatable,
stages pipelined."""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

import pytest

from repair_ray import load_tables, report
from repair_ray.io.tables import table_files
from repair_ray.sweep.config import parse_config
from repair_ray.sweep.runner import load_sweep_config, run_sweep, sweep_status

from .helpers import tiny_sweep

KEY = ["model_key", "analysis_key", "seed_a", "seed_b", "align", "correction"]


def run(config, lines=None):
    return run_sweep(config, say=(lines.append if lines is not None else lambda m: None))


def quiet_tables(root, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_tables(root, **kwargs)


def mtimes(root: str) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in Path(root, "tables").rglob("*.parquet")}


def test_changed_settings_compute_what_the_new_keys_lack_and_keep_the_old_rows(ray_session, tmp_path):
    data = tiny_sweep("keys", str(tmp_path), align=["none", "weight"], correction=["none"])
    first = parse_config(data)
    run(first)
    old = mtimes(first.root)

    # a new method under the same settings: only it is computed, nothing written is rewritten
    more = parse_config({**data, "align": ["none", "weight", "activation"]})
    lines: list[str] = []
    result = run(more, lines)
    assert result.pairs.ran == 3 and result.train.ran == 0
    corrections = ", ".join(sorted(data["correction"]))
    assert (
        f"[pairs] 0 of 3 pairs already done; 3 to run; 3 of them have rows and compute only align activation "
        f"x correction {corrections}"
    ) in lines, lines
    assert all(p.stat().st_mtime_ns == t for p, t in old.items())
    pairs = quiet_tables(more.root)["pairs"]
    assert len(pairs) == 3 * 3 and pairs["analysis_key"].nunique() == 1

    # other alphas: a new analysis key, every pair again; the old rows stay, distinguishable
    finer = parse_config({**data, "align": ["none", "weight", "activation"], "alphas": 9})
    lines: list[str] = []
    result = run(finer, lines)
    assert "[pairs] 0 of 3 pairs already done; 3 to run" in lines
    assert result.pairs.ran == 3
    every = quiet_tables(finer.root, keys="all")
    assert every["pairs"]["analysis_key"].nunique() == 2 and len(every["pairs"]) == 18
    current = quiet_tables(finer.root)
    assert len(current["pairs"]) == 9 and sorted(current["curves"]["alpha"].unique()) == [i / 8 for i in range(9)]
    status = sweep_status(finer.root)
    assert (status.pairs_ok, status.pairs_missing) == (3, 0)
    # the summary never pools the two keys: 3 pairs per group, whichever rows are loaded
    assert set(report.summarise(current["pairs"])["pairs"]) == {3}
    assert set(report.summarise(every["pairs"])["pairs"]) == {3}

    # back to the first settings: those rows are still there, nothing to compute
    result = run(parse_config({**data, "align": ["none", "weight", "activation"]}))
    assert result.pairs.ran == 0


def test_damaged_and_deleted_table_files_are_recomputed_and_nothing_else(ray_session, tmp_path):
    config = parse_config(tiny_sweep("heal", str(tmp_path), seeds=4, flush={"pairs": 1}))
    run(config)
    complete = quiet_tables(config.root)
    curves = table_files(config.root, "curves")
    layers = table_files(config.root, "layers")
    Path(curves[0].path).write_bytes(Path(curves[0].path).read_bytes()[:200])  # truncated
    Path(layers[-1].path).unlink()  # deleted
    with pytest.warns(UserWarning, match="skipping unreadable file"):
        status = sweep_status(config.root)  # status keeps working, and counts the damage as missing
    assert status.pairs_ok == 6 - 2 and status.pairs_missing == 2
    untouched = {p: t for p, t in mtimes(config.root).items() if p.name not in (curves[0].name, layers[-1].name)}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run(config)
    assert result.pairs.ran == 2 and result.train.ran == 0
    assert all(p.stat().st_mtime_ns == t for p, t in untouched.items())  # nothing undamaged rewritten
    healed = quiet_tables(config.root)
    for table, key in (("pairs", KEY), ("curves", [*KEY, "split", "alpha"]), ("layers", [*KEY, "layer"])):
        assert len(healed[table]) == len(complete[table]) and not healed[table].duplicated(key).any(), table
    assert sweep_status(config.root).pairs_ok == 6


def test_a_copied_sweep_reads_and_resumes_where_it_lies(ray_session, tmp_path, s3_bucket):
    config = parse_config(tiny_sweep("moving", str(tmp_path / "a"), seeds=2))
    run(config)
    moved = tmp_path / "b" / "moving"
    shutil.copytree(config.root, moved)
    shutil.rmtree(config.root)  # the original is gone: nothing may point there

    status = sweep_status(str(moved))
    assert (status.models_ok, status.pairs_ok) == (2, 1)
    relocated = load_sweep_config(str(moved))
    lines: list[str] = []
    result = run(relocated, lines)
    assert result.train.ran == 0 and result.pairs.ran == 0, lines

    # the same folder synced to an object store reads and resumes there
    import boto3

    client = boto3.client("s3")
    for path in moved.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "repair-ray-test", f"synced/moving/{path.relative_to(moved)}")
    remote = f"{s3_bucket}/synced/moving"
    assert sweep_status(remote).pairs_ok == 1
    assert len(quiet_tables(remote)["pairs"]) == 6
    result = run(load_sweep_config(remote))
    assert result.train.ran == 0 and result.pairs.ran == 0


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def test_a_model_configs_pairs_start_before_the_slowest_trial_ends(ray_session, tmp_path, monkeypatch):
    """The second model config's trials wait, in their workers, until the first config's pair has
    ended: pipelined stages run that pair while those trials are in flight. Stages that waited for
    every trial would run it only after them (the trials stop waiting after 2 minutes), and the
    order of the rows' times would say so. Nothing assumes how fast anything runs."""
    from repair_ray.sweep import pair_stage, train_stage
    from repair_ray.sweep.pair_worker import pair_task
    from repair_ray.sweep.train_worker import trial_task

    data = tiny_sweep(
        "pipelined",
        str(tmp_path),
        models=[{"arch": "mlp", "width": 8, "depth": 1}, {"arch": "mlp", "width": 16, "depth": 1}],
        seeds=2,
        align=["none"],
        correction=["none"],
        # the two trials in flight leave a sliver of the 2 CPUs free, and a pair task needs only that:
        # it runs while the trials train (on a cluster that trials fill, pairs take the CPUs that
        # trials free as the train stage runs out of trials)
        resources={"train": {"cpu": 0.9}, "pair": {"cpu": 0.1}},
    )
    config = parse_config(data)
    later = config.models[1].model_key
    pair_ended = tmp_path / "first-pair-ended"

    def trial_after_the_first_pair(spec):
        if spec.model_key == later:
            _wait_for(pair_ended, timeout=120)
        yield from trial_task(spec)

    def pair_then_mark(context, job):
        rows = pair_task(context, job)
        pair_ended.touch()
        return rows

    # the production tasks (make_remote_trial_task, make_remote_pair_task) around these functions
    monkeypatch.setattr(train_stage, "trial_task", trial_after_the_first_pair)
    monkeypatch.setattr(pair_stage, "pair_task", pair_then_mark)
    result = run(config)
    assert result.train.failed == 0 and result.pairs.failed == 0
    tables = quiet_tables(config.root)
    slowest_trial_end = tables["models"]["finished_at"].max()
    first_pair_end = tables["pairs"]["finished_at"].min()
    assert first_pair_end < slowest_trial_end, (first_pair_end, slowest_trial_end)
    assert result.pairs.first_row_seconds is not None
