"""Train stage: one Ray Tune trial per (model config, seed), resumable from storage.

"Done" is decided from storage, never from Tune's own state: a trial is done when its row in
the ``models`` table says ``ok``. A re-run therefore starts a Tuner for what is missing only;
a trial that was interrupted resumes from its own last checkpoint (written every
``train.checkpoint_every`` epochs and at the end), which is exact and independent of when Tune
last snapshotted its experiment state.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..io import storage
from ..io.checkpoint import CheckpointError, load_checkpoint
from ..io.tables import read_table, table_file, write_rows
from ..models import ModelConfig
from ..training import TrainConfig, train_model
from .cluster import resolve_resources
from .config import SweepConfig
from .planning import ModelPlan, model_outcomes
from .progress import Progress
from .rows import model_columns
from .worker import cached_dataset, error_text, node_id, setup_worker


def checkpoint_uri(root: str, model_key: str, seed: int) -> str:
    return storage.join(root, "checkpoints", model_key, f"seed-{seed}.pt")


def models_row_uri(root: str, model_key: str, seed: int) -> str:
    return table_file(root, "models", f"{model_key}__seed-{seed}")


def trial_spec(config: SweepConfig, plan: ModelPlan, seed: int, threads: float) -> dict[str, Any]:
    """Everything a trial needs, as plain JSON-able data (it travels to a worker)."""
    return {
        "sweep": config.name,
        "root": config.root,
        "model_key": plan.model_key,
        "seed": seed,
        "model": asdict(plan.model),
        "train": asdict(config.train),
        "dataset": config.dataset.as_dict(),
        "checkpoint_every": config.checkpoint_every,
        "threads": threads,
    }


def models_row(spec: dict[str, Any], **values: Any) -> dict[str, Any]:
    """A ``models`` table row for the trial ``spec`` (metrics and status in ``values``)."""
    model = spec["model"]
    row = {
        "sweep": spec["sweep"],
        "model_key": spec["model_key"],
        **model_columns(model, spec["dataset"]),
        "seed": spec["seed"],
        "init_seed": spec["seed"],
        "data_seed": spec["seed"],
        "checkpoint_uri": checkpoint_uri(spec["root"], spec["model_key"], spec["seed"]),
        "config_json": json.dumps({"model": model, "train": spec["train"], "dataset": spec["dataset"]}, sort_keys=True),
    }
    row.update(values)
    return row


def train_trial(config: dict[str, Any]) -> None:
    """The Tune function trainable: train (or resume, or find finished) one network, write its row."""
    from ray import tune

    spec = config["trial"]
    device = setup_worker(spec["threads"])
    dataset = cached_dataset(spec["dataset"], device)
    uri = checkpoint_uri(spec["root"], spec["model_key"], spec["seed"])
    resumed_from = 0
    if storage.exists(uri):
        try:
            resumed_from = int(load_checkpoint(uri).meta.get("epoch", 0))
        except CheckpointError:
            storage.remove(uri, missing_ok=True)  # a broken checkpoint cannot be resumed: start over

    def report(epoch: int, metrics: dict[str, float]) -> None:
        tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})

    result = train_model(
        ModelConfig(**spec["model"]),
        TrainConfig(**spec["train"]),
        dataset,
        seed=spec["seed"],
        device=device,
        checkpoint_uri=uri,
        checkpoint_every=spec["checkpoint_every"],
        on_epoch=report,
    )
    status = "ok" if result.status == "ok" else "failed"
    error = None if result.status == "ok" else f"{result.status}: {result.error}"
    write_rows(
        models_row_uri(spec["root"], spec["model_key"], spec["seed"]),
        "models",
        [
            models_row(
                spec,
                epochs=result.epochs,
                train_seconds=result.seconds,
                status=status,
                error=error,
                resumed_from_epoch=resumed_from,
                device=str(device),
                node_id=node_id(),
                **result.metrics,
            )
        ],
    )


def finished_trials(root: str) -> set[tuple[str, int]]:
    """(model_key, seed) of every trial whose ``models`` row says ``ok``."""
    return {trial for trial, status in model_outcomes(read_table(root, "models")).items() if status == "ok"}


@dataclass
class TrainStageSummary:
    total: int
    already_done: int
    ran: int
    failed: int
    seconds: float


def run_train_stage(config: SweepConfig, *, say: Callable[[str], None] = print) -> TrainStageSummary:
    """Train every (model config, seed) of the sweep that is not done yet; returns counts."""
    # Only Tune's JSON log per trial (what ResultGrid reads back); no TensorBoard or CSV files.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    started = time.time()
    done = finished_trials(config.root)
    todo = [(plan, seed) for plan in config.models for seed in plan.seeds if (plan.model_key, seed) not in done]
    total = config.n_trials
    say(f"[train] {total - len(todo)} of {total} trials already done; {len(todo)} to run")
    if not todo:
        return TrainStageSummary(total, total, 0, 0, time.time() - started)

    cpu, gpu = resolve_resources(config.resources.train, "resources.train", say)
    specs = [trial_spec(config, plan, seed, cpu) for plan, seed in todo]
    progress = Progress("train", len(specs), say, unit="trials")

    class ReportProgress(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            progress.advance(ok=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            progress.advance(ok=False)

    tuner = tune.Tuner(
        tune.with_resources(train_trial, {"cpu": cpu, "gpu": gpu}),
        param_space={"trial": tune.grid_search(specs)},
        tune_config=tune.TuneConfig(
            trial_dirname_creator=_trial_dirname, trial_name_creator=_trial_dirname, reuse_actors=False
        ),
        run_config=tune.RunConfig(
            name=f"train-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=storage.join(config.root, "tune"),
            failure_config=tune.FailureConfig(max_failures=config.train_retries),
            verbose=0,
            callbacks=[ReportProgress(), JsonLoggerCallback()],
        ),
    )
    grid = tuner.fit()
    for result in grid:
        spec = result.config["trial"]
        if result.error is not None:  # a trial that raised (a NaN loss ends normally, with its own row)
            write_rows(
                models_row_uri(spec["root"], spec["model_key"], spec["seed"]),
                "models",
                [models_row(spec, status="failed", error=error_text(result.error), **_nan_metrics())],
            )
    outcomes = model_outcomes(read_table(config.root, "models"))
    failed = sum(outcomes.get((p.model_key, seed)) == "failed" for p in config.models for seed in p.seeds)
    say(f"[train] done in {time.time() - started:.0f}s: {total - failed} ok, {failed} failed")
    return TrainStageSummary(total, total - len(todo), len(todo), failed, time.time() - started)


def _nan_metrics() -> dict[str, float]:
    return {k: math.nan for k in ("train_loss", "train_acc", "test_loss", "test_acc")}


def _trial_dirname(trial: Any) -> str:
    spec = trial.config["trial"]
    return f"{spec['model_key']}_seed{spec['seed']}"
