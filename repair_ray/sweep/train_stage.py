"""Train stage: Ray tasks that train (model config, seed)s, resumable from storage.

"Done" is decided from storage: a trial is done when its row in the ``models`` table says ``ok``
and its checkpoint is still there, whole (the size its row recorded); a damaged or deleted
checkpoint is retrained (training is deterministic, so the new network equals the old one bit for
bit on the CPU). A re-run therefore trains what is missing only; a trial that was interrupted
resumes from its own last checkpoint (written every ``train.checkpoint_every`` epochs and at the
end), which is exact.

Each trial is one Ray task (a streaming generator: it reports every epoch, then its outcome) on a
reused worker process, which imports torch and loads the dataset once; the driver keeps as many
trials in flight as the cluster has slots and releases the trials that wait for others (children
for their trunk, an IMP round for the network it prunes) as those end. A task releases its CPUs
when it ends, so pair tasks get them as soon as training no longer fills the cluster.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from ..io import storage
from ..io.checkpoint import CheckpointError, load_checkpoint
from ..io.tables import new_stem, read_table, table_file, write_rows
from ..models import ModelConfig
from ..multiseed import train_together
from ..pruning import prunable_names, weight_sparsity
from ..training import TrainConfig, Trainer, next_imp_mask, train_trunk
from .cluster import ClusterShape, cluster_shape, named, resolve_resources, tasks_in_flight
from .config import SweepConfig
from .planning import ModelPlan
from .progress import Progress
from .rows import model_columns
from .worker import cached_dataset, error_text, error_trace, node_id, setup_worker, utc_now


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


def trial_spec(
    config: SweepConfig, plan: ModelPlan, seeds: list[int], threads: float, together: bool | None = None
) -> dict[str, Any]:
    """Everything a trial needs, as plain JSON-able data (it travels to a worker): the ``seeds`` of
    one model config that it trains, ``together`` in the vectorised loop (default: when there are
    several) or one by one."""
    spec = {
        "sweep": config.name,
        "root": config.root,
        "model_key": plan.model_key,
        "seeds": list(seeds),
        "together": len(seeds) > 1 if together is None else bool(together),
        "model": asdict(plan.model),
        "allow_import": list(config.allow_import),  # what the driver was allowed to import, not the worker's env
        "train": asdict(config.train),
        "dataset": config.dataset.as_dict(),
        "checkpoint_every": config.checkpoint_every,
        "compile": config.compile,
        "threads": threads,
        "lineage": plan.lineage(),
    }
    if plan.branch is not None and plan.branch.epoch > 0:
        spec["branch_from"] = trunk_snapshot_uri(config.root, plan.trunk_key, plan.branch.trunk_seed, plan.branch.epoch)
        spec["trunk"] = [plan.trunk_key, plan.branch.trunk_seed]
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
            "seeds": [seed],
            "epochs": sorted(epochs[(key, seed)]),
            "model": asdict(model[key]),
            "allow_import": list(config.allow_import),
            "train": asdict(config.train),
            "dataset": config.dataset.as_dict(),
            "threads": threads,
        }
        for key, seed in sorted(needed)
    ]


def models_row(spec: dict[str, Any], seed: int, **values: Any) -> dict[str, Any]:
    """The ``models`` table row of ``seed`` of the trial ``spec`` (metrics and status in ``values``)."""
    model, lineage = spec["model"], spec.get("lineage") or {}
    trunk = lineage.get("trunk_seed")
    row = {
        "sweep": spec["sweep"],
        "model_key": spec["model_key"],
        **model_columns(model, spec["dataset"], lineage),
        "seed": seed,
        "init_seed": seed if trunk is None else trunk,
        "data_seed": seed,
        "checkpoint_uri": checkpoint_path(spec["model_key"], seed),
        "config_json": json.dumps({"model": model, "train": spec["train"], "dataset": spec["dataset"]}, sort_keys=True),
        "seeds_in_trial": len(spec["seeds"]),
        "trained_together": bool(spec.get("together")),
        "compiled": bool(spec.get("compile")),
    }
    row.update(values)
    return row


def failed_rows(spec: dict[str, Any], error: str, seeds: list[int] | None = None, trace: str | None = None) -> None:
    """Write a ``failed`` row with the reason (and its traceback) for each of ``seeds`` (default: the
    trial's) of ``spec``."""
    for seed in spec["seeds"] if seeds is None else seeds:
        write_rows(
            models_row_uri(spec["root"], spec["model_key"], seed),
            "models",
            [models_row(spec, seed, status="failed", error=error, error_trace=trace, **_nan_metrics())],
        )


Report = Callable[[dict[str, Any]], None]


def run_trial(spec: dict[str, Any], report: Report) -> dict[int, str | None]:
    """Train (or resume, or find finished) the networks of one trial and write their rows; returns
    each seed's error (None: trained). ``report`` gets ``{"seed", "epoch", <metrics>}`` after every
    epoch. With ``together``, the seeds train together, vectorised
    (:func:`repair_ray.multiseed.train_together`), each with its own checkpoint and row; each seed's
    numbers do not depend on which or how many seeds share its stack.

    A NaN loss is the seed's ``failed`` row (with the reason); any other error raises (the driver
    retries the trial, which resumes from its checkpoints)."""
    started_at = utc_now()
    device = setup_worker(spec["threads"])
    dataset = cached_dataset(spec["dataset"], device)
    lineage = spec.get("lineage") or {}
    seeds = spec["seeds"]
    uris = [checkpoint_uri(spec["root"], spec["model_key"], seed) for seed in seeds]
    resumed_from = [_resumable_epoch(uri) for uri in uris]
    mask = next_imp_mask(spec["prune_from"], spec["imp_rate"]) if "prune_from" in spec else None
    trainers = [
        Trainer(
            ModelConfig(**spec["model"], allow_import=spec.get("allow_import", ())),
            TrainConfig(**spec["train"]),
            dataset,
            seed=seed,
            init_seed=lineage.get("trunk_seed"),
            data_seed=seed,
            branch_epoch=lineage.get("branch_epoch"),
            imp_round=lineage.get("imp_round"),
            mask=mask,
            device=device,
            compile=bool(spec.get("compile")),
            # a stack computes in NCHW, and channels-last BatchNorm nets fail under vmap on CUDA
            channels_last=False if spec.get("together") else None,
        )
        for seed in seeds
    ]
    reporters = [lambda epoch, metrics, seed=seed: report({"seed": seed, **_numbers(metrics)}) for seed in seeds]
    branch_from = spec.get("branch_from")
    if not spec.get("together"):
        results = [
            trainer.run(
                checkpoint_uri=uri,
                checkpoint_every=spec["checkpoint_every"],
                on_epoch=reporter,
                branch_from=branch_from,
            )
            for trainer, uri, reporter in zip(trainers, uris, reporters, strict=True)
        ]
    else:  # even a single seed: a network trained together is always computed the same way
        results = train_together(
            trainers,
            checkpoint_uris=uris,
            checkpoint_every=spec["checkpoint_every"],
            on_epoch=reporters,
            branch_from=[branch_from] * len(trainers),
        )
    return {
        seed: _write_result_row(spec, seed, result, dataset, device, resumed, started_at)
        for seed, result, resumed in zip(seeds, results, resumed_from, strict=True)
    }


def _resumable_epoch(uri: str) -> int:
    """The epoch a trial resumes from (0: none); a checkpoint that cannot be read is removed (the
    trial starts over)."""
    if not storage.exists(uri):
        return 0
    try:
        return int(load_checkpoint(uri).meta.get("epoch", 0))
    except CheckpointError:
        storage.remove(uri, missing_ok=True)
        return 0


def _write_result_row(
    spec: dict[str, Any], seed: int, result: Any, dataset: Any, device: Any, resumed_from: int, started_at: Any
) -> str | None:
    """Write the ``models`` row of one trained seed (a :class:`TrainResult`); returns its error (None: ok)."""
    uri = checkpoint_uri(spec["root"], spec["model_key"], seed)
    lineage = spec.get("lineage") or {}
    ok = result.status == "ok"
    error = None if ok else f"{result.status}: {result.error}"
    extra = {}
    if lineage.get("imp_round") is not None and lineage.get("sparsity") is None and result.state_dict is not None:
        # a dataset whose shape only its files tell: the sparsity of the trained weights
        names = prunable_names(
            ModelConfig(**spec["model"], allow_import=spec.get("allow_import", ())).build(
                dataset.num_classes, dataset.in_shape
            )
        )
        extra["sparsity"] = weight_sparsity(result.state_dict, names)
    write_rows(
        models_row_uri(spec["root"], spec["model_key"], seed),
        "models",
        [
            models_row(
                spec,
                seed,
                epochs=result.epochs,
                train_seconds=result.seconds,
                status="ok" if ok else "failed",
                error=error,
                resumed_from_epoch=resumed_from,
                device=str(device),
                node_id=node_id(),
                started_at=started_at,
                finished_at=utc_now(),
                checkpoint_bytes=storage.size(uri) if ok else None,
                history_json=json.dumps(result.history) if result.history is not None else None,
                **result.metrics,
                **extra,
            )
        ],
    )
    return error


def run_trunk(spec: dict[str, Any], report: Report) -> dict[int, str | None]:
    """A trunk trial: train (or resume, or check) the trunk's snapshots; it writes no row (a NaN
    loss raises, and its children then fail with the reason)."""
    device = setup_worker(spec["threads"])
    dataset = cached_dataset(spec["dataset"], device)
    (seed,) = spec["seeds"]
    train_trunk(
        ModelConfig(**spec["model"], allow_import=spec.get("allow_import", ())),
        TrainConfig(**spec["train"]),
        dataset,
        seed=seed,
        epochs=spec["epochs"],
        snapshot_uri=lambda epoch: trunk_snapshot_uri(spec["root"], spec["model_key"], seed, epoch),
        device=device,
        on_epoch=lambda epoch, metrics: report({"seed": seed, **_numbers(metrics)}),
    )
    return {seed: None}


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


_END = object()


class TrialStopped(Exception):
    """The task of a trial stopped listening (it was cancelled): its training thread stops too."""


def trial_task(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A trial as a Ray streaming generator: yields each epoch's report as it happens, then
    ``{"outcomes": {seed: error or None}}``. Training runs in a thread of the task (its epoch
    callback cannot yield); an error there is raised here, so the driver sees the task fail. When
    the generator is closed early, the thread stops at its next epoch (after that epoch's checkpoint)."""
    reports: queue.Queue = queue.Queue()
    result: dict[str, Any] = {}
    stopped = threading.Event()

    def report(item: dict[str, Any]) -> None:
        if stopped.is_set():
            raise TrialStopped(f"{_name(spec)} was stopped")
        reports.put(item)

    def work() -> None:
        try:
            result["outcomes"] = (run_trunk if spec.get("role") == "trunk" else run_trial)(spec, report)
        except BaseException as error:  # noqa: BLE001 - re-raised in the task below
            result["error"] = error
        finally:
            reports.put(_END)

    thread = threading.Thread(target=work, name="trial", daemon=True)
    thread.start()
    try:
        while (item := reports.get()) is not _END:
            yield item
    finally:
        stopped.set()
    thread.join()
    if "error" in result:
        raise result["error"]
    yield {"outcomes": result["outcomes"]}


def make_remote_trial_task(cpu: float, gpu: float) -> Any:
    """The trial task as a Ray remote function: reused worker processes (torch imported and the
    dataset loaded once per worker, not once per trial); the driver does the retries (a retried
    trial resumes from its checkpoints)."""
    import ray

    return ray.remote(num_cpus=cpu, num_gpus=gpu, max_calls=0, max_retries=0, num_returns="streaming")(trial_task)


@dataclass
class TrialPlan:
    """What the train stage has to do: trials done (checkpoint verified) and trials to (re)train."""

    done: dict[tuple[str, int], str]  # (model_key, seed) -> checkpoint URI
    todo: list[tuple[ModelPlan, int]]
    damaged: list[str]  # checkpoints of finished trials that are gone or not whole: retrained
    # how each damaged network was trained, (model_key, seed) -> trained together: it is retrained so
    together: dict[tuple[str, int], bool] = field(default_factory=dict)


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
    done, todo, damaged, together = {}, [], [], {}
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
                together[(plan.model_key, seed)] = getattr(row, "trained_together", None) is True
            else:
                done[(plan.model_key, seed)] = uri
    return TrialPlan(done, todo, damaged, together)


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
    remote_task: Any = None,
) -> TrainStageSummary:
    """Train every (model config, seed) of the sweep that is not done yet; returns counts.

    ``on_trial_done(model_key, seed, ok)`` is called as each network ends (the pair stage starts
    that network's pairs at once). ``remote_task`` replaces the Ray remote function (tests inject
    failures with it).
    """
    import ray

    started = time.time()
    plan = plan or plan_trials(config)
    todo = plan.todo
    total = config.n_trials
    for uri in plan.damaged:
        say(f"[train] checkpoint {uri} is missing or not whole: retraining it")
    say(f"[train] {total - len(todo)} of {total} trials already done; {len(todo)} to run")
    if not todo:
        return TrainStageSummary(total, total, 0, 0, time.time() - started)

    shape = cluster_shape()
    cpu, gpu = resolve_resources(config.resources.train, "resources.train", say, shape)
    limit = tasks_in_flight(config.max_trials_in_flight, cpu, gpu, shape)
    groups = _groups(todo, config, plan.together, gpu, _stack_slots(config, cpu, gpu, shape))
    specs = [trial_spec(config, model_plan, seeds, cpu, together) for model_plan, seeds, together in groups]
    trunks = trunk_specs(config, todo, cpu)
    if trunks:
        say(f"[train] {len(trunks)} trunk(s) to train or check before their children branch")
    progress = Progress("train", len(todo), say, unit="trials")
    trunk_progress = Progress("trunks", len(trunks), say, unit="trunks")
    epochs = config.train.epochs
    last_line: dict[tuple[str, int], float] = {}

    def epoch_done(spec: dict[str, Any], report: dict[str, Any]) -> None:
        trial, now = (spec["model_key"], report["seed"]), time.monotonic()
        # the clock starts at a trial's first epoch: short trials print only their last one
        if now - last_line.setdefault(trial, now) < EPOCH_LINE_SECONDS and report["epoch"] < epochs:
            return
        last_line[trial] = now
        accuracy = report.get("test_acc")
        what = "trunk" if spec.get("role") == "trunk" else "seed"
        say(
            f"[train] {spec['model_key']} {what} {report['seed']}: epoch {int(report['epoch'])}/{epochs}"
            + (f", test accuracy {accuracy:.4f}" if isinstance(accuracy, (int, float)) else "")
        )

    def seed_done(spec: dict[str, Any], seed: int, ok: bool) -> None:
        if spec.get("role") == "trunk":
            trunk_progress.advance(ok=ok, note=f"{spec['model_key']} trunk {seed}" + ("" if ok else " FAILED"))
            return
        progress.advance(ok=ok, note=f"{spec['model_key']} seed {seed}" + ("" if ok else " FAILED"))
        if on_trial_done is not None:
            on_trial_done(spec["model_key"], seed, ok)

    scheduler = _Scheduler(trunks + specs, seed_done)
    task = remote_task or make_remote_trial_task(cpu, gpu)
    running: dict[Any, _Running] = {}
    try:
        while scheduler.ready or running:
            while scheduler.ready and len(running) < limit:
                spec = scheduler.ready.popleft()
                running[named(task, task_name(spec)).remote(spec)] = _Running(spec)
            ready, _ = ray.wait(list(running), num_returns=1)
            for gen in ready:
                trial = running.pop(gen)
                try:
                    item = ray.get(next(gen))
                except StopIteration:  # ended without its outcome: cannot happen unless the task is replaced
                    item = {"outcomes": {}}
                except Exception as error:  # noqa: BLE001 - the trial raised, or its worker died
                    if trial.attempts < config.train_retries:
                        trial.attempts += 1
                        say(f"[train] {_name(trial.spec)} failed ({error_text(error)}): retrying from its checkpoint")
                        running[named(task, task_name(trial.spec)).remote(trial.spec)] = trial
                    else:
                        scheduler.failed(trial.spec, error_text(error), error_trace(error))
                    continue
                if "outcomes" in item:
                    scheduler.finished(trial.spec, {int(k): v for k, v in item["outcomes"].items()})
                else:
                    epoch_done(trial.spec, item)
                    running[gen] = trial  # more to come
    finally:
        for gen in running:  # interrupted: the trials in flight stop; they resume from their checkpoints
            ray.cancel(gen, force=True)
    failed = progress.failed
    say(f"[train] done in {time.time() - started:.0f}s: {total - failed} ok, {failed} failed")
    if config.mlflow_uri:  # from the driver, after the fact: see repair_ray.sweep.tracking
        from .tracking import log_trials

        log_trials(config.mlflow_uri, config.root, config.name, [(p.model_key, s) for p, s in todo], say)
    return TrainStageSummary(total, total - len(todo), len(todo), failed, time.time() - started)


@dataclass
class _Running:
    spec: dict[str, Any]
    attempts: int = 0


def task_name(spec: dict[str, Any]) -> str:
    """The trial's name in the Ray dashboard, state API and log prefixes: ``train <model_key> seeds 0,1``
    (``trunk <model_key> seed 0`` for a trunk)."""
    if spec.get("role") == "trunk":
        return f"trunk {spec['model_key']} seed {spec['seeds'][0]}"
    seeds = ",".join(str(s) for s in spec["seeds"])
    return f"train {spec['model_key']} seed{'s' if len(spec['seeds']) > 1 else ''} {seeds}"


def _name(spec: dict[str, Any]) -> str:
    what = "trunk" if spec.get("role") == "trunk" else "seed"
    return f"{spec['model_key']} {what} {', '.join(str(s) for s in spec['seeds'])}"


def _groups(
    todo: list[tuple[ModelPlan, int]],
    config: SweepConfig,
    healed: dict[tuple[str, int], bool],
    gpu: float = 0.0,
    slots: int = 1,
) -> list[tuple[ModelPlan, list[int], bool]]:
    """The trials to run, in plan order: the seeds to train of each model config,
    :meth:`SweepConfig.stack_size` of them to a trial trained together when that is more than 1
    (``train.seeds_per_trial``; ``auto`` fills a GPU when trials get ``gpu``, sharing the seeds
    over the ``slots`` trials that run at once), else one to a trial trained alone; a damaged
    network is retrained the way it was trained (``healed``), whatever the config says now (a
    stack of any size computes each seed the same way). Each trial: (model config, seeds, together)."""
    per_slot = -(-len(todo) // max(slots, 1))
    seeds: dict[tuple[str, bool], list[int]] = {}
    plans: dict[str, ModelPlan] = {}
    for plan, seed in todo:
        together = healed.get((plan.model_key, seed), config.stack_size(plan, gpu, per_slot) > 1)
        seeds.setdefault((plan.model_key, together), []).append(seed)
        plans[plan.model_key] = plan
    out = []
    for (key, together), group in seeds.items():
        size = config.stack_size(plans[key], gpu, per_slot)
        step = (size if size > 1 else DEFAULT_STACK) if together else 1
        out += [(plans[key], group[i : i + step], together) for i in range(0, len(group), step)]
    return out


def _stack_slots(config: SweepConfig, cpu: float, gpu: float, shape: ClusterShape) -> int:
    """Over how many trials at once ``seeds_per_trial: auto`` shares the seeds: ``max_trials_in_flight``,
    else what the cluster runs at once at its maximum size, or, where an autoscaler does not say its
    size, what is up now (at least 1: one stack is no slower to start than nodes are to come)."""
    if config.max_trials_in_flight is None and shape.maximum is None:
        shape = dataclasses.replace(shape, maximum=shape.current)
    return tasks_in_flight(config.max_trials_in_flight, cpu, gpu, shape)


DEFAULT_STACK = 16  # seeds to a trial when networks trained together are retrained under seeds_per_trial: 1


class _Scheduler:
    """Which trials can start: a trial waits for what it needs (a child for its trunk, an IMP round
    for the network it prunes) and starts when that ends well; when that fails, the trial's seeds
    get ``failed`` rows naming it (and what waits for them fails in turn)."""

    def __init__(
        self,
        specs: list[dict[str, Any]],
        seed_done: Callable[[dict[str, Any], int, bool], None],
    ) -> None:
        self.ready: collections.deque[dict[str, Any]] = collections.deque()
        self.seed_done = seed_done
        self.waiting: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        self.missing: dict[int, int] = {}  # id(spec) -> how many of its needs have not ended yet
        pending = {need for spec in specs for need in _provides(spec)}
        for spec in specs:
            needs = [n for n in _needs(spec) if n in pending]  # a network trained before is there already
            for need in needs:
                self.waiting.setdefault(need, []).append(spec)
            self.missing[id(spec)] = len(needs)
            if not needs:
                self.ready.append(spec)
        self.ready = collections.deque(sorted(self.ready, key=lambda s: s.get("role") != "trunk"))  # trunks first

    def finished(self, spec: dict[str, Any], errors: dict[int, str | None]) -> None:
        """The trial ``spec`` ended: each seed's error (None: trained); what waits for it goes on."""
        for need, seed in zip(_provides(spec), spec["seeds"], strict=True):
            error = errors.get(seed, "the trial ended without its outcome")
            self.seed_done(spec, seed, error is None)
            if error is not None:
                what = "its trunk (seed" if need[0] == "trunk" else f"the network it prunes ({need[1]} seed"
                error = f"{what} {seed}) failed: {error}"
            self._resolve(need, error)

    def failed(self, spec: dict[str, Any], error: str, trace: str | None = None) -> None:
        """The trial raised more often than retries allow: its seeds fail with the reason."""
        if spec.get("role") != "trunk":  # a trunk has no row; its children fail naming it
            failed_rows(spec, error, trace=trace)
        self.finished(spec, {seed: error for seed in spec["seeds"]})

    def _resolve(self, need: tuple[str, str, int], error: str | None) -> None:
        for spec in self.waiting.pop(need, []):
            if id(spec) not in self.missing:
                continue  # failed already, through another of its needs
            if error is not None:
                del self.missing[id(spec)]
                failed_rows(spec, error)
                self.finished(spec, {seed: error for seed in spec["seeds"]})
                continue
            self.missing[id(spec)] -= 1
            if self.missing[id(spec)] == 0:
                del self.missing[id(spec)]
                self.ready.appendleft(spec) if spec.get("role") == "trunk" else self.ready.append(spec)


def _provides(spec: dict[str, Any]) -> list[tuple[str, str, int]]:
    kind = "trunk" if spec.get("role") == "trunk" else "model"
    return [(kind, spec["model_key"], seed) for seed in spec["seeds"]]


def _needs(spec: dict[str, Any]) -> list[tuple[str, str, int]]:
    needs = []
    if "trunk" in spec:
        needs.append(("trunk", spec["trunk"][0], int(spec["trunk"][1])))
    if "prune_key" in spec:
        needs.append(("model", spec["prune_key"][0], int(spec["prune_key"][1])))
    return needs


EPOCH_LINE_SECONDS = 30.0  # a running trial prints its epoch at most this often (its last epoch always)


def _nan_metrics() -> dict[str, float]:
    return {k: math.nan for k in ("train_loss", "train_acc", "test_loss", "test_acc")}
