"""What a train task runs inside its Ray worker: one :class:`~repair_ray.sweep.messages.Trial`.

A trial trains (or resumes, or finds finished) its seeds and writes their ``models`` rows; a trunk
trains (or checks) its snapshots; an import checks a network file trained elsewhere, evaluates it
and writes its row. The task is a streaming generator that yields an
:class:`EpochReport` after every epoch and a :class:`TrialOutcome` at the end. Workers are reused
(torch imported and the dataset loaded once per worker process) and stateless: everything comes
in the message, everything goes out to storage.
"""

from __future__ import annotations

import json
import math
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..interpolation import evaluate
from ..io import storage
from ..io.checkpoint import CheckpointError, load_checkpoint
from ..io.networks import NetworkFileError, load_into, load_state_dict
from ..models import ModelConfig
from ..multiseed import train_together
from ..pruning import prunable_names, weight_sparsity
from ..training import TrainConfig, Trainer, next_imp_mask, train_trunk
from .layout import checkpoint_uri, trunk_snapshot_uri
from .messages import EpochReport, Trial, TrialOutcome
from .rows import write_models_row
from .worker import cached_dataset, data_path, node_id, setup_worker, utc_now

Report = Callable[[EpochReport], None]


def _model_config(trial: Trial) -> ModelConfig:
    return ModelConfig(**trial.model, allow_import=trial.allow_import)


def _reporter(report: Report, seed: int) -> Callable[[int, dict[str, Any]], None]:
    """The trainer's ``on_epoch(epoch, metrics)`` of one seed, as :class:`EpochReport` messages."""
    return lambda epoch, metrics: report(EpochReport(seed, int(epoch), _numbers(metrics)))


def run_trial(trial: Trial, report: Report, device: torch.device | None = None) -> dict[int, str | None]:
    """Train (or resume, or find finished) the networks of one trial and write their rows; returns
    each seed's error (None: trained). ``report`` gets an :class:`EpochReport` after every epoch.
    With ``together``, the seeds train together, vectorised (:func:`repair_ray.multiseed.train_together`),
    each with its own checkpoint and row; each seed's numbers do not depend on which or how many
    seeds share its stack. ``device`` replaces the one :func:`setup_worker` picks (a worker of a
    trial of several workers: the GPU Ray Train gave it).

    A NaN loss is the seed's ``failed`` row (with the reason); any other error raises (the driver
    retries the trial, which resumes from its checkpoints)."""
    started_at = utc_now()
    chosen = setup_worker(trial.threads)
    device = chosen if device is None else device
    dataset = cached_dataset(trial.dataset, device, _loader_workers(trial))
    lineage = trial.lineage
    uris = [checkpoint_uri(trial.root, trial.model_key, seed) for seed in trial.seeds]
    resumed_from = [_resumable_epoch(uri) for uri in uris]
    mask = None
    if trial.prune_from is not None and trial.imp_rate is not None:
        mask = next_imp_mask(trial.prune_from, trial.imp_rate)
    trainers = [
        Trainer(
            _model_config(trial),
            TrainConfig(**trial.train),
            dataset,
            seed=seed,
            init_seed=lineage.get("trunk_seed"),
            data_seed=seed,
            branch_epoch=lineage.get("branch_epoch"),
            imp_round=lineage.get("imp_round"),
            mask=mask,
            device=device,
            compile=trial.compile,
            # a stack computes in NCHW, and channels-last BatchNorm nets fail under vmap on CUDA
            channels_last=False if trial.together else None,
        )
        for seed in trial.seeds
    ]
    reporters = [_reporter(report, seed) for seed in trial.seeds]
    if not trial.together:
        results = [
            trainer.run(
                checkpoint_uri=uri,
                checkpoint_every=trial.checkpoint_every,
                on_epoch=reporter,
                branch_from=trial.branch_from,
            )
            for trainer, uri, reporter in zip(trainers, uris, reporters, strict=True)
        ]
    else:  # even a single seed: a network trained together is always computed the same way
        results = train_together(
            trainers,
            checkpoint_uris=uris,
            checkpoint_every=trial.checkpoint_every,
            on_epoch=reporters,
            branch_from=[trial.branch_from] * len(trainers),
        )
    return {
        seed: _write_result_row(trial, seed, result, dataset, device, resumed, started_at)
        for seed, result, resumed in zip(trial.seeds, results, resumed_from, strict=True)
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
    trial: Trial, seed: int, result: Any, dataset: Any, device: Any, resumed_from: int, started_at: Any
) -> str | None:
    """Write the ``models`` row of one trained seed (a :class:`TrainResult`); returns its error (None: ok).

    Of a network trained by several workers only rank 0 writes (every rank returns the error)."""
    uri = checkpoint_uri(trial.root, trial.model_key, seed)
    ok = result.status == "ok"
    error = None if ok else f"{result.status}: {result.error}"
    if not _is_first_worker():
        return error
    extra = {}
    lineage = trial.lineage
    if lineage.get("imp_round") is not None and lineage.get("sparsity") is None and result.state_dict is not None:
        # a dataset whose shape only its files tell: the sparsity of the trained weights
        names = prunable_names(_model_config(trial).build(dataset.num_classes, dataset.in_shape))
        extra["sparsity"] = weight_sparsity(result.state_dict, names)
    write_models_row(
        trial,
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
        workers=trial.workers,
        data_path=data_path(dataset),
        **result.metrics,
        **extra,
    )
    return error


def _loader_workers(trial: Trial) -> int:
    """DataLoader processes that decode a streamed dataset's images for a task: one per CPU Ray gave it."""
    return max(1, int(trial.threads))


def _is_first_worker() -> bool:
    """Whether this process writes a trial's rows: always, but among a trial's workers only rank 0."""
    distributed = torch.distributed
    return not (distributed.is_available() and distributed.is_initialized()) or distributed.get_rank() == 0


def run_trunk(trial: Trial, report: Report) -> dict[int, str | None]:
    """A trunk trial: train (or resume, or check) the trunk's snapshots; it writes no row (a NaN
    loss raises, and its children then fail with the reason)."""
    device = setup_worker(trial.threads)
    dataset = cached_dataset(trial.dataset, device, _loader_workers(trial))
    (seed,) = trial.seeds
    train_trunk(
        _model_config(trial),
        TrainConfig(**trial.train),
        dataset,
        seed=seed,
        epochs=list(trial.epochs),
        snapshot_uri=lambda epoch: trunk_snapshot_uri(trial.root, trial.model_key, seed, epoch),
        device=device,
        on_epoch=_reporter(report, seed),
    )
    return {seed: None}


def run_import(trial: Trial, report: Report) -> dict[int, str | None]:
    """An import: load the network file (its bytes must still have the hash the sweep named it by),
    check that it fits the network, evaluate it and write its ``models`` row. The metrics are
    measured as the pair stage measures its endpoints (``eval.train_samples`` of the train split,
    ``eval.test_samples`` of the test split, drawn with the same seed, ``eval.test_flip``). A file
    that cannot be used is the network's ``failed`` row with the reason (not retried: reading it
    again would not help)."""
    source = trial.source
    if source is None:
        raise ValueError(f"{trial.name} is an import without its network file")
    started_at = utc_now()
    device = setup_worker(trial.threads)
    dataset = cached_dataset(trial.dataset, device, _loader_workers(trial))
    (seed,) = trial.seeds
    try:
        state = load_state_dict(source.uri, sha256=source.sha256)
        model = _model_config(trial).build(dataset.num_classes, dataset.in_shape)
        model = load_into(model, state, source.uri).to(device).eval()
    except NetworkFileError as error:
        error_line = f"{type(error).__name__}: {error}"
        write_models_row(
            trial,
            seed,
            status="failed",
            error=error_line,
            device=str(device),
            node_id=node_id(),
            started_at=started_at,
            finished_at=utc_now(),
            **dict.fromkeys(("train_loss", "train_acc", "test_loss", "test_acc"), math.nan),
        )
        return {seed: error_line}
    how = trial.evaluation
    metrics = {}
    for split in ("train", "test"):
        data = getattr(dataset, split).subset(how.get(f"{split}_samples"), seed=how.get("seed", 0))
        flip = split == "test" and bool(how.get("flip"))
        result = evaluate(model, data, batch_size=how.get("batch_size", 1000), flip=flip)
        metrics[f"{split}_loss"], metrics[f"{split}_acc"] = result["loss"], result["acc"]
    report(EpochReport(seed, 0, metrics))
    write_models_row(
        trial,
        seed,
        data_path=data_path(dataset),
        status="ok",
        device=str(device),
        node_id=node_id(),
        started_at=started_at,
        finished_at=utc_now(),
        **metrics,
    )
    return {seed: None}


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


_END = object()


class TrialStopped(Exception):
    """The task of a trial stopped listening (it was cancelled): its training thread stops too."""


def trial_task(trial: Trial) -> Iterator[EpochReport | TrialOutcome]:
    """A trial as a Ray streaming generator: yields each :class:`EpochReport` as it happens, then
    its :class:`TrialOutcome`. Training runs in a thread of the task (its epoch callback cannot
    yield); an error there is raised here, so the driver sees the task fail. When the generator is
    closed early, the thread stops at its next epoch (after that epoch's checkpoint)."""
    reports: queue.Queue[EpochReport | object] = queue.Queue()
    result: dict[str, Any] = {}
    stopped = threading.Event()

    def report(item: EpochReport) -> None:
        if stopped.is_set():
            raise TrialStopped(f"{trial.name} was stopped")
        reports.put(item)

    def work() -> None:
        try:
            run = {"trunk": run_trunk, "import": run_import}.get(trial.role, run_trial)
            result["outcomes"] = run(trial, report)
        except BaseException as error:  # noqa: BLE001 - re-raised in the task below
            result["error"] = error
        finally:
            reports.put(_END)

    thread = threading.Thread(target=work, name="trial", daemon=True)
    thread.start()
    try:
        while isinstance(item := reports.get(), EpochReport):
            yield item
    finally:
        stopped.set()
    thread.join()
    if "error" in result:
        raise result["error"]
    yield TrialOutcome(result["outcomes"])
