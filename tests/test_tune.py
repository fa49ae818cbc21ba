"""``repair-ray tune``: Ray Tune over each model config's recipe, before a seed study (issue 32)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from click.testing import CliRunner

from repair_ray import load_tables
from repair_ray.cli import main
from repair_ray.cli.tune_commands import tuned_config
from repair_ray.datasets import load_dataset
from repair_ray.io import storage
from repair_ray.io.tables import SCHEMAS, read_table
from repair_ray.models import ModelConfig
from repair_ray.sweep.config import ConfigError, parse_config
from repair_ray.sweep.lease import Lease
from repair_ray.sweep.runner import run_sweep
from repair_ray.sweep.tune_stage import run_tune_stage
from repair_ray.training import TrainConfig
from repair_ray.tuning import TuneRun, holdout

from .helpers import list_names, tiny_sweep, write_yaml
from .processes import wait_for_idle_cluster

SPACE = {"lr": {"grid": [0.1, 1e-6, 1e-7]}, "weight_decay": {"choice": [0.0]}}


def tuned_sweep(name: str, storage_uri: str, **tune) -> dict:
    data = tiny_sweep(name, storage_uri, seeds=2, align=["none"], correction=["none"], alphas=3)
    data["train"] = {**data["train"], "epochs": 4}
    data["tune"] = {"space": SPACE, "mode": "max", "num_samples": 1, "seeds": 2, "max_concurrent": 1}
    data["tune"].update({"val_samples": 128, **tune})
    return data


# --- bad input: exit 2 naming the key, before Ray --------------------------------------------


@pytest.mark.parametrize(
    ("tune", "expected"),
    [
        ({"space": {"lrr": {"choice": [0.1]}}}, r"tune\.space\.lrr: unknown recipe key 'lrr'; did you mean 'lr'\?"),
        ({"space": {"lr": {"normal": [0, 1]}}}, r"tune\.space\.lr: unknown distribution 'normal'"),
        ({"space": {"lr": {"loguniform": [0.5, 0.1]}}}, r"tune\.space\.lr\.loguniform: needs low < high"),
        ({"space": {"batch_size": {"uniform": [16, 64]}}}, r"tune\.space\.batch_size\.uniform: samples floats"),
        ({"space": {"optimizer": {"choice": ["sgd", "lion"]}}}, r"tune\.space\.optimizer\.choice: 'lion' over"),
        ({"metric": "test_acc"}, r"tune\.metric: unknown metric 'test_acc'.*\(what each trial reports\)"),
        ({"metric": "val_loss", "mode": "max"}, r"tune\.mode: val_loss is better lower: mode min"),
        ({"mode": None}, r"tune\.mode: is required: max or min"),
        ({"val_samples": 512}, r"tune\.val_samples: the validation split is carved from the 512 training samples"),
        ({"max_epochs": 9}, r"tune\.max_epochs: must be at most the recipe's epochs \(4\) of models\[0\]"),
        ({"schedular": "asha"}, r"tune\.schedular: unknown key; did you mean 'scheduler'\?"),
    ],
)
def test_bad_tune_sections_exit_2_naming_the_key(tmp_path, tune, expected):
    data = tuned_sweep("bad", str(tmp_path))
    data["tune"].update(tune)
    data["tune"] = {k: v for k, v in data["tune"].items() if v is not None}
    with pytest.raises(ConfigError, match=expected):
        parse_config(data)
    out = CliRunner().invoke(main, ["tune", write_yaml(tmp_path / "sweep.yaml", data)])
    assert out.exit_code == 2, out.output
    assert not (tmp_path / "bad").exists()  # nothing written


def test_tune_without_a_tune_section_is_a_usage_error(tmp_path):
    out = CliRunner().invoke(main, ["tune", write_yaml(tmp_path / "sweep.yaml", tiny_sweep("plain", str(tmp_path)))])
    assert out.exit_code == 2 and "has no tune section" in out.output


# --- the core: validation split, lock-step seeds, exact resumption -----------------------------


def _synthetic():
    return load_dataset("synthetic", shape=[1, 8, 8], num_classes=4, train_size=512, test_size=256)


def test_the_validation_split_is_carved_from_train_seeded_and_the_test_split_is_never_seen():
    dataset = _synthetic()
    held = holdout(dataset, 100, seed=3)
    assert len(held.test) == 100 and len(held.train) == 412
    rows = lambda split: {tuple(x.flatten().tolist()) for x in split.x}  # noqa: E731
    assert rows(held.test) | rows(held.train) == rows(dataset.train)  # the train split, whole
    assert not rows(held.test) & rows(held.train)  # disjoint
    assert not rows(held.test) & rows(dataset.test)  # never the test split
    assert torch.equal(holdout(dataset, 100, seed=3).test.x, held.test.x)  # seeded
    assert not torch.equal(holdout(dataset, 100, seed=4).test.x, held.test.x)


def test_a_tune_run_resumed_from_its_checkpoints_continues_exactly(tmp_path):
    dataset = holdout(_synthetic(), 128, seed=0)
    model, recipe = ModelConfig("mlp", 16, 2), TrainConfig(epochs=3, batch_size=64, lr=0.05)
    straight = TuneRun(model, recipe, dataset, (0, 1), 3)
    expected = [straight.epoch_step() for _ in range(3)]
    first = TuneRun(model, recipe, dataset, (0, 1), 3, checkpoint_dir=str(tmp_path))
    metrics = first.epoch_step()
    assert metrics == expected[0]
    first.save(metrics)
    resumed = TuneRun(model, recipe, dataset, (0, 1), 3, checkpoint_dir=str(tmp_path))
    assert resumed.epoch == 1
    assert [resumed.epoch_step() for _ in range(2)] == expected[1:]
    assert resumed.done
    # the mean of the seeds: one seed alone reports something else
    assert TuneRun(model, recipe, dataset, (0,), 3).epoch_step() != expected[0]


def test_an_ended_experiment_keeps_no_checkpoint_even_one_its_results_do_not_name(tmp_path):
    """A run killed right after a trial checkpointed, before Tune's next snapshot, leaves that
    checkpoint where the restored experiment's results do not point; when the experiment ends, every
    trial folder is emptied of checkpoints, and everything else Tune wrote stays."""
    from types import SimpleNamespace

    from pyarrow import fs as pafs

    from repair_ray.sweep.tune_stage import _remove_checkpoints

    experiment = tmp_path / "experiment"
    kept = [experiment / "experiment_state-1.json", experiment / "trial-a_00000" / "result.json"]
    stale = [
        experiment / "trial-a_00000" / "checkpoint_000001" / "seed-0.pt",
        experiment / "trial-a_00003" / "checkpoint_000000" / "seed-0.pt",  # a trial the results never name
    ]
    for path in kept + stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (experiment / "trial-a_00003" / "params.json").write_text("{}")
    results = SimpleNamespace(filesystem=pafs.LocalFileSystem(), experiment_path=str(experiment))  # a ResultGrid's
    _remove_checkpoints(results)
    assert all(path.exists() for path in kept) and (experiment / "trial-a_00003" / "params.json").exists()
    assert not list(experiment.rglob("checkpoint_*"))


def test_a_torn_tune_snapshot_restores_every_trial_and_never_waits_forever(ray_session, tmp_path):
    """A kill can leave Tune's two snapshot files from two moments: the trials (trial 1 running) and
    the search state a trial ahead (trial 1 ended, trial 2 made and counted running). Restored as
    Ray saved it, a generator capped at one running trial waits for trial 2 forever (the re-run of
    a killed ``tune`` hung in CI). Ours makes trial 2 again, the same id and sample, once trial 1
    ends, and then trial 3, exactly as a run never killed."""
    import json as _json

    from ray import tune
    from ray.tune.experiment import Experiment
    from ray.tune.search import BasicVariantGenerator

    from repair_ray.sweep.tune_search import ResumableVariantGenerator

    space = {"lr": tune.grid_search([0.01, 0.02, 0.05, 0.1]), "weight_decay": tune.loguniform(1e-5, 1e-3)}
    experiment = Experiment("torn", run=lambda config: None, config=space, storage_path=str(tmp_path))
    never_killed = ResumableVariantGenerator(seed=7, max_concurrent=1)
    never_killed.add_configurations([experiment])

    def made(generator) -> tuple[str, dict] | None:
        trial = generator.next_trial()
        return (trial.trial_id, trial.config) if trial else None

    first = never_killed.next_trial()
    first.status = "TERMINATED"
    never_killed.on_trial_complete(first.trial_id)
    second = never_killed.next_trial()
    second.status = "RUNNING"
    staging = tmp_path / "staging"
    staging.mkdir()
    trial_data = [first.get_json_state(), second.get_json_state()]
    (staging / "experiment_state-2026-12-07_00-00-00.json").write_text(_json.dumps({"trial_data": trial_data}))
    never_killed.on_trial_complete(second.trial_id)  # ... and later, the search state a trial ahead
    third = (lambda t: (t.trial_id, t.config))(never_killed.next_trial())
    never_killed.save_to_dir(str(staging), session_str="2026-12-07_00-00-01")
    never_killed.on_trial_complete(third[0])
    fourth = made(never_killed)

    as_saved = BasicVariantGenerator(random_state=7, max_concurrent=1)
    as_saved.restore_from_dir(str(staging))
    as_saved.on_trial_complete(second.trial_id)
    assert made(as_saved) is None and not as_saved.is_finished()  # Ray's own: waits for trial 2 forever

    restored = ResumableVariantGenerator(seed=7, max_concurrent=1)
    restored.restore_from_dir(str(staging))
    assert made(restored) is None  # trial 1 runs again first: one at a time
    restored.on_trial_complete(second.trial_id)
    assert made(restored) == third
    restored.on_trial_complete(third[0])
    assert made(restored) == fourth
    restored.on_trial_complete(fourth[0])
    assert made(restored) is None and restored.is_finished()


# --- on Ray: ASHA stops trials, the best recipe is written and runs -----------------------------


def test_asha_stops_trailing_trials_and_the_written_recipe_runs(ray_session, tmp_path, tuner):
    config = parse_config(tuned_sweep("tuned", str(tmp_path)))
    lines: list[str] = []
    summary = run_tune_stage(config, say=lines.append)
    assert any("[tune] 3/3 trials done" in line for line in lines), lines
    recipes = read_table(config.root, "recipes")
    key = config.models[0].model_key
    for file in Path(config.root, "tables", "recipes").glob("*.parquet"):
        assert pq.read_schema(file).remove_metadata().equals(SCHEMAS["recipes"]), file
    assert len(recipes) == 3 and set(recipes["model_key"]) == {key}
    by_lr = {json.loads(r.sampled_json)["lr"]: r for r in recipes.itertuples()}
    good = by_lr[0.1]
    assert good.status == "ok" and good.epochs == 4 and not good.stopped_early and good.best
    history = json.loads(good.history_json)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] and history[-1]["val_acc"] == good.value
    assert all(0 < h["seconds"] < 60 for h in history)  # each epoch's own training and validation time
    # learning rates a million times too small trail at the first rung: ASHA stops them there
    assert all(by_lr[lr].stopped_early and by_lr[lr].epochs == 1 and not by_lr[lr].best for lr in (1e-6, 1e-7))
    assert set(recipes["val_samples"]) == {128} and set(recipes["seeds_json"]) == {"[0, 1]"}
    assert json.loads(good.recipe_json)["epochs"] == 4 and json.loads(good.recipe_json)["batch_size"] == 64

    [best] = summary.best
    assert best.sampled == {"lr": 0.1, "weight_decay": 0.0} and best.value == good.value
    written = tuned_config(config, summary.best)
    path = write_yaml(tmp_path / "tuned.yaml", written)
    with open(path) as file:
        tuned = parse_config(yaml.safe_load(file))
    [plan] = tuned.models
    assert plan.train.lr == 0.1 and plan.train.weight_decay == 0.0 and plan.train.epochs == 4
    run_sweep(tuned, say=lambda line: None)
    models = load_tables(tuned.root)["models"]
    models = models[models["model_key"] == plan.model_key]
    assert len(models) == 2 and (models["status"] == "ok").all()
    assert {json.loads(c)["train"]["lr"] for c in models["config_json"]} == {0.1}

    # a second tune finds every trial done: nothing trains, the same rows come back
    lines.clear()
    run_tune_stage(config, say=lines.append)
    assert any("restored" in line for line in lines)
    again = read_table(config.root, "recipes")
    assert len(again) == 3 and sorted(again["value"].dropna()) == sorted(recipes["value"].dropna())


def test_each_model_config_of_a_grid_gets_its_own_recipe_entry(ray_session, tmp_path, tuner):
    data = tuned_sweep("grid", str(tmp_path), space={"lr": {"grid": [0.1, 1e-6]}}, scheduler="fifo")
    data["models"] = [{"arch": "mlp", "width": [8, 16], "depth": 2, "train": {"momentum": 0.8}}]
    data["train"]["epochs"] = 2
    config = parse_config(data)
    summary = run_tune_stage(config, say=lambda line: None)
    assert len(summary.best) == 2
    recipes = read_table(config.root, "recipes")
    assert len(recipes) == 4 and not recipes["stopped_early"].any()  # fifo stops nothing
    written = tuned_config(config, summary.best)
    assert [(m["width"], m["train"]) for m in written["models"]] == [
        (8, {"momentum": 0.8, "lr": 0.1}),
        (16, {"momentum": 0.8, "lr": 0.1}),
    ]


def test_tune_on_mnist_with_a_tiny_space(ray_session, tmp_path, mnist, tuner):
    data = {
        "name": "mnist-tune",
        "storage": str(tmp_path),
        "dataset": "mnist",
        "models": [{"arch": "mlp", "width": 32, "depth": 1}],
        "seeds": 2,
        "train": {"epochs": 2, "batch_size": 256, "lr": 0.05},
        "tune": {"space": {"lr": {"loguniform": [0.01, 0.2]}}, "mode": "min", "metric": "val_loss",
                 "num_samples": 2, "scheduler": "fifo", "val_samples": 5000},
    }  # fmt: skip
    config = parse_config(data)
    summary = run_tune_stage(config, say=lambda line: None)
    recipes = read_table(config.root, "recipes")
    assert len(recipes) == 2 and (recipes["status"] == "ok").all()
    lrs = [json.loads(s)["lr"] for s in recipes["sampled_json"]]
    assert all(0.01 <= lr <= 0.2 for lr in lrs) and lrs[0] != lrs[1]
    [best] = summary.best
    assert best.value == recipes["value"].min() < 0.5  # a 32-wide MLP after 2 epochs of real MNIST
    assert recipes.loc[recipes["best"], "value"].item() == best.value


def test_tune_takes_the_sweeps_lease(ray_session, tmp_path):
    data = tuned_sweep("leased", str(tmp_path))
    config = parse_config(data)
    with Lease(config.root):
        out = CliRunner().invoke(main, ["tune", write_yaml(tmp_path / "sweep.yaml", data)])
    assert out.exit_code == 3, out.output
    assert "lease" in out.output.lower()
    assert not storage.exists(storage.join(config.root, "tables", "recipes"))


# --- a killed tune, run again, keeps what was finished; on S3, no secret in what Tune writes ---------


def _tune_driver(config_path: str, address: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "repair_ray.cli", "tune", config_path, "--address", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.mark.slow
def test_a_killed_tune_run_again_finishes_without_redoing_finished_trials(
    ray_session, s3_bucket, tmp_path, subprocesses
):
    address = ray_session.get_runtime_context().gcs_address
    root = f"{s3_bucket}/tune-{uuid.uuid4().hex[:6]}"
    data = tuned_sweep("killed", root, space={"lr": {"grid": [0.01, 0.02, 0.05, 0.1]}}, scheduler="fifo")
    data["dataset"] = {**data["dataset"], "train_size": 4096}
    data["train"] = {**data["train"], "epochs": 8}
    config_path = write_yaml(tmp_path / "sweep.yaml", data)
    driver = _tune_driver(config_path, address)

    import boto3

    s3 = boto3.client("s3")
    bucket, prefix = root.removeprefix("s3://").split("/", 1)

    def ended_in_snapshot() -> int:  # trials whose end the experiment state on the bucket holds
        names = list_names(f"{root}/killed/tune/{experiment}") if experiment else []
        states = sorted(n for n in names if n.startswith("experiment_state"))
        if not states:
            return 0
        # one GET: Tune replaces this object every 2 s, and pyarrow's read (a HEAD for the size, then
        # the body) can take the size of one version and the bytes of the next
        key = f"{prefix}/killed/tune/{experiment}/{states[-1]}"
        state = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        return sum(json.loads(trial)["status"] == "TERMINATED" for trial, _ in state["trial_data"])

    experiment = None
    deadline = time.time() + 120
    while time.time() < deadline and ended_in_snapshot() < 2:
        assert driver.poll() is None, driver.stdout.read() if driver.stdout else ""
        found = list_names(f"{root}/killed/tune")
        experiment = found[0] if found else None
        time.sleep(0.2)
    killed_at = time.time()
    assert ended_in_snapshot() >= 2, "no two trials ended within 2 minutes"
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    kept = ended_in_snapshot()  # the restore starts from this snapshot: its ended trials are kept
    wait_for_idle_cluster(ray_session)
    assert storage.exists(f"{root}/killed/tune")
    assert not storage.exists(f"{root}/killed/tables/recipes")  # rows come when an experiment ends

    out = subprocesses.run(
        [sys.executable, "-m", "repair_ray.cli", "tune", config_path, "--address", address], timeout=150
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "restored: finished trials are kept" in out.stdout
    recipes = read_table(f"{root}/killed", "recipes")
    assert len(recipes) == 4 and not recipes.duplicated("trial_id").any()
    assert (recipes["status"] == "ok").all() and (recipes["epochs"] == 8).all(), recipes["error"].tolist()
    finished = sorted(r.finished_at.timestamp() for r in recipes.itertuples())
    # the trials whose end Tune's state held are kept, not trained again; the others end after the kill
    assert sum(t < killed_at for t in finished) == kept >= 2, (finished, killed_at, kept)

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/killed/tune/")["Contents"]]
    # removed when the experiment ended, those the killed run wrote after its last snapshot too
    assert not [k for k in keys if "/checkpoint_" in k], out.stdout
    # nothing Tune wrote to the bucket holds the credentials the driver used
    assert any(k.endswith("tuner.pkl") for k in keys) and any(
        k.endswith("experiment_state") or "experiment_state" in k for k in keys
    )
    secret, key_id = os.environ["AWS_SECRET_ACCESS_KEY"].encode(), os.environ["AWS_ACCESS_KEY_ID"].encode()
    for k in keys:
        body = s3.get_object(Bucket=bucket, Key=k)["Body"].read()
        for credential in (secret, key_id):  # as it is, and hex-encoded as Tune's state holds pickles
            assert credential not in body and credential.hex().encode() not in body, k


def test_tracking_logs_each_tune_trial_to_mlflow(ray_session, tmp_path, monkeypatch, tuner):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file://{tmp_path}/mlruns"
    data = {**tuned_sweep("tracked", str(tmp_path / "runs")), "tracking": {"mlflow": uri}}
    config = parse_config(data)
    run_tune_stage(config, say=lambda line: None)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tracked-tune")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(float(r.data.params["lr"]) for r in runs) == [1e-7, 1e-6, 0.1]
    for run in runs:
        assert run.data.tags["model_key"] == config.models[0].model_key
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == list(range(1, len(steps) + 1)) and len(steps) in (1, 4)  # stopped at the rung, or all


def test_a_tracking_uri_with_credentials_is_refused(tmp_path):
    data = {**tuned_sweep("creds", str(tmp_path)), "tracking": {"mlflow": "https://alice:hunter2@mlflow.example.com"}}
    with pytest.raises(ConfigError, match=r"tracking\.mlflow: the URI holds credentials") as error:
        parse_config(data)
    assert "hunter2" not in str(error.value)
