"""Bit for bit after a SIGKILL (docs/resuming.md: "an interrupted trial resumes from its own last
checkpoint, exactly: optimizer, schedule and data-order state included"). A real `repair-ray run`
is killed, process group and all, while trials train between checkpoints; its re-run must end with
networks equal, bit for bit, to those of the same sweep run without interruption elsewhere."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from repair_ray import load_tables
from repair_ray.io.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from repair_ray.sweep.config import parse_config
from repair_ray.sweep.runner import run_sweep

from .helpers import tiny_sweep, write_yaml
from .processes import kill_when, run_driver, start_driver, wait_for_idle_cluster

EPOCHS, SEEDS = 6, 3


def sweep(storage: Path) -> dict:
    return tiny_sweep(
        "resumed",
        str(storage),
        seeds=SEEDS,
        align=["none"],
        correction=["none"],
        alphas=3,
        dataset={"name": "synthetic", "shape": [1, 8, 8], "num_classes": 4, "train_size": 4096, "test_size": 256},
        # momentum, a cosine schedule and random translations: a resume that lost the optimizer's,
        # the schedule's or the random generator's state would drift
        train={
            "epochs": EPOCHS,
            "batch_size": 16,
            "lr": 0.02,
            "momentum": 0.9,
            "schedule": "cosine",
            "augment": "translate",
            "checkpoint_every": 2,
            "seeds_per_trial": 1,  # as in the uninterrupted run: a stack of seeds trains other bits
        },
    )


def checkpoints(root: Path) -> dict[int, Checkpoint]:
    """Each seed's checkpoint that can be read now (one being replaced is skipped)."""
    found = {}
    for path in root.glob("checkpoints/*/seed-*.pt"):
        try:
            found[int(path.stem.removeprefix("seed-"))] = load_checkpoint(str(path))
        except CheckpointError:
            continue
    return found


def finished(root: Path) -> set[int]:
    """Seeds whose models row is written (one file per trial's row)."""
    return {int(re.search(r"__seed-(\d+)-", p.name).group(1)) for p in root.glob("tables/models/*.parquet")}


def in_the_middle(root: Path) -> dict[int, int]:
    """Seeds checkpointed part-way (after epoch 2 or 4) whose trial has not ended: seed -> epoch."""
    done = finished(root)
    return {
        seed: c.meta["epoch"]
        for seed, c in checkpoints(root).items()
        if seed not in done and 0 < c.meta["epoch"] < EPOCHS
    }


def assert_same_bits(a: Checkpoint, b: Checkpoint, what: str) -> None:
    assert a.state_dict.keys() == b.state_dict.keys()
    for name, tensor in a.state_dict.items():
        assert torch.equal(tensor, b.state_dict[name]), f"{what}: {name} differs"
    assert a.training_state is not None and b.training_state is not None
    for key in ("epoch", "step", "history"):
        assert a.training_state[key] == b.training_state[key], f"{what}: {key} differs"
    assert torch.equal(a.training_state["generator"], b.training_state["generator"]), f"{what}: data order"
    mine, theirs = (c.training_state["optimizer"]["state"] for c in (a, b))
    assert mine.keys() == theirs.keys() and mine, f"{what}: optimizer state differs"
    for param in mine:
        assert torch.equal(mine[param]["momentum_buffer"], theirs[param]["momentum_buffer"]), f"{what}: momentum"


@pytest.mark.slow  # three sweeps of 3 networks x 6 epochs: about a minute and a half here
def test_a_sweep_killed_while_trials_train_resumes_to_the_same_bits_as_one_never_killed(
    ray_session, tmp_path, subprocesses
):
    address = ray_session.get_runtime_context().gcs_address
    data = sweep(tmp_path / "killed")
    config_path = write_yaml(tmp_path / "sweep.yaml", data)
    root = tmp_path / "killed" / "resumed"

    driver = start_driver(config_path, address)
    kill_when(driver, lambda: bool(in_the_middle(root)))
    interrupted = in_the_middle(root)  # as the kill left them
    assert interrupted, "no trial was part-way at the kill"
    done = len(finished(root))
    wait_for_idle_cluster(ray_session)

    out = run_driver(config_path, address)
    assert f"[train] {done} of {SEEDS} trials already done; {SEEDS - done} to run" in out
    models = load_tables(str(root))["models"].set_index("seed")
    assert len(models) == SEEDS and (models["status"] == "ok").all()
    for seed, epoch in interrupted.items():
        assert models.loc[seed, "resumed_from_epoch"] == epoch, (seed, epoch)

    reference_config = parse_config({**data, "storage": str(tmp_path / "uninterrupted")})
    run_sweep(reference_config, say=lambda _: None)
    reference = load_tables(reference_config.root)["models"].set_index("seed")
    assert (reference["resumed_from_epoch"].fillna(0) == 0).all()  # really never interrupted

    resumed, never_killed = checkpoints(root), checkpoints(Path(reference_config.root))
    assert sorted(resumed) == sorted(never_killed) == list(range(SEEDS))
    for seed in range(SEEDS):
        assert resumed[seed].meta["epoch"] == EPOCHS and resumed[seed].meta["status"] == "ok"
        assert_same_bits(resumed[seed], never_killed[seed], f"seed {seed}")
        for column in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert models.loc[seed, column] == reference.loc[seed, column], (seed, column)
        assert json.loads(models.loc[seed, "history_json"]) == json.loads(reference.loc[seed, "history_json"])
