"""``repair-ray tune``: one Ray Tune experiment per model config, over the sweep's ``tune`` section.

Each model config the sweep trains (``models[i]``, its recipe merged) is tuned on its own: a
:class:`ray.tune.Tuner` samples the space, each trial trains the sample's seeds with the core's
:class:`~repair_ray.tuning.TuneRun` on a validation split carved from the train split, and reports
every epoch (ASHA may stop it at a rung). The experiment lives under the sweep's folder
(``tune/<model_key>-<tune_key>``, local or on a bucket, credentials from the environment only), so a
killed ``tune`` run again restores it (``Tuner.restore``) and finishes without redoing finished trials.
Its trials become ``recipes`` rows, one per trial; the best ok trial that was not stopped early is
the model config's recipe.

Seed studies stay on the train stage's Ray tasks (a trial there costs a fraction of Tune's, and
ASHA or PBT would bias a study of seeds); Tune is for this step before them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..io import storage
from ..io.tables import new_stem, table_file, write_rows
from ..models import ModelConfig
from ..names import LINEAGE
from ..training import TrainConfig
from ..tuning import Distribution, TuneSettings, sampled_recipe
from .cluster import cluster_shape, resolve_resources
from .config import SweepConfig
from .progress import Progress
from .rows import model_columns
from .worker import error_text, utc_now

__all__ = ["TuneTarget", "TunedRecipe", "experiment_name", "run_tune_stage", "tune_targets"]

SEARCH_SEED = 0  # the samples are drawn from a fixed seed: a re-run (or a restore) draws the same
# How often Tune snapshots an experiment's state (s): a killed tune loses the trial ends of at most this
# long (their trials then finish again from their last checkpoint). Tune's own default is 10 s or more.
SNAPSHOT_SECONDS = "2"


@dataclass(frozen=True)
class TuneTarget:
    """One model config to tune: ``models[grid]``, its model key and the recipe it would train with."""

    grid: int
    model_key: str
    model: ModelConfig
    recipe: TrainConfig
    train_override: str | None


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of one target shares (the object store holds it once per experiment)."""

    model: dict[str, Any]
    recipe: dict[str, Any]
    dataset: dict[str, Any]
    seeds: tuple[int, ...]
    max_epochs: int | None
    val_samples: int
    val_seed: int
    checkpoint_every: int
    threads: float


@dataclass(frozen=True)
class TunedRecipe:
    """The best trial of a target: its sampled values, its metric, and its row."""

    target: TuneTarget
    sampled: dict[str, Any]
    value: float
    epochs: int


def tune_targets(config: SweepConfig) -> list[TuneTarget]:
    """Every model config the sweep trains, once (a stability or IMP study's children share their
    unbranched config's recipe, which is tuned under the unbranched key)."""
    out: dict[str, TuneTarget] = {}
    for plan in config.models:
        if plan.is_imported:
            continue
        key = plan.trunk_key or plan.model_key
        if key not in out:
            recipe = plan.recipe(config.train)
            out[key] = TuneTarget(plan.grid, key, plan.model, recipe, plan.train_override)
    return list(out.values())


def experiment_name(target: TuneTarget, settings: TuneSettings) -> str:
    """The Tune experiment's folder under ``<sweep>/tune/``: the model key and the tune key."""
    return f"{target.model_key}-{settings.key(target.recipe)}"


def tune_trial(sampled: dict[str, Any], spec: TrialSpec) -> None:
    """The trainable: train a sample's seeds, report the mean validation metrics every epoch
    (with a checkpoint every ``checkpoint_every`` epochs and at the end), resuming from Tune's checkpoint."""
    from ray import tune

    from ..tuning import TuneRun, holdout
    from ..tuning.run import NonFiniteLossError
    from .worker import cached_dataset, setup_worker

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not a line per checkpoint in the driver's log
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    device = setup_worker(spec.threads)
    recipe = sampled_recipe(TrainConfig(**spec.recipe), sampled)
    dataset = holdout(cached_dataset(spec.dataset, device), spec.val_samples, spec.val_seed)
    epochs = min(spec.max_epochs or recipe.epochs, recipe.epochs)
    with tempfile.TemporaryDirectory(prefix="repair-ray-tune-") as folder:
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            checkpoint.to_directory(folder)
        run = TuneRun(
            ModelConfig(**spec.model), recipe, dataset, spec.seeds, epochs, device=device, checkpoint_dir=folder
        )
        if run.done and run.saved is not None:  # it ended after Tune's last snapshot: report its end again
            tune.report({**run.saved, "reported_at": time.time()})
        while not run.done:
            started = time.perf_counter()
            try:
                step = run.epoch_step()
                # the epoch's own training and validation time (as the models table's train_seconds counts a
                # network's), apart from the trainable's start and Tune's reporting: what Tune costs is the rest
                metrics = {
                    **step,
                    "seconds": time.perf_counter() - started,
                    "diverged": 0.0,
                    "reported_at": time.time(),
                }
            except NonFiniteLossError:  # a sample that diverged ends here; it is never the best
                nan = math.nan
                ended = {"epoch": float(run.epoch + 1), "val_acc": nan, "val_loss": nan, "diverged": 1.0}
                tune.report({**ended, "reported_at": time.time()})
                return
            if run.done or run.epoch % spec.checkpoint_every == 0:
                run.save(metrics)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            else:
                tune.report(metrics)


def _tune_distribution(distribution: Distribution) -> Any:
    from ray import tune

    values = list(distribution.values)
    return {
        "choice": lambda: tune.choice(values),
        "grid": lambda: tune.grid_search(values),
        "uniform": lambda: tune.uniform(*values),
        "loguniform": lambda: tune.loguniform(*values),
    }[distribution.kind]()


def _trainable(spec: TrialSpec, cpu: float, gpu: float) -> Any:
    """The trainable exactly as every Tuner of this target (new or restored) gets it."""
    from ray import tune

    return tune.with_resources(tune.with_parameters(tune_trial, spec=spec), {"cpu": cpu, "gpu": gpu})


def _tuner(
    config: SweepConfig,
    target: TuneTarget,
    settings: TuneSettings,
    spec: TrialSpec,
    resources: tuple[float, float],
    callbacks: list[Any],
) -> tuple[Any, bool]:
    """The Tuner of ``target``'s experiment: restored when the sweep's folder holds it (a killed
    run), else new. Returns it and whether it was restored."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from .tune_search import ResumableVariantGenerator

    name = experiment_name(target, settings)
    where = storage.join(config.root, "tune")
    trainable = _trainable(spec, *resources)
    path = storage.join(where, name)
    if tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True), True
    if settings.scheduler == "asha":
        scheduler: Any = ASHAScheduler(
            max_t=settings.max_t(target.recipe),
            grace_period=settings.grace_period,
            reduction_factor=settings.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    tuner = tune.Tuner(
        trainable,
        param_space={key: _tune_distribution(d) for key, d in settings.space.items()},
        tune_config=tune.TuneConfig(
            metric=settings.metric,
            mode=settings.mode,
            scheduler=scheduler,
            # the concurrency cap goes to the generator itself: Tune ignores max_concurrent_trials beside it
            search_alg=ResumableVariantGenerator(SEARCH_SEED, settings.max_concurrent or 0),
            num_samples=settings.num_samples,
            reuse_actors=True,  # one worker process (torch imported, dataset loaded) serves trial after trial
            trial_dirname_creator=lambda trial: f"trial-{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=where,
            callbacks=callbacks,
            # every checkpoint is kept while the experiment runs: a snapshot taken before a kill may name
            # one that num_to_keep would have deleted since ("does not exist on storage anymore" on restore);
            # they are removed when the experiment ends (finished trials are never trained again)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            failure_config=tune.FailureConfig(max_failures=config.train_retries),
            verbose=0,  # the progress lines are ours (one per trial), not Tune's tables
        ),
    )
    return tuner, False


def _progress_callback(target: TuneTarget, total: int, say: Callable[[str], None], metric: str) -> Any:
    from ray.tune import Callback

    progress = Progress("tune", total, say, unit="trials")

    class Lines(Callback):
        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            result = trial.last_result or {}
            value = result.get(metric)
            shown = f"{metric} {value:.4f}" if isinstance(value, float) and math.isfinite(value) else "diverged"
            sampled = ", ".join(f"{k}={_shown(v)}" for k, v in sorted(trial.config.items()))
            epochs = int(result.get("epoch", 0))
            progress.advance(ok=True, note=f"{target.model_key} {sampled}: {shown} after {epochs} epoch(s)")

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            progress.advance(ok=False, note=f"{target.model_key} trial {trial.trial_id} failed")

    return Lines()


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _mlflow_callback(config: SweepConfig, target: TuneTarget) -> list[Any]:
    """Tune's MLflow callback when ``tracking.mlflow`` is set: one MLflow run per trial, its sampled
    values as params and every epoch's metrics, in the experiment ``<sweep>-tune``."""
    if not config.mlflow_uri:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    tags = {"model_key": target.model_key, "sweep": config.name, "stage": "tune"}
    return [MLflowLoggerCallback(tracking_uri=config.mlflow_uri, experiment_name=f"{config.name}-tune", tags=tags)]


def recipe_rows(
    config: SweepConfig, target: TuneTarget, settings: TuneSettings, results: Any
) -> tuple[list[dict[str, Any]], TunedRecipe | None]:
    """One ``recipes`` row per trial of a finished (or restored) experiment, and the best trial:
    the ok trial, not stopped early, with the best last metric (None when there is none)."""
    tune_key = settings.key(target.recipe)
    rows = []
    for result in results:
        metrics = result.metrics or {}
        raw = dict(result.config or {})
        recipe = sampled_recipe(target.recipe, raw) if _fits(target.recipe, raw) else target.recipe
        sampled = {k: getattr(recipe, k) for k in raw}  # as trained (a range's float rounded)
        history = _history(result)
        epochs = int(metrics.get("epoch", 0) or 0)
        wanted = min(settings.max_epochs or recipe.epochs, recipe.epochs)
        diverged = bool(metrics.get("diverged"))
        status = "error" if result.error is not None else "diverged" if diverged else "ok"
        value = metrics.get(settings.metric)
        rows.append(
            {
                "sweep": config.name,
                "model_key": target.model_key,
                "tune_key": tune_key,
                "trial_id": str(metrics.get("trial_id") or result.path.rstrip("/").rsplit("trial-", 1)[-1]),
                **{
                    k: v
                    for k, v in model_columns(
                        asdict(target.model), config.dataset.as_dict(), train_override=target.train_override
                    ).items()
                    if k not in LINEAGE  # a recipe is of the unbranched config
                },
                "grid": target.grid,
                "sampled_json": json.dumps(sampled, sort_keys=True),
                "recipe_json": json.dumps(asdict(recipe), sort_keys=True),
                "seeds_json": json.dumps(list(range(settings.seeds))),
                "metric": settings.metric,
                "mode": settings.mode,
                "value": float(value) if isinstance(value, (int, float)) and status == "ok" else math.nan,
                "epochs": epochs,
                "max_epochs": wanted,
                "stopped_early": status == "ok" and epochs < wanted,
                "history_json": json.dumps(history),
                "scheduler": settings.scheduler,
                "val_samples": settings.val_samples,
                "val_seed": settings.val_seed,
                "status": status,
                "error": None if result.error is None else error_text(result.error),
                "best": False,
                "finished_at": _finished_at(metrics),
            }
        )
    better = max if settings.mode == "max" else min
    complete = [r for r in rows if r["status"] == "ok" and not r["stopped_early"] and math.isfinite(r["value"])]
    if not complete:
        return rows, None
    best = better(complete, key=lambda r: r["value"])
    best["best"] = True
    sampled = json.loads(best["sampled_json"])
    return rows, TunedRecipe(target, sampled, best["value"], best["epochs"])


def _fits(recipe: TrainConfig, sampled: dict[str, Any]) -> bool:
    try:
        dataclasses.replace(recipe, **sampled)
    except (TypeError, ValueError):
        return False
    return True


def _history(result: Any) -> list[dict[str, float]]:
    """Each epoch's reported metrics of a trial, in order."""
    frame = result.metrics_dataframe
    if frame is None or frame.empty:
        return []
    keep = [c for c in ("epoch", "val_acc", "val_loss", "train_loss", "train_acc", "seconds") if c in frame.columns]
    out = []
    for record in frame[keep].to_dict("records"):
        out.append({k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and math.isfinite(v)})
    return out


def _finished_at(metrics: dict[str, Any]) -> Any:
    """When the trial reported last (the trainable's clock; Tune's own ``timestamp`` is whole seconds)."""
    stamp = metrics.get("reported_at", metrics.get("timestamp"))
    if isinstance(stamp, (int, float)):
        import datetime

        return datetime.datetime.fromtimestamp(stamp, datetime.UTC)
    return utc_now()


def _remove_checkpoints(results: Any) -> None:
    """Delete the checkpoints of an experiment whose trials all ended: a restore never trains them
    again, and a recipe is a few numbers, not weights (the study trains its own networks).

    Every trial folder of the experiment is looked in, not only the paths Tune's results name: a
    run killed just after a trial wrote a checkpoint, before Tune's next snapshot, leaves that
    checkpoint where the restored experiment's results do not point."""
    from pyarrow import fs as pafs

    filesystem, where = results.filesystem, results.experiment_path
    if filesystem is None or not where:
        return
    for trial in filesystem.get_file_info(pafs.FileSelector(where, allow_not_found=True)):
        if trial.type != pafs.FileType.Directory:
            continue
        for info in filesystem.get_file_info(pafs.FileSelector(trial.path, allow_not_found=True)):
            if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
                filesystem.delete_dir(info.path)


@dataclass
class TuneStageSummary:
    best: list[TunedRecipe]
    untuned: list[TuneTarget]  # no trial finished ok and complete
    trials: int
    failed: int
    seconds: float


def run_tune_stage(config: SweepConfig, *, say: Callable[[str], None] = print) -> TuneStageSummary:
    """Tune every target of ``config`` in turn, writing its ``recipes`` rows when its experiment ends."""
    settings = config.tune
    if settings is None:
        raise ValueError(f"{config.source}: has no tune section")
    started = time.time()
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", SNAPSHOT_SECONDS)  # read by each Tuner's controller
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # frequent, wanted
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no experiment tables between our lines
    shape = cluster_shape(say)
    from .tune_search import restore_say

    restore_say[0] = say  # a restored experiment's generator says here if Tune's private API has changed
    resources = resolve_resources(config.resources.train, "resources.train", say, shape)
    best, untuned = [], []
    trials = failed = 0
    targets = tune_targets(config)
    for n, target in enumerate(targets, 1):
        spec = TrialSpec(
            model=asdict(target.model),
            recipe=asdict(target.recipe),
            dataset=config.dataset.as_dict(),
            seeds=tuple(range(settings.seeds)),
            max_epochs=settings.max_epochs,
            val_samples=settings.val_samples,
            val_seed=settings.val_seed,
            checkpoint_every=config.checkpoint_every,
            threads=resources[0],
        )
        grid = math.prod(len(d.values) for d in settings.space.values() if d.kind == "grid")
        total = settings.num_samples * grid
        callbacks = [_progress_callback(target, total, say, settings.metric), *_mlflow_callback(config, target)]
        tuner, restored = _tuner(config, target, settings, spec, resources, callbacks)
        say(
            f"[tune] {n}/{len(targets)} {target.model_key} (models[{target.grid}]): {total} trials x "
            f"{settings.seeds} seed(s), {settings.scheduler}"
            + (" (restored: finished trials are kept)" if restored else "")
        )
        results = tuner.fit()
        rows, tuned = recipe_rows(config, target, settings, results)
        write_rows(table_file(config.root, "recipes", new_stem(f"{target.model_key}-tune")), "recipes", rows)
        _remove_checkpoints(results)
        trials += len(rows)
        failed += sum(r["status"] == "error" for r in rows)
        if tuned is None:
            untuned.append(target)
            say(f"[tune] {target.model_key}: no trial finished all its epochs ok; no recipe")
        else:
            best.append(tuned)
    return TuneStageSummary(best, untuned, trials, failed, time.time() - started)
