"""Train stage: one Ray Tune trial per (model config, seed), resumable from storage.

"Done" is decided from storage, never from Tune's own state: a trial is done when its row in
the ``models`` table says ``ok`` and its checkpoint is still there, whole (the size its row
recorded); a damaged or deleted checkpoint is retrained (training is deterministic, so the new
network equals the old one bit for bit). A re-run therefore starts a Tuner for what is missing only;
a trial that was interrupted resumes from its own last checkpoint (written every
``train.checkpoint_every`` epochs and at the end), which is exact and independent of when Tune
last snapshotted its experiment state.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from ..io import storage
from ..io.checkpoint import CheckpointError, load_checkpoint
from ..io.tables import new_stem, read_table, table_file, write_rows
from ..models import ModelConfig
from ..pruning import prunable_names, weight_sparsity
from ..training import TrainConfig, next_imp_mask, train_model, train_trunk
from .cluster import resolve_resources
from .config import SweepConfig
from .planning import ModelPlan, model_outcomes
from .progress import Progress
from .rows import model_columns
from .worker import cached_dataset, error_text, node_id, setup_worker, utc_now


def checkpoint_path(model_key: str, seed: int) -> str:
    """Where a trial's checkpoint lives, relative to the sweep root (rows store this, so a sweep can move)."""
    return f"checkpoints/{model_key}/seed-{seed}.pt"


def checkpoint_uri(root: str, model_key: str, seed: int) -> str:
    return storage.join(root, checkpoint_path(model_key, seed))


def trunk_snapshot_uri(root: str, trunk_key: str, trunk_seed: int, epoch: int) -> str:
    """Where a trunk's snapshot at ``epoch`` lives (its children at that epoch start from it)."""
    return storage.join(root, "checkpoints", trunk_key, f"trunk-{trunk_seed}", f"epoch-{epoch}.pt")


def models_row_uri(root: str, model_key: str, seed: int) -> str:
    """A new file for one trial's row; the newest row of a trial wins."""
    return table_file(root, "models", new_stem(f"{model_key}__seed-{seed}"))


def trial_spec(config: SweepConfig, plan: ModelPlan, seed: int, threads: float) -> dict[str, Any]:
    """Everything a trial needs, as plain JSON-able data (it travels to a worker)."""
    spec = {
        "sweep": config.name,
        "root": config.root,
        "model_key": plan.model_key,
        "seed": seed,
        "model": asdict(plan.model),
        "train": asdict(config.train),
        "dataset": config.dataset.as_dict(),
        "checkpoint_every": config.checkpoint_every,
        "threads": threads,
        "lineage": plan.lineage(),
    }
    if plan.branch is not None and plan.branch.epoch > 0:
        spec["branch_from"] = trunk_snapshot_uri(config.root, plan.trunk_key, plan.branch.trunk_seed, plan.branch.epoch)
    if plan.prune_from is not None:  # IMP round >= 1: its mask prunes the previous round's first child
        spec["prune_from"] = checkpoint_uri(config.root, plan.prune_from, plan.branch.prune_seed)
        spec["prune_key"] = [plan.prune_from, plan.branch.prune_seed]
        spec["imp_rate"] = plan.branch.rate
    return spec


def trunk_specs(config: SweepConfig, todo: list[tuple[ModelPlan, int]], threads: float) -> list[dict[str, Any]]:
    """One trunk trial per (model config, trunk seed) that a child still to train branches from
    after epoch 0; each trains to the last branch epoch of its config (once: it resumes from its
    snapshots, and checks them)."""
    epochs: dict[tuple[str, int], set[int]] = {}
    model: dict[str, ModelConfig] = {}
    for plan in config.models:
        if plan.branch is not None and plan.branch.epoch > 0:
            epochs.setdefault((plan.trunk_key, plan.branch.trunk_seed), set()).add(plan.branch.epoch)
            model[plan.trunk_key] = plan.model
    needed = {(p.trunk_key, p.branch.trunk_seed) for p, _ in todo if p.branch is not None and p.branch.epoch > 0}
    return [
        {
            "role": "trunk",
            "sweep": config.name,
            "root": config.root,
            "model_key": key,
            "seed": seed,
            "epochs": sorted(epochs[(key, seed)]),
            "model": asdict(model[key]),
            "train": asdict(config.train),
            "dataset": config.dataset.as_dict(),
            "threads": threads,
        }
        for key, seed in sorted(needed)
    ]


def models_row(spec: dict[str, Any], **values: Any) -> dict[str, Any]:
    """A ``models`` table row for the trial ``spec`` (metrics and status in ``values``)."""
    model, lineage = spec["model"], spec.get("lineage") or {}
    trunk = lineage.get("trunk_seed")
    row = {
        "sweep": spec["sweep"],
        "model_key": spec["model_key"],
        **model_columns(model, spec["dataset"], lineage),
        "seed": spec["seed"],
        "init_seed": spec["seed"] if trunk is None else trunk,
        "data_seed": spec["seed"],
        "checkpoint_uri": checkpoint_path(spec["model_key"], spec["seed"]),
        "config_json": json.dumps({"model": model, "train": spec["train"], "dataset": spec["dataset"]}, sort_keys=True),
    }
    row.update(values)
    return row


def train_trial(config: dict[str, Any]) -> None:
    """The Tune function trainable: train (or resume, or find finished) one network, write its row."""
    from ray import tune

    spec = config["trial"]
    if spec.get("role") == "trunk":
        return _train_trunk_trial(spec)
    started_at = utc_now()
    device = setup_worker(spec["threads"])
    dataset = cached_dataset(spec["dataset"], device)
    lineage = spec.get("lineage") or {}
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
        init_seed=lineage.get("trunk_seed"),
        data_seed=spec["seed"],
        branch_epoch=lineage.get("branch_epoch"),
        branch_from=spec.get("branch_from"),
        imp_round=lineage.get("imp_round"),
        mask=next_imp_mask(spec["prune_from"], spec["imp_rate"]) if "prune_from" in spec else None,
        device=device,
        checkpoint_uri=uri,
        checkpoint_every=spec["checkpoint_every"],
        on_epoch=report,
    )
    status = "ok" if result.status == "ok" else "failed"
    error = None if result.status == "ok" else f"{result.status}: {result.error}"
    size = storage.size(uri) if status == "ok" else None
    extra = {}
    if lineage.get("imp_round") is not None and lineage.get("sparsity") is None and result.state_dict is not None:
        # a dataset whose shape only its files tell: the sparsity of the trained weights
        names = prunable_names(ModelConfig(**spec["model"]).build(dataset.num_classes, dataset.in_shape))
        extra["sparsity"] = weight_sparsity(result.state_dict, names)
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
                started_at=started_at,
                finished_at=utc_now(),
                checkpoint_bytes=size,
                **result.metrics,
                **extra,
            )
        ],
    )
    tune.report({"trial_ok": int(status == "ok")})  # the driver learns the outcome without reading the table


def _train_trunk_trial(spec: dict[str, Any]) -> None:
    """A trunk trial: train (or resume, or check) the trunk's snapshots; it writes no row (a NaN
    loss raises, and its children then fail with the reason)."""
    from ray import tune

    device = setup_worker(spec["threads"])
    dataset = cached_dataset(spec["dataset"], device)
    train_trunk(
        ModelConfig(**spec["model"]),
        TrainConfig(**spec["train"]),
        dataset,
        seed=spec["seed"],
        epochs=spec["epochs"],
        snapshot_uri=lambda epoch: trunk_snapshot_uri(spec["root"], spec["model_key"], spec["seed"], epoch),
        device=device,
        on_epoch=lambda epoch, metrics: tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))}),
    )
    tune.report({"trial_ok": 1})


@dataclass
class TrialPlan:
    """What the train stage has to do: trials done (checkpoint verified) and trials to (re)train."""

    done: dict[tuple[str, int], str]  # (model_key, seed) -> checkpoint URI
    todo: list[tuple[ModelPlan, int]]
    damaged: list[str]  # checkpoints of finished trials that are gone or not whole: retrained


def plan_trials(config: SweepConfig) -> TrialPlan:
    """Finished trials whose checkpoint is still whole, and the trials to (re)train (from storage).

    A finished trial is retrained when its checkpoint is gone, has another size than its row
    recorded (truncated, rewritten), or failed to load in a pair task after the trial finished.
    The damaged file itself is left for the trial to replace (it starts over when it cannot load it).
    """
    rows = read_table(config.root, "models")
    keys = {p.model_key for p in config.models}
    ok = {
        (str(r.model_key), int(r.seed)): r
        for r in rows.itertuples(index=False)
        if r.status == "ok" and r.model_key in keys
    }
    unloadable = _unloadable_checkpoints(config.root)
    done, todo, damaged = {}, [], []
    for plan in config.models:
        seeds = [seed for seed in plan.seeds if (plan.model_key, seed) in ok]
        sizes = storage.file_sizes(storage.join(config.root, "checkpoints", plan.model_key)) if seeds else {}
        for seed in plan.seeds:
            row = ok.get((plan.model_key, seed))
            if row is None:
                todo.append((plan, seed))
                continue
            uri = resolve_uri(config.root, row.checkpoint_uri)
            expected, found = row.checkpoint_bytes, sizes.get(storage.basename(uri))
            failed_after = unloadable.get(row.checkpoint_uri) or unloadable.get(uri)
            if (
                found is None
                or (expected is not None and not pd.isna(expected) and found != int(expected))
                or (failed_after is not None and (pd.isna(row.finished_at) or failed_after > row.finished_at))
            ):
                damaged.append(uri)
                todo.append((plan, seed))
            else:
                done[(plan.model_key, seed)] = uri
    return TrialPlan(done, todo, damaged)


def _unloadable_checkpoints(root: str) -> dict[str, Any]:
    """Checkpoint path -> the latest time a pair task could not load it (from failed ``pairs`` rows)."""
    failed = read_table(root, "pairs", columns=["status", "error", "finished_at"])
    failed = failed[(failed["status"] == "failed") & failed["error"].str.contains("CheckpointError", na=False)]
    out: dict[str, Any] = {}
    for error, when in zip(failed["error"], failed["finished_at"], strict=True):
        for uri in re.findall(r"checkpoint (\S+?)(?::| is)", error):
            out[uri] = max(out.get(uri, when), when) if not pd.isna(when) else out.get(uri, when)
    return out


def resolve_uri(root: str, uri: str) -> str:
    """A URI stored in a table: relative to the sweep root (absolute ones, from older versions, as they are)."""
    return uri if not storage.is_relative(uri) else storage.join(root, uri)


@dataclass
class TrainStageSummary:
    total: int
    already_done: int
    ran: int
    failed: int
    seconds: float


def run_train_stage(
    config: SweepConfig,
    plan: TrialPlan | None = None,
    *,
    say: Callable[[str], None] = print,
    on_trial_done: Callable[[str, int, bool], None] | None = None,
) -> TrainStageSummary:
    """Train every (model config, seed) of the sweep that is not done yet; returns counts.

    ``on_trial_done(model_key, seed, ok)`` is called as each trial ends (the pair stage starts
    that trial's pairs at once).
    """
    # Only Tune's JSON log per trial (what ResultGrid reads back); no TensorBoard or CSV files.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    _keep_credentials_out_of_trial_runtime_envs()
    started = time.time()
    plan = plan or plan_trials(config)
    todo = plan.todo
    total = config.n_trials
    for uri in plan.damaged:
        say(f"[train] checkpoint {uri} is missing or not whole: retraining it")
    say(f"[train] {total - len(todo)} of {total} trials already done; {len(todo)} to run")
    if not todo:
        return TrainStageSummary(total, total, 0, 0, time.time() - started)

    cpu, gpu = resolve_resources(config.resources.train, "resources.train", say)
    specs = [trial_spec(config, model_plan, seed, cpu) for model_plan, seed in todo]
    trunks = trunk_specs(config, todo, cpu)
    if trunks:
        specs = _train_trunks(config, trunks, specs, cpu, gpu, say, on_trial_done)
    progress = Progress("train", len(specs), say, unit="trials")

    def finished(spec: dict[str, Any], ok: bool) -> None:
        progress.advance(ok=ok, note=f"{spec['model_key']} seed {spec['seed']}" + ("" if ok else " FAILED"))
        if on_trial_done is not None:
            on_trial_done(spec["model_key"], spec["seed"], ok)

    last_line: dict[tuple[str, int], float] = {}
    epochs = config.train.epochs

    def epoch_done(spec: dict[str, Any], result: dict[str, Any]) -> None:
        trial, now = (spec["model_key"], spec["seed"]), time.monotonic()
        # the clock starts at a trial's first epoch: short trials print only their last one
        if now - last_line.setdefault(trial, now) < EPOCH_LINE_SECONDS and result["epoch"] < epochs:
            return
        last_line[trial] = now
        accuracy = result.get("test_acc")
        say(
            f"[train] {spec['model_key']} seed {spec['seed']}: epoch {result['epoch']}/{epochs}"
            + (f", test accuracy {accuracy:.4f}" if isinstance(accuracy, (int, float)) else "")
        )

    grid = []
    for wave, wave_specs in enumerate(_imp_waves(specs)):
        if wave > 0:  # an IMP round starts once the network it prunes is trained
            wave_specs = _rounds_that_can_start(config, wave_specs, on_trial_done)
            say(f"[train] IMP round {wave}: {len(wave_specs)} trial(s)")
        name = f"train-imp{wave}" if wave else "train"  # one Tune experiment per round, never two of one name
        grid.extend(_fit(config, wave_specs, cpu, gpu, name, finished, epoch_done) if wave_specs else [])
    for result in grid:
        spec = result.config["trial"]
        if result.error is not None:  # a trial that raised: its row with the reason (a NaN loss writes its own)
            write_rows(
                models_row_uri(spec["root"], spec["model_key"], spec["seed"]),
                "models",
                [models_row(spec, status="failed", error=error_text(result.error), **_nan_metrics())],
            )
    outcomes = model_outcomes(read_table(config.root, "models"))
    failed = sum(outcomes.get((p.model_key, seed)) == "failed" for p in config.models for seed in p.seeds)
    say(f"[train] done in {time.time() - started:.0f}s: {total - failed} ok, {failed} failed")
    return TrainStageSummary(total, total - len(todo), len(todo), failed, time.time() - started)


def _fit(
    config: SweepConfig,
    specs: list[dict[str, Any]],
    cpu: float,
    gpu: float,
    name: str,
    finished: Callable[[dict[str, Any], bool], None],
    epoch_done: Callable[[dict[str, Any], dict[str, Any]], None],
) -> Any:
    """One Tune run of ``specs`` (a trial each); returns its ResultGrid."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    token = secrets.token_hex(8)
    _LISTENERS[token] = finished
    _EPOCH_LISTENERS[token] = epoch_done
    tuner = tune.Tuner(
        tune.with_resources(train_trial, {"cpu": cpu, "gpu": gpu}),
        param_space={"trial": tune.grid_search(specs)},
        tune_config=tune.TuneConfig(
            trial_dirname_creator=_trial_dirname, trial_name_creator=_trial_dirname, reuse_actors=REUSE_ACTORS
        ),
        run_config=tune.RunConfig(
            name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=storage.join(config.root, "tune"),
            failure_config=tune.FailureConfig(max_failures=config.train_retries),
            verbose=0,
            callbacks=[_trial_callback(token), JsonLoggerCallback()],
        ),
    )
    try:
        return tuner.fit()
    finally:
        _LISTENERS.pop(token, None)
        _EPOCH_LISTENERS.pop(token, None)


def _imp_waves(specs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The trials in the order they can run: everything but IMP rounds >= 1 first, then round 1, 2, ..."""
    waves: dict[int, list[dict[str, Any]]] = {}
    for spec in specs:
        waves.setdefault((spec.get("lineage") or {}).get("imp_round") or 0, []).append(spec)
    return [waves.get(r, []) for r in range(max(waves, default=0) + 1)]


def _rounds_that_can_start(
    config: SweepConfig, specs: list[dict[str, Any]], on_trial_done: Callable[[str, int, bool], None] | None
) -> list[dict[str, Any]]:
    """The IMP trials of ``specs`` whose previous round's pruned network is trained; the others get
    a ``failed`` row naming it and its error."""
    rows = read_table(config.root, "models")
    newest = {
        (str(k), int(sd)): (st, e)
        for k, sd, st, e in zip(rows["model_key"], rows["seed"], rows["status"], rows["error"], strict=True)
    }
    keep = []
    for spec in specs:
        key, seed = spec["prune_key"]
        status, error = newest.get((key, seed), ("missing", "it was not trained"))
        if status == "ok":
            keep.append(spec)
            continue
        reason = f"the network it prunes ({key} seed {seed}) failed: {error}"
        write_rows(
            models_row_uri(spec["root"], spec["model_key"], spec["seed"]),
            "models",
            [models_row(spec, status="failed", error=reason, **_nan_metrics())],
        )
        if on_trial_done is not None:
            on_trial_done(spec["model_key"], spec["seed"], False)
    return keep


def _train_trunks(
    config: SweepConfig,
    trunks: list[dict[str, Any]],
    specs: list[dict[str, Any]],
    cpu: float,
    gpu: float,
    say: Callable[[str], None],
    on_trial_done: Callable[[str, int, bool], None] | None,
) -> list[dict[str, Any]]:
    """Train (or check) the trunks the children in ``specs`` branch from; returns the children that
    can start. A child of a failed trunk gets a ``failed`` row naming the trunk and its error."""
    say(f"[train] {len(trunks)} trunk(s) to train or check before their children branch")
    progress = Progress("trunks", len(trunks), say, unit="trunks")

    def finished(spec: dict[str, Any], ok: bool) -> None:
        progress.advance(ok=ok, note=f"{spec['model_key']} trunk {spec['seed']}" + ("" if ok else " FAILED"))

    grid = _fit(config, trunks, cpu, gpu, "trunks", finished, lambda spec, result: None)
    failed = {}
    for result in grid:
        spec = result.config["trial"]
        if result.error is not None:
            failed[(spec["model_key"], spec["seed"])] = error_text(result.error)
    if not failed:
        return specs
    keep = []
    trunk_of = {p.model_key: p.trunk_key for p in config.models}
    for spec in specs:
        seed = (spec.get("lineage") or {}).get("trunk_seed")
        error = failed.get((trunk_of.get(spec["model_key"]), seed)) if "branch_from" in spec else None
        if error is None:
            keep.append(spec)
            continue
        write_rows(
            models_row_uri(spec["root"], spec["model_key"], spec["seed"]),
            "models",
            [models_row(spec, status="failed", error=f"its trunk (seed {seed}) failed: {error}", **_nan_metrics())],
        )
        if on_trial_done is not None:
            on_trial_done(spec["model_key"], spec["seed"], False)
    return keep


# Live listeners of running train stages, by token: Tune pickles its callbacks into the experiment
# state, so a callback holds only the token, never the listener (progress, the pair stage's queue).
_LISTENERS: dict[str, Callable[[dict[str, Any], bool], None]] = {}
_EPOCH_LISTENERS: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {}
EPOCH_LINE_SECONDS = 30.0  # a running trial prints its epoch at most this often (its last epoch always)
# Tune's reuse of trial worker processes across trials (benchmarks/train_stage.py measures both: 7.5 s
# -> 0.5 s of overhead per trial on 2 CPUs). Off: a reused worker holds its CPUs from one trial to the
# next, so a pair task that asks for a sliver of a CPU waits for the train stage on a full cluster
# (tests/test_healing.py's pipelining test) -- to be solved with the train stage's redesign (issue 15).
REUSE_ACTORS = False


# Ray Tune copies these from the driver's environment into every trial's runtime environment, which
# Ray writes in plain text to runtime_env_agent.log on every node (found by tests/test_operations.py).
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")


def _keep_credentials_out_of_trial_runtime_envs() -> None:
    """Take the credentials off Tune's list of variables to propagate to trials.

    Trials get credentials as every other worker does, from their node (a local cluster inherits
    the driver's environment). The list is Ray's internal ``class_cache.ENV_VARS_TO_PROPAGATE``
    (Ray 2.60); if a later Ray moves it, this fails loudly rather than leaking silently.
    """
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = set(class_cache.ENV_VARS_TO_PROPAGATE) - set(CREDENTIAL_ENV)


def _notify_epoch(token: str, spec: dict[str, Any], result: dict[str, Any]) -> None:
    listener = _EPOCH_LISTENERS.get(token)
    if listener is not None:
        listener(spec, result)


def _notify(token: str, spec: dict[str, Any], ok: bool) -> None:
    listener = _LISTENERS.get(token)
    if listener is not None:
        listener(spec, ok)


def _trial_callback(token: str) -> Any:
    """A Tune callback that tells the listener registered under ``token`` each trial's outcome."""
    from ray import tune

    class TrialOutcome(tune.Callback):
        def __init__(self, token: str) -> None:
            self.token = token

        def _tell(self, spec: dict[str, Any], ok: bool) -> None:
            _notify(self.token, spec, ok)  # a module-level function: pickled by reference, with no state

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "epoch" in result:  # per-epoch progress of long trials (throttled by the listener)
                _notify_epoch(self.token, trial.config["trial"], result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._tell(trial.config["trial"], bool((trial.last_result or {}).get("trial_ok", 0)))

        def on_trial_error(self, iteration, trials, trial, **info):
            spec = trial.config["trial"]  # its row is written now, before the pair stage acts on it
            if spec.get("role") == "trunk":  # a trunk has no row; its children fail naming it
                self._tell(spec, False)
                return
            write_rows(
                models_row_uri(spec["root"], spec["model_key"], spec["seed"]),
                "models",
                [models_row(spec, status="failed", error="the trial raised; see Tune's error.txt", **_nan_metrics())],
            )
            self._tell(spec, False)

    return TrialOutcome(token)


def _nan_metrics() -> dict[str, float]:
    return {k: math.nan for k in ("train_loss", "train_acc", "test_loss", "test_acc")}


def _trial_dirname(trial: Any) -> str:
    spec = trial.config["trial"]
    return f"{spec['model_key']}_{'trunk' if spec.get('role') == 'trunk' else 'seed'}{spec['seed']}"
