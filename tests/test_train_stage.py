"""The train stage on a real local Ray cluster: Ray tasks on reused workers, retries, rows with
their learning curves, and an interrupted trial resumed from its checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from repair_ray import load_tables
from repair_ray.sweep.config import parse_config
from repair_ray.sweep.train_stage import run_train_stage, trial_task

from .helpers import tiny_sweep


def flaky_trial(spec, marker_dir):
    """The trial task, but the first attempt of seed 1 raises after its first epoch (its checkpoint
    written), and every attempt of seed 2 raises before training."""
    from repair_ray.sweep import train_stage

    seed = spec["seeds"][0]
    if seed == 2:
        raise OSError("the bucket is unreachable")
    marker, train_model = Path(marker_dir, f"seed-{seed}"), train_stage.train_model

    def failing_once(*args, on_epoch, **kwargs):
        def hook(epoch, metrics):
            on_epoch(epoch, metrics)
            if seed == 1 and not marker.exists():
                marker.write_text(str(os.getpid()))
                raise RuntimeError("the node went away")

        return train_model(*args, on_epoch=hook, **kwargs)

    train_stage.train_model = failing_once  # in this worker process, for this trial only
    try:
        yield from trial_task(spec)
    finally:
        train_stage.train_model = train_model


@pytest.fixture
def flaky_task(ray_session, tmp_path):
    import ray

    marker_dir = tmp_path / "markers"
    marker_dir.mkdir()
    remote = ray.remote(num_cpus=1, max_calls=0, max_retries=0, num_returns="streaming")(flaky_trial)

    class Task:  # what run_train_stage calls: .remote(spec)
        @staticmethod
        def remote(spec):
            return remote.remote(spec, str(marker_dir))

    return Task, marker_dir


def test_a_trial_that_raises_is_retried_from_its_checkpoint_and_one_that_keeps_raising_fails_with_the_reason(
    flaky_task, tmp_path
):
    task, marker_dir = flaky_task
    config = parse_config(
        tiny_sweep("retry", str(tmp_path), train={"epochs": 3, "batch_size": 64, "lr": 0.05, "checkpoint_every": 1})
    )
    lines: list[str] = []
    told = []
    summary = run_train_stage(config, say=lines.append, on_trial_done=lambda *args: told.append(args), remote_task=task)
    assert (summary.ran, summary.failed) == (3, 1)
    key = config.models[0].model_key
    assert sorted(told) == [(key, 0, True), (key, 1, True), (key, 2, False)]
    assert any("seed 1 failed (RuntimeError: the node went away): retrying" in line for line in lines), lines
    models = load_tables(config.root)["models"].set_index("seed")
    assert models.loc[0, "resumed_from_epoch"] == 0
    assert models.loc[1, "resumed_from_epoch"] == 1  # the retry resumed after the epoch it had checkpointed
    assert models.loc[2, "status"] == "failed"
    assert models.loc[2, "error"] == "OSError: the bucket is unreachable"
    # every trained row carries its learning curve and how many seeds its trial trained
    for seed in (0, 1):
        history = json.loads(models.loc[seed, "history_json"])
        assert [h["epoch"] for h in history] == [1, 2, 3]
        assert history[-1]["test_acc"] == pytest.approx(models.loc[seed, "test_acc"])
        assert models.loc[seed, "seeds_in_trial"] == 1


def test_trials_run_on_reused_worker_processes(ray_session, tmp_path):
    import ray

    config = parse_config(tiny_sweep("reuse", str(tmp_path), seeds=6, train={"epochs": 1, "batch_size": 64}))

    @ray.remote(num_cpus=1, max_calls=0, max_retries=0, num_returns="streaming")
    def recording_trial(spec):
        yield from trial_task(spec)
        Path(tmp_path, f"pid-{spec['seeds'][0]}").write_text(str(os.getpid()))

    class Task:
        remote = recording_trial.remote

    assert run_train_stage(config, say=lambda m: None, remote_task=Task).failed == 0
    pids = {Path(tmp_path, f"pid-{seed}").read_text() for seed in range(6)}
    assert len(pids) <= 2  # two slots: six trials, at most two worker processes (torch and data loaded once each)
