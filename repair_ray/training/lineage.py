"""Runs that descend from other runs: trunks whose snapshots children branch from (Frankle et al.'s
instability analysis) and the masks of iterative magnitude pruning with rewinding (lottery tickets).

A child is an ordinary run (:func:`~repair_ray.training.train_model` with ``branch_epoch`` and
``branch_from``, an IMP round also with ``imp_round`` and ``mask``); this module makes what it
starts from.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch

from ..datasets import Dataset
from ..io import storage
from ..io.checkpoint import CheckpointError, load_checkpoint
from ..models import ModelConfig
from ..pruning import Mask, dense_mask, magnitude_prune
from .config import TrainConfig
from .trainer import Trainer


def next_imp_mask(uri: str | os.PathLike[str], rate: float) -> Callable[[torch.nn.Module], Mask]:
    """The mask of the next IMP round, from the trained network of this round at ``uri``: its
    surviving prunable weights (its mask, or all of them for the dense round 0) pruned by ``rate``
    of global magnitude. Returns a function of the network to prune (it names the prunable weights).

    Raises CheckpointError when the checkpoint cannot be read (when the function is called).
    """

    def mask_for(model: torch.nn.Module) -> Mask:
        checkpoint = load_checkpoint(uri)
        if checkpoint.meta.get("status") != "ok":
            raise CheckpointError(f"checkpoint {uri} is not of a finished run: nothing to prune from")
        state = checkpoint.training_state or {}
        previous = state.get("mask") or dense_mask(model)
        return magnitude_prune(checkpoint.state_dict, previous, rate)

    return mask_for


def train_trunk(
    model_config: ModelConfig,
    train_config: TrainConfig,
    dataset: Dataset,
    *,
    seed: int,
    epochs: Sequence[int],
    snapshot_uri: Callable[[int], str | os.PathLike[str]],
    device: str | torch.device = "cpu",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    distributed: bool | None = None,
) -> dict[int, dict[str, float]]:
    """Train one trunk (seed ``seed``) on the run's schedule up to the last of ``epochs``, writing a
    snapshot (weights and training state) at each of them to ``snapshot_uri(epoch)``.

    Children branch from the snapshots (:func:`train_model` with ``branch_from``). A trunk
    resumes from its newest readable snapshot, so it is trained once however often it is asked
    for; snapshots already there are kept. Returns each snapshot epoch's test metrics.

    ``distributed`` as for :class:`Trainer`: data-parallel, rank 0 writes the snapshots and alone
    calls ``on_epoch``.

    Raises:
        NonFiniteLossError: when the trunk's loss is NaN or infinite (no later snapshot is written).
    """
    wanted = sorted(set(int(e) for e in epochs))
    if not wanted or wanted[0] < 0 or wanted[-1] >= train_config.epochs:
        raise ValueError(
            f"branch epochs must be 0 .. {train_config.epochs - 1} (the run has {train_config.epochs}), got {wanted}"
        )
    trainer = Trainer(model_config, train_config, dataset, seed=seed, device=device, distributed=distributed)
    # resume from the last snapshot of the longest run of readable ones from the first: a missing or
    # damaged earlier snapshot is trained (deterministically, the same bits) again
    newest = None
    for epoch in wanted:
        uri = snapshot_uri(epoch)
        if not trainer.decided(storage.exists(uri)):
            break
        try:  # a probe, one process's: readable, and of this trunk?
            Trainer(model_config, train_config, dataset, seed=seed, device=device, distributed=False).resume(uri)
            readable = True
        except (CheckpointError, ValueError):
            readable = False
        if not trainer.decided(readable):
            if trainer.world.is_main:
                storage.remove(uri, missing_ok=True)  # damaged or of another run: written again below
            break
        newest = uri
    if newest is not None:
        trainer.resume(newest)
    metrics: dict[int, dict[str, float]] = {}

    def snapshot() -> None:
        metrics[trainer.epoch] = {"epoch": trainer.epoch, **trainer.evaluate(("test",))}
        trainer.save(snapshot_uri(trainer.epoch), metrics[trainer.epoch], status="trunk")
        if on_epoch is not None and trainer.world.is_main:
            on_epoch(trainer.epoch, metrics[trainer.epoch])

    if trainer.epoch == 0 and 0 in wanted and not trainer.decided(storage.exists(snapshot_uri(0))):
        snapshot()
    while trainer.epoch < wanted[-1]:
        trainer.train_epoch()
        if trainer.epoch in wanted:
            snapshot()
    return metrics
