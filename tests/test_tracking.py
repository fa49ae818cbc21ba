"""Optional MLflow tracking: one run per trained network with its settings and learning curve, logged live."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time

import pytest

from repair_ray.sweep.config import ConfigError, parse_config
from repair_ray.sweep.messages import EpochReport
from repair_ray.sweep.runner import run_sweep

from .helpers import tiny_sweep


def test_tracking_mlflow_without_mlflow_installed_is_a_config_error_naming_the_key(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    data = {**tiny_sweep("tracked", str(tmp_path), seeds=2), "tracking": {"mlflow": f"file://{tmp_path}/mlruns"}}
    with pytest.raises(ConfigError, match=r"tracking\.mlflow: the mlflow package is not installed.*pip install mlflow"):
        parse_config(data)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A file:// MLflow store in ``tmp_path`` and a client of it."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store for opting in
    uri = f"file://{tmp_path}/mlruns"
    return uri, mlflow.MlflowClient(tracking_uri=uri)


def _runs(client, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def _steps(client, run, metric: str = "test_acc") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, metric))


def test_each_trained_network_is_one_mlflow_run_whose_epochs_are_logged_while_it_trains(
    ray_session, tmp_path, mlflow_store
):
    uri, client = mlflow_store
    data = tiny_sweep("tracked", str(tmp_path / "runs"), seeds=2, align=["none"], correction=["none"])
    data = {**data, "train": {**data.get("train", {}), "epochs": 3}, "tracking": {"mlflow": uri}}
    config = parse_config(data)
    key = config.models[0].model_key
    seen_in_flight: dict[int, tuple[str, list[int]]] = {}

    def say(line: str) -> None:
        """At a network's last epoch report (its trial has not ended yet), look at its run in MLflow."""
        lines.append(line)
        last_epoch = re.match(rf"\[train\] {key} seed (\d+): epoch 3/3", line)
        if not last_epoch:
            return
        seed, deadline = last_epoch.group(1), time.monotonic() + 30  # logging runs in a thread of its own
        seen = ("no run", [])
        while seen[1] != [1, 2, 3] and time.monotonic() < deadline:
            try:
                runs = [r for r in _runs(client, "tracked") if r.data.tags.get("seed") == seed]
                seen = (runs[0].info.status, _steps(client, runs[0])) if runs else seen
            except ValueError:  # read a metric file while the tracking thread was writing it
                pass
            time.sleep(0.1)
        seen_in_flight[int(seed)] = seen

    lines: list[str] = []
    run_sweep(config, say=say)
    assert seen_in_flight == {0: ("RUNNING", [1, 2, 3]), 1: ("RUNNING", [1, 2, 3])}, lines
    assert any("[tracking] logged 2 trial(s) to MLflow experiment 'tracked'" in line for line in lines), lines

    runs = _runs(client, "tracked")
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "ok"
        assert run.data.params["model_key"] == key and run.data.tags["model_key"] == key
        assert run.data.params["model.arch"] == "mlp" and run.data.params["train.epochs"] == "3"
        assert _steps(client, run) == [1, 2, 3]
        assert _steps(client, run, "train_acc") == [3]  # the clean pass over the train split: after the last epoch
        assert not any("SECRET" in k.upper() or v == "testing" for k, v in run.data.params.items())
        assert uri not in json.dumps(run.data.params) and "mlruns" not in json.dumps(run.data.params)

    # a re-run trains nothing and logs nothing again
    lines.clear()
    run_sweep(config, say=lines.append)
    assert len(_runs(client, "tracked")) == 2
    assert not any("[tracking]" in line for line in lines), lines


def _trial(tmp_path, seeds: int = 1, epochs: int = 3):
    from repair_ray.sweep.trials import trial_spec

    data = tiny_sweep("tracked", str(tmp_path / "runs"), seeds=2)
    config = parse_config({**data, "train": {**data["train"], "epochs": epochs}})
    return trial_spec(config, config.models[0], list(range(seeds)), 1)


def _epoch(seed: int, epoch: int) -> EpochReport:
    return EpochReport(seed, epoch, {"epoch": epoch, "test_acc": epoch / 10, "test_loss": 1 / (1 + epoch)})


def _tracking(uri: str, lines: list[str]):
    from repair_ray.sweep.tracking import LiveTracking

    return LiveTracking(uri, "tracked", lines.append)


def test_a_failed_network_ends_its_run_failed_with_the_error(tmp_path, mlflow_store):
    uri, client = mlflow_store
    trial, lines = _trial(tmp_path), []
    tracking = _tracking(uri, lines)
    tracking.epoch_done(trial, _epoch(0, 1))
    tracking.seed_done(trial, 0, "nan_loss: the loss is nan at epoch 2")
    tracking.close()
    (run,) = _runs(client, "tracked")
    assert run.info.status == "FAILED" and run.data.tags["status"] == "failed"
    assert run.data.tags["error"] == "nan_loss: the loss is nan at epoch 2"
    assert _steps(client, run) == [1] and run.data.params["seed"] == "0"


def test_a_resumed_network_continues_its_run_and_logs_no_epoch_twice(tmp_path, mlflow_store):
    uri, client = mlflow_store
    trial, lines = _trial(tmp_path), []
    crashed = _tracking(uri, lines)  # a sweep run that stopped after epoch 2 (the trial never ended)
    crashed.epoch_done(trial, _epoch(0, 1))
    crashed.epoch_done(trial, _epoch(0, 2))
    crashed.close(wait=True)
    (first,) = _runs(client, "tracked")
    assert first.info.status == "RUNNING"

    resumed = _tracking(uri, lines)  # the next one resumes from the checkpoint of epoch 1
    resumed.epoch_done(trial, _epoch(0, 2))
    resumed.epoch_done(trial, _epoch(0, 3))
    resumed.seed_done(trial, 0, None)
    resumed.close()
    (run,) = _runs(client, "tracked")
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    assert _steps(client, run) == [1, 2, 3] and _steps(client, run, "test_loss") == [1, 2, 3]
    assert not any("warning" in line for line in lines), lines


def test_a_network_that_failed_before_is_the_same_run_when_it_trains_later(tmp_path, mlflow_store):
    uri, client = mlflow_store
    trial, lines = _trial(tmp_path), []
    failed = _tracking(uri, lines)
    failed.epoch_done(trial, _epoch(0, 1))
    failed.seed_done(trial, 0, "RuntimeError: the worker died")
    failed.close()
    again = _tracking(uri, lines)
    for epoch in (2, 3):
        again.epoch_done(trial, _epoch(0, epoch))
    again.seed_done(trial, 0, None)
    again.close()
    (run,) = _runs(client, "tracked")
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "ok" and "error" not in run.data.tags
    assert _steps(client, run) == [1, 2, 3]


def test_epochs_trained_before_a_resume_without_tracking_are_backfilled_from_the_models_row(tmp_path, mlflow_store):
    from repair_ray.sweep.rows import write_models_row

    uri, client = mlflow_store
    trial, lines = _trial(tmp_path), []
    history = [{"epoch": e, "test_acc": e / 10, "test_loss": 1 / (1 + e)} for e in (1, 2, 3)]
    tracking = _tracking(uri, lines)
    tracking.epoch_done(trial, _epoch(0, 3))  # epochs 1 and 2 were trained by a sweep run without tracking
    tracking.flush()
    (live,) = _runs(client, "tracked")
    assert live.info.status == "RUNNING" and _steps(client, live) == [3]
    write_models_row(trial, 0, status="ok", history_json=json.dumps(history))  # the worker's row, as it ends
    tracking.seed_done(trial, 0, None)
    tracking.close()
    (run,) = _runs(client, "tracked")
    assert run.info.status == "FINISHED"
    assert [
        (m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, "test_acc"), key=lambda m: m.step)
    ] == [
        (1, 0.1),
        (2, 0.2),
        (3, 0.3),
    ]


def test_trunks_and_imported_networks_get_no_run(tmp_path, mlflow_store):
    uri, client = mlflow_store
    trial, lines = _trial(tmp_path), []
    tracking = _tracking(uri, lines)
    for role in ("trunk", "import"):
        other = dataclasses.replace(trial, role=role)
        tracking.epoch_done(other, _epoch(0, 0 if role == "import" else 1))
        tracking.seed_done(other, 0, None)
    tracking.close()
    assert _runs(client, "tracked") == [] and lines == []


def test_an_mlflow_failure_is_one_warning_and_nothing_more_is_tried(tmp_path, mlflow_store, monkeypatch):
    from mlflow import MlflowClient

    uri, client = mlflow_store
    calls: list[str] = []

    def refuse(self, run_id, **batch):
        calls.append(run_id)
        raise ConnectionError("the tracking server is down\nmore detail")

    monkeypatch.setattr(MlflowClient, "log_batch", refuse)
    trial, lines = _trial(tmp_path, seeds=2), []
    tracking = _tracking(uri, lines)
    for epoch in (1, 2, 3):
        for seed in (0, 1):
            tracking.epoch_done(trial, _epoch(seed, epoch))
    for seed in (0, 1):
        tracking.seed_done(trial, seed, None)
    tracking.close()
    assert len(calls) == 1 and tracking.failed
    assert lines == [
        "[tracking] warning: MLflow logging failed: ConnectionError: the tracking server is down"
        " (nothing more is logged to MLflow by this stage; the tables hold everything)"
    ]
