"""The types every dataset loader produces: in-memory splits (:class:`TensorData`) and the dataset.

Small datasets (MNIST, CIFAR, test-sized synthetic data, small image folders) live whole on the
device that trains on them, so batches are slices of one tensor rather than the output of worker
processes. A large image folder's splits are :class:`~.streaming.ImageFiles` instead, read from
disk by DataLoader workers; :class:`Dataset` holds either kind. :func:`normalise` and
:func:`standardise` are the per-channel normalisation the loaders share; :func:`black_of` is where a
black pixel lands after it (what a translation's padding fills in).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import is_int

if TYPE_CHECKING:
    from .streaming import ImageFiles


def check_rank(rank: int, world: int) -> None:
    """Raise ValueError unless ``world`` is a positive integer and ``rank`` one of ``0 .. world-1``."""
    if not (is_int(world) and world >= 1):
        raise ValueError(f"world must be a positive integer, got {world!r}")
    if not (is_int(rank) and 0 <= rank < world):
        raise ValueError(f"rank must be an integer in [0, {world}), got {rank!r}")


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous part when ``n`` samples are split ``world``
    ways: the parts cover every sample once, in order, and their sizes differ by at most one (the
    first ``n % world`` ranks take one more).

    Raises:
        ValueError: ``world`` is not a positive integer or ``rank`` not in ``[0, world)``.
    """
    check_rank(rank, world)
    size, extra = divmod(n, world)
    start = rank * size + min(rank, extra)
    return start, start + size + (1 if rank < extra else 0)


def split_positions(size: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions of ``split_off``: the first ``n`` of a seeded ``torch.randperm(size)`` (the
    samples ``subset(n, seed=seed)`` draws, in that order), and the others, sorted.

    Raises:
        ValueError: ``n`` leaves no sample on one side.
    """
    if not 0 < n < size:
        raise ValueError(f"cannot hold out {n} of {size} samples: at least one must stay on each side")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    return order[:n], order[n:].sort().values


@dataclass
class TensorData:
    """Inputs ``x`` (N, C, H, W float32, normalised) and labels ``y`` (N int64) on one device."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"TensorData has {len(self.x)} inputs but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: str | torch.device) -> TensorData:
        return TensorData(self.x.to(device), self.y.to(device))

    def head(self, n: int | None) -> TensorData:
        """The first ``n`` samples (all when ``n`` is None or larger than the data)."""
        if n is None or n >= len(self):
            return self
        return TensorData(self.x[:n], self.y[:n])

    def subset(self, n: int | None, *, seed: int = 0) -> TensorData:
        """``n`` samples drawn without replacement by a seeded generator (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].to(self.device)
        return TensorData(self.x[idx], self.y[idx])

    def split_off(self, n: int, *, seed: int = 0) -> tuple[TensorData, TensorData]:
        """``(held, rest)``: the ``n`` samples :meth:`subset` draws with ``seed``, and every other
        sample in its original order: a validation split and what trains, disjoint and covering the data."""
        held, rest = split_positions(len(self), n, seed)
        return TensorData(self.x[held.to(self.device)], self.y[held.to(self.device)]), TensorData(
            self.x[rest.to(self.device)], self.y[rest.to(self.device)]
        )

    def shard(self, rank: int, world: int) -> TensorData:
        """Part ``rank`` of ``world`` contiguous parts that cover the data once, in order (rank r's part
        comes before rank r+1's), their sizes differing by at most 1 (:func:`shard_bounds`): what one of
        ``world`` data-parallel processes evaluates. A view, no copy."""
        start, stop = shard_bounds(len(self), rank, world)
        return TensorData(self.x[start:stop], self.y[start:stop])

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive batches in order, the last one possibly smaller."""
        for start in range(0, len(self), batch_size):
            yield self.x[start : start + batch_size], self.y[start : start + batch_size]


@dataclass
class Dataset:
    """A classification dataset: normalised train and test splits, each in memory (:class:`TensorData`)
    or streamed from disk (:class:`~.streaming.ImageFiles`), plus the input shape.

    ``black``: each channel's normalised value of a raw 0 (a black pixel: ``-mean / std`` of the
    normalisation, :func:`black_of`), what training pads translated inputs with
    (``train.pad: black``); None where the loader does not say (a dataset built by hand).
    """

    name: str
    train: TensorData | ImageFiles
    test: TensorData | ImageFiles
    num_classes: int
    in_shape: tuple[int, int, int]
    black: tuple[float, ...] | None = None

    @property
    def streamed(self) -> bool:
        """Whether the train split is read from disk (:class:`~.streaming.ImageFiles`) rather than held in memory."""
        return not isinstance(self.train, TensorData)

    def to(self, device: str | torch.device) -> Dataset:
        """The same dataset with both splits on ``device`` (a streamed split's batches land there; no data moves)."""
        return dataclasses.replace(self, train=self.train.to(device), test=self.test.to(device))


def in_memory(split: TensorData | ImageFiles) -> TensorData:
    """``split`` as tensors: itself when in memory, else decoded (:meth:`~.streaming.ImageFiles.load`)."""
    return split if isinstance(split, TensorData) else split.load()


def memory_only(split: TensorData | ImageFiles, user: str) -> TensorData:
    """``split`` itself where ``user`` (a function or class, for the message) indexes tensors and a
    streamed split cannot serve.

    Raises:
        TypeError: ``split`` is streamed from disk.
    """
    if isinstance(split, TensorData):
        return split
    raise TypeError(f"{user} needs a split held in memory (TensorData), got {split!r}")


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not on disk and could not be downloaded."""


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, C, H, W) float in place: subtract the per-channel mean, divide by the per-channel std."""
    shape = (1, len(mean), 1, 1)
    return x.sub_(torch.tensor(mean, dtype=x.dtype).view(shape)).div_(torch.tensor(std, dtype=x.dtype).view(shape))


def black_of(mean: Sequence[float], std: Sequence[float]) -> tuple[float, ...]:
    """Each channel's value of a raw 0 (a black pixel) after :func:`normalise` by ``mean`` and ``std``."""
    return tuple(-float(m) / float(s) for m, s in zip(mean, std, strict=True))


def standardise(train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[float, ...]]:
    """Both splits normalised in place by the per-channel mean and std of the train split, and
    where a raw 0 lands (:func:`black_of`).

    For datasets without published statistics (generated data, image folders); the test split
    never contributes, so its size cannot change how the train split is scaled.
    """
    mean = train_x.mean(dim=(0, 2, 3)).tolist()
    std = train_x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
    return normalise(train_x, mean, std), normalise(test_x, mean, std), black_of(mean, std)
