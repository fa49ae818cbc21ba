"""The train stage on a real local Ray cluster: Ray tasks on reused workers, retries, rows with
their learning curves, and an interrupted trial resumed from its checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from repair_ray import load_tables
from repair_ray.sweep import train_stage
from repair_ray.sweep.config import parse_config
from repair_ray.sweep.train_stage import run_train_stage
from repair_ray.sweep.train_worker import trial_task

from .helpers import tiny_sweep


def flaky_trial(spec, marker_dir):
    """The trial task, but the first attempt of seed 1 raises after its first epoch (its checkpoint
    written), and every attempt of seed 2 raises before training."""
    from repair_ray.sweep import train_worker

    seed = spec.seeds[0]
    if seed == 2:
        raise OSError("the bucket is unreachable")
    marker, trainer = Path(marker_dir, f"seed-{seed}"), train_worker.Trainer

    class FailingOnce(trainer):
        def run(self, *, on_epoch, **kwargs):
            def hook(epoch, metrics):
                on_epoch(epoch, metrics)
                if seed == 1 and not marker.exists():
                    marker.write_text(str(os.getpid()))
                    raise RuntimeError("the node went away")

            return super().run(on_epoch=hook, **kwargs)

    train_worker.Trainer = FailingOnce  # in this worker process, for this trial only
    try:
        yield from trial_task(spec)
    finally:
        train_worker.Trainer = trainer


@pytest.fixture
def flaky_task(ray_session, tmp_path, monkeypatch):
    """:func:`flaky_trial` in place of the trial task, run as the production factory makes it
    (``make_remote_trial_task``: its options, its retries)."""
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir()

    def flaky(spec):
        yield from flaky_trial(spec, str(marker_dir))

    monkeypatch.setattr(train_stage, "trial_task", flaky)  # what make_remote_trial_task wraps


def test_a_trial_that_raises_is_retried_from_its_checkpoint_and_one_that_keeps_raising_fails_with_the_reason(
    flaky_task, tmp_path
):
    config = parse_config(
        tiny_sweep("retry", str(tmp_path), train={"epochs": 3, "batch_size": 64, "lr": 0.05, "checkpoint_every": 1})
    )
    lines: list[str] = []
    told = []
    summary = run_train_stage(config, say=lines.append, on_trial_done=lambda *args: told.append(args))
    assert (summary.ran, summary.failed) == (3, 1)
    key = config.models[0].model_key
    assert sorted(told) == [(key, 0, True), (key, 1, True), (key, 2, False)]
    assert any("seed 1 failed (RuntimeError: the node went away): retrying" in line for line in lines), lines
    models = load_tables(config.root)["models"].set_index("seed")
    assert models.loc[0, "resumed_from_epoch"] == 0
    assert models.loc[1, "resumed_from_epoch"] == 1  # the retry resumed after the epoch it had checkpointed
    assert models.loc[2, "status"] == "failed"
    assert models.loc[2, "error"] == "OSError: the bucket is unreachable"
    trace = models.loc[2, "error_trace"]
    # the worker's traceback under the task's name (as the dashboard shows it), down to the line that raised
    assert trace.startswith(f"Traceback (most recent call last), in the Ray task ray::train {key} seed 2()")
    assert 'raise OSError("the bucket is unreachable")' in trace
    assert trace.rstrip().endswith("OSError: the bucket is unreachable")
    assert pd.isna(models.loc[0, "error_trace"])
    # every trained row carries its learning curve and how many seeds its trial trained
    for seed in (0, 1):
        history = json.loads(models.loc[seed, "history_json"])
        assert [h["epoch"] for h in history] == [1, 2, 3]
        assert history[-1]["test_acc"] == pytest.approx(models.loc[seed, "test_acc"])
        assert models.loc[seed, "seeds_in_trial"] == 1


def test_trials_run_on_reused_worker_processes(ray_session, tmp_path, monkeypatch):
    """Through the production factory (``make_remote_trial_task``): a factory that gave each trial a
    fresh worker (``max_calls=1``, Ray's default for GPU tasks) fails this test."""
    config = parse_config(tiny_sweep("reuse", str(tmp_path), seeds=6, train={"epochs": 1, "batch_size": 64}))

    def recording_trial(spec):
        Path(tmp_path, f"pid-{spec.seeds[0]}").write_text(str(os.getpid()))
        yield from trial_task(spec)

    monkeypatch.setattr(train_stage, "trial_task", recording_trial)  # what make_remote_trial_task wraps
    assert run_train_stage(config, say=lambda m: None).failed == 0
    pids = {Path(tmp_path, f"pid-{seed}").read_text() for seed in range(6)}
    assert len(pids) <= 2  # two slots: six trials, at most two worker processes (torch and data loaded once each)


def test_seeds_per_trial_trains_seeds_together_each_with_its_own_row_checkpoint_and_pairs(
    ray_session, tmp_path, subprocesses
):
    from repair_ray.io.checkpoint import load_checkpoint
    from repair_ray.sweep.runner import run_sweep

    he = [{"arch": "mlp", "width": 16, "depth": 2, "init": "he"}]  # 3 epochs learn this data from He init
    data = tiny_sweep("together", str(tmp_path), seeds=4, align=["weight"], correction=["none"], models=he)
    data["train"] = {**data["train"], "epochs": 3, "seeds_per_trial": 3}
    config = parse_config(data)
    lines: list[str] = []
    result = run_sweep(config, say=lines.append)
    assert result.train.failed == 0 and result.pairs.ran == 6 and result.pairs.failed == 0
    models = load_tables(config.root)["models"].set_index("seed")
    assert models["seeds_in_trial"].to_dict() == {0: 3, 1: 3, 2: 3, 3: 1}
    assert models["trained_together"].all()  # the remainder seed too: every network of the sweep computed alike
    assert (models["test_acc"] > 0.5).all()
    assert models["test_acc"].nunique() > 1  # four networks, not one copied
    assert all(len(json.loads(h)) == 3 for h in models["history_json"])
    assert (models["train_seconds"] > 0).all()
    key = config.models[0].model_key

    def weights(seed):
        return load_checkpoint(str(Path(config.root, "checkpoints", key, f"seed-{seed}.pt")))

    before = {s: weights(s) for s in range(4)}
    assert all(before[s].meta["seed"] == s and before[s].meta["epoch"] == 3 for s in range(4))
    # the sweep grows by a seed trained alone (seeds_per_trial back to 1), and loses two checkpoints of
    # networks trained together: those are retrained together (a stack of 2, not 3), the same bits
    data["train"]["seeds_per_trial"], data["seeds"] = 1, 5
    grown = parse_config(data)
    for seed in (0, 2):
        Path(config.root, "checkpoints", key, f"seed-{seed}.pt").unlink()
    again: list[str] = []
    run_sweep(grown, say=again.append)
    assert any("3 to run" in line for line in again), again
    models = load_tables(config.root)["models"].set_index("seed")
    assert models["trained_together"].to_dict() == {0: True, 1: True, 2: True, 3: True, 4: False}
    assert models.loc[0, "seeds_in_trial"] == 2 and models.loc[4, "seeds_in_trial"] == 1
    for seed in (0, 2):
        healed = weights(seed).state_dict
        assert all(torch.equal(healed[n], t) for n, t in before[seed].state_dict.items()), seed
    # ... and the lone one, lost, is retrained alone, the same bits too
    alone = weights(4).state_dict
    Path(config.root, "checkpoints", key, "seed-4.pt").unlink()
    data["train"]["seeds_per_trial"] = 4
    run_sweep(parse_config(data), say=lambda m: None)
    assert all(torch.equal(weights(4).state_dict[n], t) for n, t in alone.items())
    assert load_tables(config.root)["models"].set_index("seed").loc[4, "trained_together"] == False  # noqa: E712
    # analysis/compare_runs.py: a sweep against itself differs nowhere
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "analysis" / "compare_runs.py"
    out = subprocess.run([sys.executable, str(script), config.root, config.root], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = [line.split("|") for line in out.stdout.splitlines() if line.startswith(f"| {key} |")]
    assert len(rows) == 5 and all(r[3].strip() == "0.00e+00" for r in rows)
    assert "| weight | none | 10 |" in out.stdout  # the 10 pairs of 5 seeds
