"""The study designs of a sweep beyond independent seeds, as branches of a trunk.

``branch`` (Frankle et al.'s instability analysis): children of a trunk at each epoch of
``at_epochs``; ``imp`` (lottery tickets): every round of iterative magnitude pruning is a branch at
the rewind epoch with a mask. This module states their rules (problems are collected, not raised)
and imports no Ray.
"""

from __future__ import annotations

import math

from ..datasets import dataset_in_shape, dataset_num_classes
from ..models import ModelConfig
from ..pruning import prunable_count
from ..training import TrainConfig
from .plans import Branch, DatasetSpec
from .schema import ImpSection, SweepSection


def branch_points(s: SweepSection, train: TrainConfig, seeds: list[int], problems: list[str]) -> list[Branch] | None:
    """The (trunk seed, epoch) of every branch point of ``branch`` (or every (trunk seed, round) of
    ``imp``, in round order); None for independent seeds."""
    if s.branch is not None and s.imp is not None:
        problems.append("branch, imp: choose one (every IMP round is itself a branch at imp.rewind_epoch)")
        return []
    if s.imp is not None:
        return _imp_rounds(s.imp, train, seeds[0], problems)
    if s.branch is None:
        return None
    epochs, found = s.branch.at_epochs, len(problems)
    if not epochs:
        problems.append("branch.at_epochs: must list at least one epoch (0 branches at the shared initialisation)")
    elif len(set(epochs)) != len(epochs):
        problems.append(f"branch.at_epochs: lists an epoch twice: {epochs}")
    elif any(not 0 <= e < train.epochs for e in epochs):
        problems.append(
            f"branch.at_epochs: must be 0 .. {train.epochs - 1}: the children train the rest of the "
            f"train.epochs = {train.epochs} epochs, got {epochs}"
        )
    trunks = _trunk_seeds(s.branch.trunks, "branch.trunks", problems)
    if len(problems) > found:
        return []
    return [Branch(t, e) for t in trunks for e in sorted(epochs)]


def _trunk_seeds(trunks: int | list[int], where: str, problems: list[str]) -> list[int]:
    if isinstance(trunks, int):
        if trunks < 1:
            problems.append(f"{where}: must be a positive number of trunks, got {trunks}")
        return list(range(max(trunks, 0)))
    if not trunks or len(set(trunks)) != len(trunks) or any(t < 0 for t in trunks):
        problems.append(f"{where}: must list distinct non-negative trunk seeds, got {trunks}")
    return list(trunks)


def imp_branch(trunk: int, epoch: int, round_: int, rate: float, prune_seed: int) -> Branch:
    """Round ``round_`` of IMP as a branch; the rate and the pruned child name rounds >= 1 only
    (round 0 is dense whatever they are)."""
    return Branch(trunk, epoch, round_, rate if round_ else None, prune_seed if round_ else None)


def _imp_rounds(imp: ImpSection, train: TrainConfig, first: int, problems: list[str]) -> list[Branch]:
    """Every (trunk seed, round) of ``imp`` as a branch at the rewind epoch, rounds in order."""
    found = len(problems)
    if imp.rounds < 1:
        problems.append(f"imp.rounds: must be at least 1 (rounds 0, dense, to R are trained), got {imp.rounds}")
    if not (math.isfinite(imp.rate) and 0 < imp.rate < 1):
        problems.append(f"imp.rate: must be a fraction between 0 and 1 of the surviving weights, got {imp.rate}")
    if not 0 <= imp.rewind_epoch < train.epochs:
        problems.append(
            f"imp.rewind_epoch: must be 0 .. {train.epochs - 1} (0 rewinds to the initialisation; each round "
            f"trains the rest of train.epochs = {train.epochs}), got {imp.rewind_epoch}"
        )
    trunks = _trunk_seeds(imp.trunks, "imp.trunks", problems)
    if len(problems) > found:
        return []
    return [imp_branch(t, imp.rewind_epoch, r, imp.rate, first) for t in trunks for r in range(imp.rounds + 1)]


def prunable_weights(model: ModelConfig, dataset: DatasetSpec) -> int | None:
    """The prunable weights of ``model`` on ``dataset`` (None when only the dataset's files tell its shape)."""
    classes = dataset_num_classes(dataset.name, dataset.options)
    in_shape = dataset_in_shape(dataset.name, dataset.options)
    if classes is None or in_shape is None:
        return None
    return prunable_count(model.skeleton(classes, in_shape))
