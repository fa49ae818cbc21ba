"""Which trainers train together, and the loop over their epochs: :func:`train_together` resumes or
starts each run, groups the runs at one epoch into stacks (:class:`~repair_ray.multiseed.stack.Stack`)
and finishes each epoch and run exactly as :meth:`Trainer.run <repair_ray.training.Trainer.run>` does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..datasets import memory_only
from ..training import NonFiniteLossError, Trainer, TrainResult
from .stack import SHARED_STATE, Stack, StackedForward

Uri = str | os.PathLike[str]
OnEpoch = Callable[[int, dict[str, float]], None]


def train_together(
    trainers: Sequence[Trainer],
    *,
    checkpoint_uris: Sequence[Uri | None] | None = None,
    checkpoint_every: int | None = 1,
    on_epoch: Sequence[OnEpoch | None] | None = None,
    branch_from: Sequence[Uri | None] | None = None,
) -> list[TrainResult]:
    """Train the remaining epochs of every trainer, all in one vectorised loop; returns what each
    trainer's :meth:`Trainer.run` would return, in order.

    ``checkpoint_uris``, ``on_epoch`` and ``branch_from`` hold one entry (or None) per trainer, and
    ``checkpoint_every`` applies to all: each trainer resumes from its checkpoint when there is one,
    else starts afresh (from its trunk snapshot, pruned by its mask), and after each epoch is
    evaluated, checkpointed and reported exactly as ``run`` does it.

    Trainers at different epochs (one resumed, others fresh) are caught up: each round trains one
    epoch of those furthest behind, so the laggards join the others once they reach them. Trainers
    at one epoch whose optimizer states differ in layout (momentum buffers or not, Adam step counts)
    train as separate stacks.

    A seed whose loss becomes NaN or infinite ends with status ``nan_loss`` and the error a lone
    run gives, its weights and optimizer state left as they were before that step; it leaves the
    stack and the others go on. ``seconds`` is each seed's share of the compute: the wall time of
    every stacked epoch (stacking, steps, writing back) divided by the seeds in the stack, plus its
    own evaluations. As for a lone run, the epoch a seed fails in is not counted.

    Raises:
        ValueError: when the trainers differ in network, training config, dataset, device or
            memory format, when one is listed twice, when a per-trainer list has another length, or
            when one trains data-parallel (a stack is one process's).
        RuntimeError: from a callback or the network, as ``run`` would (the checkpoints written
            until then stay, so calling again resumes).
    """
    trainers = list(trainers)
    _check_together(trainers)
    uris = _per_trainer(checkpoint_uris, len(trainers), "checkpoint_uris")
    callbacks = _per_trainer(on_epoch, len(trainers), "on_epoch")
    trunks = _per_trainer(branch_from, len(trainers), "branch_from")
    results: dict[int, TrainResult] = {}
    final: dict[int, dict[str, float] | None] = dict.fromkeys(range(len(trainers)))
    for i, trainer in enumerate(trainers):
        done = trainer.prepare_run(uris[i], trunks[i])
        if done is not None:
            results[i] = done
    epochs = trainers[0].train_config.epochs

    def unfinished() -> list[int]:
        return [i for i, t in enumerate(trainers) if i not in results and t.epoch < epochs]

    forward = StackedForward(trainers[0])  # one program for every stack of this call (compiled once)
    while active := unfinished():
        behind = min(trainers[i].epoch for i in active)
        for cohort in _cohorts([i for i in active if trainers[i].epoch == behind], trainers):
            outcomes = Stack([trainers[i] for i in cohort], forward).train_epoch()
            for i, outcome in zip(cohort, outcomes, strict=True):
                if isinstance(outcome, NonFiniteLossError):
                    results[i] = trainers[i].failed_run(outcome)
                else:
                    final[i] = trainers[i].finish_epoch(
                        outcome, checkpoint_uri=uris[i], checkpoint_every=checkpoint_every, on_epoch=callbacks[i]
                    )
    for i, trainer in enumerate(trainers):
        if i not in results:
            results[i] = trainer.finish_run(final[i], uris[i])
    return [results[i] for i in range(len(trainers))]


def _check_together(trainers: list[Trainer]) -> None:
    """Refuse trainers that cannot share one stack (see :func:`train_together`)."""
    if not trainers:
        raise ValueError("train_together needs at least one trainer")
    first = trainers[0]
    seen: dict[int, int] = {}
    for i, trainer in enumerate(trainers):
        if id(trainer) in seen:
            raise ValueError(f"trainers[{i}] is trainers[{seen[id(trainer)]}] again: each run can train only once")
        seen[id(trainer)] = i
        if trainer.data_parallel:
            raise ValueError(
                f"trainers[{i}] trains data-parallel over {trainer.world.world_size} processes, but train_together "
                "stacks seeds in one process: build its trainers with distributed=False, or train it alone "
                "(Trainer.run)"
            )
        for field in ("model_config", "train_config", "device", "channels_last", "compile"):
            mine, theirs = getattr(trainer, field), getattr(first, field)
            if mine != theirs:
                raise ValueError(
                    f"trainers[{i}].{field} is {mine!r} but trainers[0]'s is {theirs!r}: "
                    "only runs of one network, training config, device and compile setting train together"
                )
        if trainer.device.type == "cuda" and trainer.channels_last and _has_batchnorm(trainer.model):
            raise ValueError(
                f"trainers[{i}] is a channels-last network with BatchNorm on CUDA: stacked, it fails inside "
                "PyTorch's vmap (NYI: querying is_contiguous inside of vmap for memory_format other than "
                "torch.contiguous_format; seen on an H200, torch 2.11); build its trainers with channels_last=False "
                "(a stack computes in NCHW anyway)"
            )
        if not _same_data(trainer, first):
            raise ValueError(
                f"trainers[{i}] trains on other data ({trainer.dataset.name}) than trainers[0] "
                f"({first.dataset.name}): only runs on one dataset train together"
            )


def _has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _same_data(a: Trainer, b: Trainer) -> bool:
    x, y = (
        memory_only(a.dataset.train, "training seeds together"),
        memory_only(b.dataset.train, "training seeds together"),
    )
    if a.dataset.name != b.dataset.name or x.x.shape != y.x.shape:
        return False
    same_memory = x.x.data_ptr() == y.x.data_ptr() and x.y.data_ptr() == y.y.data_ptr()
    return same_memory or (torch.equal(x.x, y.x) and torch.equal(x.y, y.y))


def _per_trainer(values: Sequence[Any] | None, count: int, name: str) -> list[Any]:
    if values is None:
        return [None] * count
    if isinstance(values, (str, os.PathLike)) or len(values) != count:
        raise ValueError(f"{name} must hold one entry (or None) per trainer: {count}, got {values!r}")
    return list(values)


def _cohorts(indices: list[int], trainers: list[Trainer]) -> list[list[int]]:
    """``indices`` grouped by the layout of their trainers' optimizer states: one stack each."""
    groups: dict[tuple, list[int]] = {}
    for i in indices:
        groups.setdefault(_state_layout(trainers[i]), []).append(i)
    return list(groups.values())


def _state_layout(trainer: Trainer) -> tuple:
    """What of a trainer's optimizer state must be equal in a stack: its entries' names per
    parameter and the values of the shared ones (Adam's step count)."""
    layout = []
    for param in trainer.model.parameters():
        state = trainer.optimizer.state.get(param, {})
        layout.append(
            tuple(sorted((key, _plain(value) if key in SHARED_STATE else None) for key, value in state.items()))
        )
    return tuple(layout)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, torch.Tensor) else value
