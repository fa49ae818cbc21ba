"""One network trained by several workers (``train.workers_per_trial``) with Ray Train, on the CPU (gloo).

The trial of two workers trains the network one worker would on the same global batch (to float
tolerance), writes one checkpoint and one row, and a worker killed mid-run fails the attempt, which
the driver retries from the last checkpoint. Requests the cluster can never hold are refused before
anything trains.
"""

from __future__ import annotations

import pytest
import torch

from repair_ray import load_tables
from repair_ray.datasets import load_dataset
from repair_ray.io.checkpoint import load_checkpoint
from repair_ray.sweep.config import ConfigError, parse_config
from repair_ray.sweep.layout import checkpoint_uri
from repair_ray.sweep.runner import check_resources, run_sweep
from repair_ray.training import train_model

from .helpers import tiny_sweep

ALLOW = ["tests.custom_nets"]


def group_sweep(name: str, storage: str, marker: str, **train) -> dict:
    return tiny_sweep(
        name,
        storage,
        seeds=2,
        models=[{"arch": "tests.custom_nets:dying_mlp", "width": 16, "kwargs": {"marker": marker, "after_steps": 9}}],
        train={"epochs": 2, "batch_size": 64, "lr": 0.05, "checkpoint_every": 1, "workers_per_trial": 2, **train},
        align=["none", "weight"],
        correction=["none"],
    )


def test_two_workers_train_what_one_would_and_a_killed_worker_resumes_from_the_checkpoint(
    ray_session, tmp_path, worker_group
):
    marker = tmp_path / "kill-once"
    marker.touch()  # rank 1 of the first trial exits at its 9th step (epoch 2's first), once
    config = parse_config(group_sweep("group", str(tmp_path / "runs"), str(marker)), allow_import=ALLOW)
    lines: list[str] = []
    result = run_sweep(config, say=lines.append)
    assert not marker.exists(), "no worker reached the step that kills it"
    assert (result.train.ran, result.train.failed, result.pairs.ran, result.pairs.failed) == (2, 0, 1, 0)
    assert any("failed (" in line and "retrying from its checkpoint" in line for line in lines), lines
    assert sum("its 2 workers are training" in line for line in lines) == 3  # two trials, one retried
    models = load_tables(config.root)["models"].sort_values("seed")
    assert (models["status"] == "ok").all() and (models["workers"] == 2).all() and models["epochs"].eq(2).all()
    assert sorted(models["resumed_from_epoch"]) == [0, 1]  # the killed trial resumed after epoch 1

    (plan,) = config.models
    dataset = load_dataset(config.dataset.name, **config.dataset.options)
    for seed in plan.seeds:  # one process on the same global batches: the same network, to float tolerance
        alone = train_model(plan.model, config.train, dataset, seed=seed).state_dict or {}
        trained = load_checkpoint(checkpoint_uri(config.root, plan.model_key, seed)).state_dict
        assert trained.keys() == alone.keys()
        for name in alone:
            torch.testing.assert_close(trained[name], alone[name], rtol=1e-4, atol=1e-5, msg=f"seed {seed} {name}")
    pairs = load_tables(config.root)["pairs"]
    assert len(pairs) == 2 and (pairs["status"] == "ok").all()


def test_workers_the_cluster_can_never_hold_at_once_are_refused_before_training(ray_session, tmp_path):
    data = group_sweep("wide", str(tmp_path / "runs"), "")
    data["train"]["workers_per_trial"] = 4
    data["train"]["batch_size"] = 64
    config = parse_config(data, allow_import=ALLOW)
    with pytest.raises(ConfigError, match=r"train.workers_per_trial is 4: each network's workers need 4 CPU at once"):
        check_resources(config)  # the session's cluster has 2 CPUs


@pytest.mark.parametrize(
    "train, resources, expected",
    [
        ({"batch_size": 63}, {}, "train.batch_size: must be divisible by train.workers_per_trial (2)"),
        ({"seeds_per_trial": 2}, {}, "train.seeds_per_trial: a network trained across workers"),
        ({}, {"train": {"gpu": 0.5}}, "resources.train.gpu: must be 0 or 1 with train.workers_per_trial 2"),
        ({"workers_per_trial": 0}, {}, "train.workers_per_trial: must be a positive integer, got 0"),
    ],
)
def test_bad_worker_settings_are_refused_naming_the_key(tmp_path, train, resources, expected):
    data = group_sweep("bad", str(tmp_path / "runs"), "", **train)
    if resources:
        data["resources"] = resources
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        parse_config(data, allow_import=ALLOW)


def test_the_number_of_workers_is_not_part_of_a_networks_identity(tmp_path):
    one = parse_config(group_sweep("k", str(tmp_path), "", workers_per_trial=1), allow_import=ALLOW)
    two = parse_config(group_sweep("k", str(tmp_path), ""), allow_import=ALLOW)
    assert [p.model_key for p in one.models] == [p.model_key for p in two.models]
    assert one.train == two.train and (one.workers_per_trial, two.workers_per_trial) == (1, 2)


def test_validate_with_an_address_judges_the_workers_against_that_cluster(ray_session, tmp_path):
    from click.testing import CliRunner

    from repair_ray.cli import main

    from .helpers import write_yaml

    address = ray_session.get_runtime_context().gcs_address
    data = group_sweep("v", str(tmp_path / "runs"), "")
    fits = CliRunner().invoke(main, ["validate", write_yaml(tmp_path / "two.yaml", data), "--allow-import", ALLOW[0]])
    assert fits.exit_code == 0 and "validate --address HEAD checks it now" in fits.output, fits.output
    data["train"]["workers_per_trial"] = 4
    path = write_yaml(tmp_path / "four.yaml", data)
    unjudged = CliRunner().invoke(main, ["validate", path, "--allow-import", ALLOW[0]])
    assert unjudged.exit_code == 0, unjudged.output  # the cluster is unknown without an address
    judged = CliRunner().invoke(main, ["validate", path, "--allow-import", ALLOW[0], "--address", address])
    assert judged.exit_code == 2 and "each network's workers need 4 CPU at once" in judged.output, judged.output
    assert ray_session.is_initialized()  # the session's connection is left as it was


def test_no_pair_starts_while_a_trial_waits_for_its_workers(ray_session, tmp_path):
    """The pair stage holds new tasks while ``workers_wanted`` is set (a trial of several workers waits
    for all of them), so what running pairs release goes to those workers; it goes on once cleared."""
    import threading
    import time

    from repair_ray.sweep.pair_stage import run_pair_stage
    from repair_ray.sweep.train_stage import run_train_stage

    config = parse_config(tiny_sweep("held", str(tmp_path / "runs"), seeds=2, align=["none"], correction=["none"]))
    run_train_stage(config, say=lambda _line: None)
    wanted = threading.Event()
    wanted.set()
    summaries = []
    stage = threading.Thread(
        target=lambda: summaries.append(run_pair_stage(config, say=lambda _line: None, workers_wanted=wanted))
    )
    stage.start()
    time.sleep(4.0)  # a pair of these networks takes well under a second
    assert stage.is_alive() and not load_tables(config.root)["pairs"].shape[0]
    wanted.clear()
    stage.join(timeout=60)
    assert not stage.is_alive() and summaries[0].ran == 1
    assert (load_tables(config.root)["pairs"]["status"] == "ok").all()
