"""The batches one training process trains on in an epoch: its slice of every global batch, from
tensors in memory or streamed from image files.

Whatever the number of processes, the global batches are those of one process: in memory, one
epoch order (``torch.randperm``) and one set of augmentation draws per global batch come from the
run's seeded generator, and process ``rank`` of ``world`` keeps its contiguous slice
``[rank * b / world, (rank + 1) * b / world)`` of each. A streamed split makes the same slices itself
from (data seed, epoch).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..datasets import ImageFiles, TensorData
from .steps import apply_augmentation, draw_augmentation

Batch = tuple[torch.Tensor, torch.Tensor]


def local_slice(batch_size: int, rank: int, world: int) -> slice:
    """The part of a global batch of ``batch_size`` samples that process ``rank`` of ``world`` trains on."""
    return slice(rank * batch_size // world, (rank + 1) * batch_size // world)


def in_memory_batches(
    train: TensorData,
    *,
    batch_size: int,
    steps: int,
    generator: torch.Generator,
    augment: str | None,
    rank: int = 0,
    world: int = 1,
    fill: tuple[float, ...] | None = None,
) -> Iterator[Batch]:
    """Process ``rank``'s slice of each of the epoch's ``steps`` global batches of ``train``, drawn lazily.

    The epoch order is drawn from ``generator`` first, then each batch's augmentation (``crop_flip``
    or ``translate``, see :meth:`TrainConfig.augmentation`) for the whole global batch, so the
    generator advances exactly as it does for one process; only the slice's inputs are gathered and
    augmented (the padding ``fill`` per channel, None: 0). The last partial batch is dropped, except
    when the split is smaller than one batch.
    """
    order = torch.randperm(len(train), generator=generator).to(train.device)
    part = local_slice(batch_size, rank, world) if world > 1 else None
    for batch in range(steps):
        index = order[batch * batch_size : (batch + 1) * batch_size]
        draws = draw_augmentation(len(index), generator, flips=augment == "crop_flip") if augment else None
        if part is not None:
            index = index[part]
            draws = (draws[0][:, part], draws[1][part]) if draws is not None else None
        x, y = train.x[index], train.y[index]
        yield (apply_augmentation(x, draws, fill=fill) if draws is not None else x), y


def streamed_batches(
    train: ImageFiles, *, batch_size: int, seed: int, epoch: int, augment: bool, rank: int = 0, world: int = 1
) -> Iterator[Batch]:
    """Process ``rank``'s slice of each global batch of epoch ``epoch`` of a streamed split, as the
    split makes them (its order and augmentation a function of ``seed`` and ``epoch``, so a resumed
    run needs no generator state); ``augment``: random resized crops and flips."""
    yield from train.train_batches(batch_size, seed=seed, epoch=epoch, rank=rank, world=world, augment=augment)
