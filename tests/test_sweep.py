"""The sweep on a real local Ray cluster (one per test session): tables, resume, failures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from repair_ray import load_tables
from repair_ray.io.checkpoint import load_checkpoint
from repair_ray.io.tables import SCHEMAS
from repair_ray.sweep import pair_stage, train_stage
from repair_ray.sweep.config import parse_config
from repair_ray.sweep.pair_stage import pair_task, run_pair_stage
from repair_ray.sweep.runner import run_sweep, sweep_status

from .helpers import tiny_sweep

DESIGN_COLUMNS = {
    "models": "sweep model_key arch dataset width depth norm seed epochs train_loss train_acc test_loss test_acc "
    "checkpoint_uri train_seconds status",
    "pairs": "sweep model_key arch dataset width depth norm seed_a seed_b align correction barrier_train_loss "
    "barrier_train_error barrier_test_loss barrier_test_error midpoint_test_loss midpoint_test_acc "
    "endpoint_test_acc_a endpoint_test_acc_b align_seconds eval_seconds device status error",
    "curves": "sweep model_key seed_a seed_b align correction split alpha loss acc",
    "layers": "sweep model_key seed_a seed_b align correction layer layer_index std_ratio",
}


def forget_pairs(root: str) -> None:
    for table in ("pairs", "curves", "layers"):
        for path in Path(root, "tables", table).glob("*.parquet"):
            path.unlink()


def run(config, lines=None):
    return run_sweep(config, say=(lines.append if lines is not None else lambda m: None))


@pytest.fixture(scope="module")
def finished_sweep(ray_session, tmp_path_factory):
    """A tiny sweep run once for the module: (config, result, progress lines). Shared, so read-only:
    a test that runs, grows or damages it works on a copy in its own ``tmp_path``."""
    storage = tmp_path_factory.mktemp("runs")
    config = parse_config(tiny_sweep("e2e", str(storage)))
    lines: list[str] = []
    result = run(config, lines)
    return config, result, lines


def test_sweep_writes_every_table_with_the_contract_columns(finished_sweep):
    config, result, _ = finished_sweep
    tables = load_tables(config.root)
    for name, columns in DESIGN_COLUMNS.items():
        assert set(columns.split()) <= set(tables[name].columns), name
        assert not any(isinstance(t, pd.CategoricalDtype) for t in tables[name].dtypes), name
    models, pairs, curves, layers = (tables[n] for n in ("models", "pairs", "curves", "layers"))
    assert len(models) == 3 and (models["status"] == "ok").all()
    assert models["test_acc"].between(0, 1).all() and (models["test_acc"] > 0.4).all()
    # checkpoints are stored relative to the sweep root, so the folder can move
    assert all(not Path(uri).is_absolute() and Path(config.root, uri).is_file() for uri in models["checkpoint_uri"])
    # 3 pairs x 3 aligns x 2 corrections, each exactly once
    assert len(pairs) == 18
    assert not pairs.duplicated(["model_key", "seed_a", "seed_b", "align", "correction"]).any()
    assert (pairs["status"] == "ok").all() and pairs["error"].isna().all()
    assert (pairs["barrier_test_loss"] >= 0).all()
    assert set(pairs["device"]) == {"cpu"}
    assert len(curves) == 18 * 2 * 5
    assert sorted(curves["alpha"].unique()) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert len(layers) == 18 * 2  # two hidden layers
    # the barrier in the pairs table is the one of the curve in the curves table
    row = pairs[(pairs["align"] == "none") & (pairs.correction == "none")].iloc[0]
    curve = curves[
        (curves.seed_a == row.seed_a)
        & (curves.seed_b == row.seed_b)
        & (curves["align"] == "none")
        & (curves.correction == "none")
        & (curves.split == "test")
    ].sort_values("alpha")
    assert len(curve) == 5
    line = (1 - curve.alpha) * curve.loss.iloc[0] + curve.alpha * curve.loss.iloc[-1]
    assert row.barrier_test_loss == pytest.approx((curve.loss - line).max())
    assert result.train.failed == 0 and result.pairs.failed == 0


def test_sweep_shows_progress(finished_sweep):
    _, _, lines = finished_sweep
    assert any(line.startswith("[train] 3/3 trials done") and "ETA" in line for line in lines)
    assert any(line.startswith("[pairs] 3/3 pairs done") and "elapsed" in line for line in lines)


def test_rerun_trains_nothing_and_skips_every_pair(finished_sweep, tmp_path):
    original, _, _ = finished_sweep
    shutil.copytree(original.root, tmp_path / original.name)  # a copy: the module's sweep stays as it was
    config = parse_config(original.raw, storage_override=str(tmp_path))
    assert config.root == str(tmp_path / original.name)
    before = {p: p.stat().st_mtime_ns for p in Path(config.root, "tables").rglob("*.parquet")}
    before.update({p: p.stat().st_mtime_ns for p in Path(config.root, "checkpoints").rglob("*.pt")})
    lines: list[str] = []
    result = run(config, lines)
    assert result.train.ran == 0 and result.pairs.ran == 0
    # nothing to do: said in one line, and no stage (nor Ray) started
    assert lines == [f"[sweep] {config.name}: nothing to do: all 3 trials and 3 pairs are done ({config.root})"]
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before
    status = sweep_status(config.root)
    assert (status.models_ok, status.models_missing, status.pairs_ok, status.pairs_missing) == (3, 0, 3, 0)


def test_growing_the_sweep_runs_only_what_is_new(finished_sweep, tmp_path):
    config, _, _ = finished_sweep
    shutil.copytree(config.root, tmp_path / config.name)  # a copy: the module's sweep stays as it was
    bigger = parse_config({**tiny_sweep("e2e", str(tmp_path)), "seeds": 4})
    assert bigger.root == str(tmp_path / config.name)
    lines: list[str] = []
    result = run(bigger, lines)
    assert result.train.ran == 1  # only seed 3
    assert result.pairs.ran == 3  # (0,3), (1,3), (2,3)
    pairs = load_tables(bigger.root)["pairs"]
    assert len(pairs) == 6 * 6
    assert not pairs.duplicated(["model_key", "seed_a", "seed_b", "align", "correction"]).any()


def test_corrupt_checkpoint_fails_its_pairs_with_a_reason_and_the_others_finish(ray_session, tmp_path):
    config = parse_config(tiny_sweep("corrupt", str(tmp_path)))
    run(config)
    models = load_tables(config.root)["models"]
    broken = str(Path(config.root, models.loc[models.seed == 1, "checkpoint_uri"].item()))
    original = load_checkpoint(broken).state_dict
    size = Path(broken).stat().st_size  # the same size: only loading it can tell
    Path(broken).write_bytes(b"this is not a checkpoint".ljust(size, b"!"))
    forget_pairs(config.root)
    summary = run_pair_stage(config, say=lambda m: None)
    assert summary.ran == 3 and summary.failed == 2
    status = sweep_status(config.root)  # not done any more, for status as for run
    assert (status.models_ok, status.models_failed, status.models_missing) == (2, 0, 1)
    pairs = load_tables(config.root)["pairs"]
    bad = pairs[(pairs.seed_a == 1) | (pairs.seed_b == 1)]
    assert (bad["status"] == "failed").all()
    assert bad["error"].str.contains("corrupt").all()
    assert bad["error"].str.contains(broken, regex=False).all()
    # error keeps one line; error_trace the whole traceback, down to where the checkpoint was read
    assert not bad["error"].str.contains("\n").any()
    assert bad["error_trace"].str.startswith("Traceback (most recent call last)").all()
    assert bad["error_trace"].str.contains("load_checkpoint").all()
    assert (bad["error_trace"].str.count("\n") > 3).all()
    good = pairs[(pairs.seed_a == 0) & (pairs.seed_b == 2)]
    assert len(good) == 6 and (good["status"] == "ok").all()
    assert good["error_trace"].isna().all()
    # a re-run sees that the checkpoint failed to load after its trial finished: it retrains that
    # network (bit for bit the same: training is deterministic) and redoes only the failed pairs
    lines: list[str] = []
    result = run(config, lines)
    assert result.train.ran == 1 and result.pairs.ran == 2 and result.pairs.failed == 0
    assert any("is missing or not whole: retraining it" in line for line in lines)
    assert any("2 of 3 trials already done; 1 to run" in line for line in lines), lines
    retrained = load_checkpoint(broken).state_dict
    assert all(torch.equal(original[k], retrained[k]) for k in original)
    pairs = load_tables(config.root)["pairs"]
    assert len(pairs) == 18 and (pairs["status"] == "ok").all()


def test_status_and_validate_count_as_done_exactly_the_trials_a_run_skips(finished_sweep, tmp_path):
    """One definition of done: a trial whose row says ok but whose checkpoint is gone, or failed to
    load in a pair task after it was trained, is neither trained for status nor skipped by run."""
    import datetime

    from click.testing import CliRunner

    from repair_ray.cli import main
    from repair_ray.io.tables import new_stem, table_file, write_rows
    from repair_ray.sweep.planning import plan_trials
    from repair_ray.sweep.stored import load_sweep_config

    from .helpers import write_yaml

    config, _, _ = finished_sweep
    root = tmp_path / config.name
    shutil.copytree(config.root, root)
    copy = load_sweep_config(str(root))
    trained = len(plan_trials(copy).done)
    assert sweep_status(str(root)).models_ok == trained == copy.n_trials == 3
    models = load_tables(str(root))["models"].set_index("seed")
    Path(root, models.loc[0, "checkpoint_uri"]).unlink()
    key = config.models[0].model_key
    unloadable = {  # a pair task could not load seed 1's checkpoint: a fact in its column, not in the error text
        "sweep": config.name,
        "model_key": key,
        "analysis_key": "older-settings",
        "seed_a": 1,
        "seed_b": 2,
        "align": "none",
        "correction": "none",
        "status": "failed",
        "error": "any words at all",
        "unloadable_seed": 1,
        "finished_at": datetime.datetime.now(datetime.UTC),
    }
    write_rows(table_file(str(root), "pairs", new_stem("part")), "pairs", [unloadable])
    status, plan = sweep_status(str(root)), plan_trials(copy)
    assert status.models_ok == len(plan.done) == trained - 2
    assert (status.models_failed, status.models_missing) == (0, 2)
    assert sorted(seed for _, seed in plan.todo) == [0, 1]
    shown = CliRunner().invoke(main, ["status", str(root)])
    assert f"models: {trained - 2} trained, 0 failed, 2 missing (of {trained})" in shown.output, shown.output
    path = write_yaml(tmp_path / "sweep.yaml", copy.raw)
    validated = CliRunner().invoke(main, ["validate", path, "--storage", str(tmp_path)])
    assert validated.exit_code == 0, validated.output
    assert f"on storage already: {trained - 2} of {trained} models trained" in validated.output


def test_a_truncated_checkpoint_is_retrained_bit_for_bit(ray_session, tmp_path):
    config = parse_config(tiny_sweep("truncated", str(tmp_path), seeds=2))
    run(config)
    models = load_tables(config.root)["models"]
    path = Path(config.root, models.loc[models.seed == 0, "checkpoint_uri"].item())
    original = load_checkpoint(str(path)).state_dict
    path.write_bytes(path.read_bytes()[:1000])  # a torn copy or a full disk
    untouched = {p: p.stat().st_mtime_ns for p in Path(config.root, "tables").rglob("*.parquet")}
    result = run(config)
    assert result.train.ran == 1  # only the damaged one
    retrained = load_checkpoint(str(path)).state_dict
    assert all(torch.equal(original[k], retrained[k]) for k in original)
    # the pair was complete and is not recomputed; nothing undamaged is rewritten
    assert result.pairs.ran == 0
    assert all(p.stat().st_mtime_ns == t for p, t in untouched.items())


def _crash(context, job, marker_dir, always):
    """Kill the worker process at every attempt of the pairs in ``always``, at the first attempt of
    the others (then behave normally); each attempt leaves a marker."""
    attempts = len(list(Path(marker_dir).glob(f"{job.seed_a}-{job.seed_b}-*")))
    Path(marker_dir, f"{job.seed_a}-{job.seed_b}-{attempts}").touch()
    if (job.seed_a, job.seed_b) in always or attempts == 0:
        os._exit(1)
    return pair_task(context, job)


def test_a_dead_worker_is_retried_pair_retries_times_and_its_rows_appear_once(ray_session, tmp_path, monkeypatch):
    """Through the production factory (``make_remote_pair_task`` with ``pair_retries``): a factory that
    retried more or less than ``pair_retries`` times fails this test."""
    config = parse_config({**tiny_sweep("crash", str(tmp_path)), "pair_retries": 1})
    run(config)
    forget_pairs(config.root)
    markers = tmp_path / "markers"
    markers.mkdir()

    def crashing(context, job):
        return _crash(context, job, str(markers), always={(1, 2)})

    monkeypatch.setattr(pair_stage, "pair_task", crashing)  # what make_remote_pair_task wraps
    summary = run_pair_stage(config, say=lambda m: None)
    attempts = sorted(path.name for path in markers.iterdir())
    # 1 + pair_retries attempts each: the first one died; the retry finished (0-1, 0-2) or died too (1-2)
    assert attempts == ["0-1-0", "0-1-1", "0-2-0", "0-2-1", "1-2-0", "1-2-1"]
    assert summary.failed == 1
    pairs = load_tables(config.root)["pairs"]
    assert len(pairs) == 18 and not pairs.duplicated(["seed_a", "seed_b", "align", "correction"]).any()
    dead = pairs[(pairs.seed_a == 1) & (pairs.seed_b == 2)]
    assert (dead["status"] == "failed").all() and dead["error"].str.startswith("worker failed: ").all()
    assert (pairs.drop(dead.index)["status"] == "ok").all()


def test_gpu_request_on_a_cluster_without_gpus_falls_back_to_cpu(ray_session, tmp_path):
    config = parse_config(
        tiny_sweep("gpu", str(tmp_path), seeds=2, resources={"train": {"cpu": 1, "gpu": 0.5}, "pair": {"gpu": 0.25}})
    )
    lines: list[str] = []
    result = run(config, lines)  # would hang forever if the GPU request reached Ray
    assert result.pairs.failed == 0
    assert any("resources.train.gpu is 0.5 but the cluster has no GPU" in line for line in lines)
    assert any("resources.pair.gpu is 0.25 but the cluster has no GPU" in line for line in lines)


def test_nan_training_is_recorded_as_failed_and_left_out_of_pairs(ray_session, tmp_path):
    config = parse_config(tiny_sweep("nan", str(tmp_path), seeds=2, train={"epochs": 2, "lr": 1e12, "momentum": 0.0}))
    lines: list[str] = []
    result = run(config, lines)
    models = load_tables(config.root)["models"]
    assert (models["status"] == "failed").all()
    assert models["error"].str.startswith("nan_loss").all()
    assert models["error_trace"].isna().all()  # a diverged loss raised nothing: there is no traceback
    assert result.pairs.left_out == 1 and result.pairs.ran == 0
    assert not list(Path(config.root, "checkpoints").rglob("*.pt"))  # no broken weights on disk


def test_a_trial_that_raises_is_recorded_as_failed(ray_session, tmp_path):
    folder = tmp_path / "broken"
    for split in ("train", "test"):
        (folder / split / "a").mkdir(parents=True)
        (folder / split / "a" / "x.png").write_bytes(b"not a png")  # listed by validation, never decoded there
    config = parse_config(tiny_sweep("raises", str(tmp_path), seeds=2, dataset=f"imagefolder:{folder}"))
    result = run(config)  # the workers' load_dataset raises decoding it (a missing dataset would end the stage)
    models = load_tables(config.root)["models"]
    assert len(models) == 2 and (models["status"] == "failed").all()
    assert models["error"].str.contains("x.png").all(), models["error"].tolist()
    assert not models["error"].str.contains("\n").any()
    # the worker's own traceback (Ray keeps it as text), not the driver's re-raise
    assert models["error_trace"].str.contains("Traceback (most recent call last)", regex=False).all()
    assert models["error_trace"].str.contains("load_dataset").all()
    assert (models["error_trace"].str.count("\n") > 3).all()
    assert result.pairs.left_out == 1


def _record_name(folder: str) -> None:
    import uuid

    import ray

    Path(folder, uuid.uuid4().hex).write_text(ray.get_runtime_context().get_task_name())


def test_tasks_are_named_by_model_and_pair_in_the_ray_dashboard(ray_session, tmp_path, monkeypatch):
    """The names the dashboard, ``ray list tasks`` and the log prefixes show, as each task sees its own."""
    from repair_ray.sweep.train_worker import trial_task

    config = parse_config(tiny_sweep("named", str(tmp_path), seeds=2, align=["none"], correction=["none"]))
    key = config.models[0].model_key
    names = tmp_path / "names"
    names.mkdir()

    def recording_trial(spec):
        _record_name(str(names))
        yield from trial_task(spec)

    def recording_pair(context, job):
        _record_name(str(names))
        return pair_task(context, job)

    # the production tasks (make_remote_trial_task, make_remote_pair_task), named by the stages
    monkeypatch.setattr(train_stage, "trial_task", recording_trial)
    monkeypatch.setattr(pair_stage, "pair_task", recording_pair)
    assert train_stage.run_train_stage(config, say=lambda m: None).failed == 0
    assert run_pair_stage(config, say=lambda m: None).failed == 0
    seen = sorted(p.read_text() for p in names.iterdir())
    assert seen == sorted([f"pair {key} 0-1", f"train {key} seed 0", f"train {key} seed 1"])


def test_schema_of_every_written_file_is_the_declared_one(finished_sweep):
    import pyarrow.parquet as pq

    config, _, _ = finished_sweep
    for table, schema in SCHEMAS.items():
        files = list(Path(config.root, "tables", table).glob("*.parquet"))
        assert files or table == "recipes"  # a run writes every table but tune's (tests/test_tune.py reads those)
        for file in files:
            assert pq.read_schema(file).remove_metadata().equals(schema), file


def test_long_trials_show_their_epochs(ray_session, tmp_path, monkeypatch):
    from repair_ray.sweep import train_stage

    monkeypatch.setattr(train_stage, "EPOCH_LINE_SECONDS", 0.0)  # every epoch (default: at most every 30 s)
    config = parse_config(tiny_sweep("epochs", str(tmp_path), seeds=2, train={"epochs": 3, "batch_size": 64}))
    lines: list[str] = []
    run(config, lines)
    for seed in (0, 1):
        for epoch in (1, 2, 3):
            assert any(f"seed {seed}: epoch {epoch}/3, test accuracy" in line for line in lines), (seed, epoch)


def test_a_sweep_of_networks_outside_the_zoo(ray_session, tmp_path):
    """A user's factory (width and depth knobs passed through) and a torchvision network with kwargs."""
    config = parse_config(
        tiny_sweep(
            "external",
            str(tmp_path),
            dataset={"name": "synthetic", "shape": [3, 8, 8], "num_classes": 4, "train_size": 512, "test_size": 256},
            models=[
                {"arch": "tests.custom_nets:residual_mlp", "width": [8, 16], "depth": 1},
                {"arch": "torchvision:mobilenet_v3_small", "kwargs": {"dropout": 0.0}},
            ],
            seeds=2,
            train={"epochs": 1, "batch_size": 64, "lr": 0.05},
            align=["none", "weight"],  # activation matching of derived specs: tests/test_derive.py
        ),
        allow_import=["tests.custom_nets"],  # the workers build it with the driver's allowance
    )
    result = run(config)
    assert result.train.failed == 0 and result.pairs.failed == 0
    tables = load_tables(config.root)
    models, pairs = tables["models"], tables["pairs"]
    assert len(models) == 6 and (models.status == "ok").all()
    mlp = models[models.arch == "tests.custom_nets:residual_mlp"]
    assert sorted(mlp.width) == [8.0, 8.0, 16.0, 16.0] and set(mlp.depth) == {1} and mlp.model_kwargs.isna().all()
    tv = pairs[pairs.arch == "torchvision:mobilenet_v3_small"]
    assert tv.width.isna().all() and set(tv.model_kwargs) == {'{"dropout": 0.0}'}
    assert len(pairs) == 3 * 2 * 2 and (pairs.status == "ok").all()
    assert {k.rsplit("-", 1)[0] for k in models.model_key} == {
        "tests.custom_nets-residual_mlp-w8-d1",
        "tests.custom_nets-residual_mlp-w16-d1",
        "torchvision-mobilenet_v3_small",
    }
    # the pairs were aligned on the derived specs: weight matching changed every curve
    by_align = pairs.set_index(["model_key", "seed_a", "seed_b", "align", "correction"]).barrier_test_loss
    for key in mlp.model_key.unique():  # (one epoch leaves mobilenet at chance: flat curves)
        assert by_align[(key, 0, 1, "weight", "none")] != by_align[(key, 0, 1, "none", "none")]


def test_a_network_whose_symmetry_cannot_be_derived_fails_validation_naming_the_op(tmp_path):
    from repair_ray.sweep.config import ConfigError

    with pytest.raises(ConfigError, match=r"models\[0\] \(torchvision-shufflenet_v2_x0_5\): cannot derive .* 'view'"):
        parse_config(
            tiny_sweep(
                "shuffle",
                str(tmp_path),
                dataset={"name": "synthetic", "shape": [3, 32, 32], "num_classes": 4},
                models=[{"arch": "torchvision:shufflenet_v2_x0_5"}],
            )
        )


def test_zoo_model_keys_stay_what_they_were():
    """Keys name checkpoints and rows of running studies: a zoo network's key must not change (init:
    he is the zoo's init from before the knob; the default, torch, names other networks)."""
    import hashlib
    import json
    from dataclasses import asdict

    config = parse_config(
        tiny_sweep("keys", "/tmp/unused", models=[{"arch": "mlp", "width": 16, "depth": 2, "init": "he"}])
    )
    plan = config.models[0]
    old_payload = {
        "model": {"arch": "mlp", "width": 16, "depth": 2, "norm": "none"},
        # the training fields keys were first made of (fields added later are left out at their defaults)
        "train": {k: v for k, v in asdict(config.train).items() if k not in ("precision", "sync_batchnorm", "pad")},
        "dataset": config.dataset.as_dict(),
    }
    digest = hashlib.sha256(json.dumps(old_payload, sort_keys=True, default=str).encode()).hexdigest()[:10]
    assert plan.model_key == f"mlp-w16-d2-none-{digest}" == "mlp-w16-d2-none-94a481c10d"


def test_adding_a_learned_align_computes_only_its_rows_and_its_settings_key_only_its_rows(ray_session, tmp_path):
    small = {"seeds": 2, "align": ["none", "weight"], "correction": ["none"]}
    config = parse_config(tiny_sweep("learned", str(tmp_path), **small))
    assert run(config).pairs.ran == 1
    before = load_tables(config.root)["pairs"].set_index("align")
    grown = parse_config(tiny_sweep("learned", str(tmp_path), **{**small, "align": ["none", "weight", "ste"]}))
    lines: list[str] = []
    assert run(grown, lines).pairs.ran == 1  # the pair runs again for its ste rows only
    after = load_tables(grown.root)["pairs"].set_index("align")
    assert sorted(after.index) == ["none", "ste", "weight"]
    for align in ("none", "weight"):  # untouched: the same rows, the same key
        assert after.loc[align, "finished_at"] == before.loc[align, "finished_at"]
        assert after.loc[align, "analysis_key"] == before.loc[align, "analysis_key"]
    assert after.loc["ste", "analysis_key"] != after.loc["none", "analysis_key"]
    # new ste settings: only the ste rows are out of date
    tuned = parse_config(
        tiny_sweep("learned", str(tmp_path), **{**small, "align": ["none", "weight", "ste"], "ste": {"steps": 7}})
    )
    assert run(tuned).pairs.ran == 1
    final = load_tables(tuned.root)["pairs"].set_index("align")
    assert final.loc["none", "finished_at"] == before.loc["none", "finished_at"]
    assert final.loc["ste", "analysis_key"] != after.loc["ste", "analysis_key"]
    assert len(final) == 3  # current keys only: the older ste row is not mixed in


def test_a_stability_sweep_trains_each_trunk_once_and_pairs_children_of_one_branch(ray_session, tmp_path, subprocesses):
    config = parse_config(
        tiny_sweep(
            "branches",
            str(tmp_path),
            seeds=2,
            # the two children of each branch train together (the IMP test below trains them alone)
            train={"epochs": 3, "batch_size": 64, "lr": 0.05, "checkpoint_every": 1, "seeds_per_trial": 2},
            branch={"at_epochs": [0, 2], "trunks": 1},
            align=["none", "weight"],
            correction=["none"],
        )
    )
    assert config.n_trials == 4 and config.n_pairs == 2
    lines: list[str] = []
    run(config, lines)
    assert any("1 trunk(s) to train or check" in line for line in lines)
    tables = load_tables(config.root)
    models, pairs = tables["models"], tables["pairs"]
    assert (models["status"] == "ok").all() and len(models) == 4
    assert set(zip(models["branch_epoch"], models["seed"], strict=True)) == {(0, 0), (0, 1), (2, 0), (2, 1)}
    assert (models["trunk_seed"] == 0).all() and (models["init_seed"] == 0).all()
    assert (models["data_seed"] == models["seed"]).all() and (models["seeds_in_trial"] == 2).all()
    trunk = sorted(p.name for p in Path(config.root, "checkpoints").glob("*/trunk-0/*.pt"))
    assert trunk == ["epoch-2.pt"]  # epoch 0 needs no snapshot: the init seed is the trunk's
    assert sorted(pairs["branch_epoch"].unique()) == [0, 2] and (pairs["trunk_seed"] == 0).all()
    assert (pairs["status"] == "ok").all() and len(pairs) == 2 * 2
    # the children of epoch 2 start from the trunk's snapshot: closer to each other than those of epoch 0
    plain = pairs[pairs["align"] == "none"].set_index("branch_epoch")["barrier_test_loss"]
    assert plain[2] < plain[0]
    # the report draws Frankle's instability plot and keeps the branch epochs apart in its tables
    from repair_ray.report import summarise, write_report

    index = write_report(config.root)
    assert (index.parent / "barrier_vs_branch_epoch.png").is_file()
    summary = summarise(tables["pairs"])
    assert sorted(summary["branch_epoch"].unique()) == [0, 2] and (summary["pairs"] == 1).all()
    # ... and so does the analysis script of REPRODUCTION.md's instability table
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "analysis" / "instability_table.py"
    printed = subprocess.run([sys.executable, str(script), config.root], capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    rows = [line for line in printed.stdout.splitlines() if line.startswith("| mlp")]
    assert [row.split("|")[2].strip() for row in rows] == ["0", "2"]
    assert f"{plain[0]:.4f} ± nan" in rows[0] and f"{plain[2]:.4f} ± nan" in rows[1]  # one pair each: no interval
    # a re-run trains nothing, trunks included
    again: list[str] = []
    run(config, again)
    assert not any("trunk(s) to train" in line for line in again)
    assert any("nothing to do: all 4 trials" in line for line in again), again


def test_an_imp_sweep_prunes_round_by_round_rewinds_and_resumes_exactly(ray_session, tmp_path, subprocesses):
    from repair_ray.pruning import imp_sparsity, mask_sparsity, prunable_count, weight_sparsity

    config = parse_config(
        tiny_sweep(
            "imp",
            str(tmp_path),
            seeds=2,
            train={"epochs": 3, "batch_size": 64, "lr": 0.05, "checkpoint_every": 1},
            imp={"rounds": 2, "rate": 0.5, "rewind_epoch": 1},
            align=["none"],
            correction=["none"],
        )
    )
    assert config.n_trials == 6 and config.n_pairs == 3
    lines: list[str] = []
    run(config, lines)
    tables = load_tables(config.root)
    models, pairs = tables["models"], tables["pairs"]
    # a round starts only once the network it prunes (the last round's seed 0) is trained
    when = models.set_index(["imp_round", "seed"])
    for r in (1, 2):
        assert when.loc[(r, 0), "started_at"] >= when.loc[(r - 1, 0), "finished_at"]
        assert when.loc[(r, 1), "started_at"] >= when.loc[(r - 1, 0), "finished_at"]
    assert (models["status"] == "ok").all() and len(models) == 6
    prunable = prunable_count(config.models[0].model.skeleton(4, (1, 8, 8)))
    expected = {r: imp_sparsity(prunable, r, 0.5) for r in range(3)}
    assert expected[2] == pytest.approx(0.75, abs=1e-3)
    assert dict(zip(models["imp_round"], models["sparsity"], strict=True)) == expected
    assert (models["branch_epoch"] == 1).all() and (models["trunk_seed"] == 0).all()
    assert dict(zip(pairs["imp_round"], pairs["sparsity"], strict=True)) == expected
    assert (pairs["status"] == "ok").all() and len(pairs) == 3
    # masks live in the checkpoints; each round prunes within the last, the trained weights obey them
    plans = {p.branch.imp_round: p for p in config.models}
    masks = {}
    for r, plan in plans.items():
        for seed in plan.seeds:
            saved = load_checkpoint(str(Path(config.root, "checkpoints", plan.model_key, f"seed-{seed}.pt")))
            mask = saved.training_state.get("mask")
            if r == 0:
                assert mask is None
                continue
            assert mask_sparsity(mask) == pytest.approx(expected[r])
            assert weight_sparsity(saved.state_dict, list(mask)) == pytest.approx(expected[r])
            masks.setdefault(r, mask)
            assert all(torch.equal(mask[n], masks[r][n]) for n in mask)  # both children share the round's mask
    assert all(not (masks[2][n] & ~masks[1][n]).any() for n in masks[1])
    # the sparsity plot is in the report
    from repair_ray.report import write_report

    index = write_report(config.root)
    assert (index.parent / "sparsity.png").is_file()
    assert "not drawn" not in index.read_text().split("Lottery tickets")[1].split("<h2")[0]
    # ... and REPRODUCTION.md's IMP table: a row per round, the children's accuracy, the pair's barrier
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "analysis" / "imp_table.py"
    printed = subprocess.run([sys.executable, str(script), config.root], capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    rows = [line.split("|")[1:-1] for line in printed.stdout.splitlines() if line.startswith("| mlp")]
    assert [int(r[2]) for r in rows] == [0, 1, 2] and [r[3].strip() for r in rows] == ["100.0 %", "50.0 %", "25.0 %"]
    for r, row in enumerate(rows):
        children = models[models["imp_round"] == r]["test_acc"]
        barrier = pairs[pairs["imp_round"] == r]["barrier_test_error"].iloc[0]
        assert (
            row[5].strip().startswith(f"{children.mean():.4f} ± ") and row[8].strip() == f"{barrier:.4f} ± nan *"
        )  # * one trunk
    # lose round 1's pruned network and all of round 2: the re-run retrains round 1's seed 0 first,
    # then round 2 from it, bit for bit
    round2 = {
        seed: load_checkpoint(str(Path(config.root, "checkpoints", plans[2].model_key, f"seed-{seed}.pt"))).state_dict
        for seed in (0, 1)
    }
    Path(config.root, "checkpoints", plans[1].model_key, "seed-0.pt").unlink()
    for path in Path(config.root, "checkpoints", plans[2].model_key).glob("*.pt"):
        path.unlink()
    again: list[str] = []
    run(config, again)
    assert any("3 to run" in line for line in again), again
    for seed in (0, 1):
        rebuilt = load_checkpoint(str(Path(config.root, "checkpoints", plans[2].model_key, f"seed-{seed}.pt")))
        assert all(torch.equal(rebuilt.state_dict[k], round2[seed][k]) for k in round2[seed])
    final = load_tables(config.root)["models"]
    assert len(final) == 6 and (final["status"] == "ok").all()


def test_an_imp_round_whose_pruned_network_failed_fails_naming_it(tmp_path):
    from repair_ray.sweep.train_scheduler import TrialScheduler
    from repair_ray.sweep.trials import trial_spec

    config = parse_config(tiny_sweep("impfail", str(tmp_path), seeds=2, imp={"rounds": 2, "rate": 0.2}))
    first, second, third = config.models
    told = []
    specs = [trial_spec(config, plan, [seed], 1) for plan in config.models for seed in plan.seeds]
    scheduler = TrialScheduler(specs, lambda spec, seed, error: told.append((spec.model_key, seed, error is None)))
    # round 0 starts; rounds 1 and 2 wait for the network each prunes
    assert [(s.model_key, s.seeds) for s in scheduler.ready] == [(first.model_key, (0,)), (first.model_key, (1,))]
    scheduler.ready.clear()
    scheduler.finished(specs[1], {1: None})  # round 0's seed 1 is not what round 1 prunes
    assert not scheduler.ready
    scheduler.finished(specs[0], {0: "nan_loss: boom"})
    assert not scheduler.ready  # nothing of rounds 1 and 2 can start: all of it fails, naming why
    assert told == [
        (first.model_key, 1, True),
        (first.model_key, 0, False),
        (second.model_key, 0, False),
        (third.model_key, 0, False),
        (third.model_key, 1, False),
        (second.model_key, 1, False),
    ]
    rows = load_tables(config.root)["models"].set_index(["model_key", "seed"])
    assert len(rows) == 4 and (rows["status"] == "failed").all()
    assert "the network it prunes" in rows.loc[(second.model_key, 1), "error"]
    assert "nan_loss: boom" in rows.loc[(second.model_key, 1), "error"]
    assert f"({second.model_key} seed 0) failed" in rows.loc[(third.model_key, 1), "error"]


def test_children_start_when_their_trunk_is_trained_and_fail_naming_it_when_it_failed(tmp_path):
    from repair_ray.sweep.train_scheduler import TrialScheduler
    from repair_ray.sweep.trials import trial_spec, trunk_specs

    config = parse_config(
        tiny_sweep("trunks", str(tmp_path), seeds=2, branch={"at_epochs": [1], "trunks": 2}, train={"epochs": 2})
    )
    todo = [(plan, seed) for plan in config.models for seed in plan.seeds]
    trunks = trunk_specs(config, todo, 1)
    children = [trial_spec(config, plan, [seed], 1) for plan, seed in todo]
    assert len(trunks) == 2 and all(c.trunk is not None for c in children)
    scheduler = TrialScheduler(trunks + children, lambda spec, seed, error: None)
    assert list(scheduler.ready) == trunks  # every child waits for its trunk
    scheduler.ready.clear()
    scheduler.finished(trunks[0], {trunks[0].seeds[0]: None})
    assert [c.trunk for c in scheduler.ready] == [(trunks[0].model_key, trunks[0].seeds[0])] * 2
    scheduler.failed(trunks[1], "NonFiniteLossError: training loss is nan")
    rows = load_tables(config.root)["models"]
    assert len(rows) == 2 and (rows["status"] == "failed").all()
    assert rows["error"].str.startswith(f"its trunk (seed {trunks[1].seeds[0]}) failed: NonFiniteLossError").all()


def test_the_repair_points_script_compares_carried_point_sets_on_a_resnet_sweep(ray_session, tmp_path, subprocesses):
    config = parse_config(
        tiny_sweep(
            "rn",
            str(tmp_path),
            dataset={"name": "synthetic", "shape": [3, 8, 8], "num_classes": 4, "train_size": 256, "test_size": 128},
            models=[{"arch": "cifar_resnet", "width": 0.5, "depth": 8, "norm": "batch"}],
            seeds=2,
            train={"epochs": 1, "batch_size": 64, "lr": 0.05, "checkpoint_every": 1},
            align=["activation"],
            correction=["reset", "repair_bn"],
            alphas=3,
        )
    )
    run(config)
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "analysis" / "repair_points.py"
    printed = subprocess.run([sys.executable, str(script), config.root], capture_output=True, text=True, timeout=300)
    assert printed.returncode == 0, printed.stderr
    rows = {line.split("|")[1].strip(): line.split("|") for line in printed.stdout.splitlines()[2:]}
    assert list(rows) == ["norm outputs", "block outputs", "classifier input", "blocks + classifier", "junctures"]
    pair = load_tables(config.root)["pairs"].set_index("correction")
    # the script's "blocks + classifier" is the sweep's repair_bn: the same number, recomputed
    assert float(rows["blocks + classifier"][5]) == pytest.approx(
        pair.loc["repair_bn", "midpoint_barrier_test_loss"], abs=1e-3
    )
    assert float(rows["norm outputs"][4]) == pytest.approx(pair.loc["reset", "midpoint_barrier_test_loss"], abs=1e-4)
    assert int(rows["junctures"][3]) == 1 and int(rows["blocks + classifier"][3]) == 4  # depth 8: 3 blocks + flatten


def test_forcing_several_alphas_per_pass_gives_the_same_rows_and_says_so(finished_sweep, tmp_path):
    """eval.alphas_per_pass reaches the pair tasks; the rows are the automatic (one-α, CPU) ones up to rounding."""
    config, _, _ = finished_sweep
    copy_root = tmp_path / config.name
    shutil.copytree(config.root, copy_root)
    forget_pairs(str(copy_root))
    forced = parse_config(
        {**config.raw, "eval": {**config.raw["eval"], "alphas_per_pass": 3}}, storage_override=str(tmp_path)
    )
    assert forced.root == str(copy_root) and forced.alphas_per_pass == 3
    assert run_pair_stage(forced, say=lambda m: None).failed == 0
    key = ["seed_a", "seed_b", "align", "correction"]
    after = load_tables(forced.root)["pairs"]
    before = load_tables(config.root)["pairs"]
    assert len(after) == len(before) == forced.n_pairs * 6
    assert (before["alphas_per_pass"] == 1).all()  # automatic on the CPU: one α per pass
    assert (after["alphas_per_pass"] == 3).all()
    after, before = after.sort_values(key), before.sort_values(key)
    assert list(after["analysis_key"]) == list(before["analysis_key"])  # a speed setting: the same facts
    for column in ("barrier_test_loss", "barrier_train_loss", "midpoint_test_acc"):
        assert after[column].to_numpy() == pytest.approx(before[column].to_numpy(), rel=1e-4, abs=1e-5), column
