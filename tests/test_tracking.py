"""Optional MLflow tracking: one run per trained network with its settings and learning curve."""

from __future__ import annotations

import sys

import pytest

from repair_ray.sweep.config import ConfigError, parse_config
from repair_ray.sweep.runner import run_sweep

from .helpers import tiny_sweep


def test_tracking_mlflow_without_mlflow_installed_is_a_config_error_naming_the_key(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    data = {**tiny_sweep("tracked", str(tmp_path), seeds=2), "tracking": {"mlflow": f"file://{tmp_path}/mlruns"}}
    with pytest.raises(ConfigError, match=r"tracking\.mlflow: the mlflow package is not installed.*pip install mlflow"):
        parse_config(data)


def test_each_trained_network_is_one_mlflow_run_with_its_params_and_epoch_history(ray_session, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store for opting in
    uri = f"file://{tmp_path}/mlruns"
    data = tiny_sweep("tracked", str(tmp_path / "runs"), seeds=2, align=["none"], correction=["none"])
    data = {**data, "train": {**data.get("train", {}), "epochs": 3}, "tracking": {"mlflow": uri}}
    config = parse_config(data)
    lines: list[str] = []
    run_sweep(config, say=lines.append)
    assert any("[tracking] logged 2 trial(s) to MLflow experiment 'tracked'" in line for line in lines), lines

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    key = config.models[0].model_key
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["model_key"] == key and run.data.tags["model_key"] == key
        assert run.data.params["model.arch"] == "mlp" and run.data.params["train.epochs"] == "3"
        history = client.get_metric_history(run.info.run_id, "test_acc")
        assert sorted(m.step for m in history) == [1, 2, 3]
        assert not any("SECRET" in k.upper() or v == "testing" for k, v in run.data.params.items())

    # a re-run trains nothing and logs nothing again
    lines.clear()
    run_sweep(config, say=lines.append)
    assert len(client.search_runs([experiment.experiment_id])) == 2
