"""Image folders streamed from disk at their real size: one split, read lazily by DataLoader workers.

ImageNet as float32 tensors at 224 px would take about 770 GB, so a large image folder is never
held in memory: :class:`ImageFiles` keeps only its file list (:class:`~.files.FileList`, two numpy
arrays) and the transforms, and worker processes of a ``torch.utils.data.DataLoader`` decode and
transform each batch when it is asked for. The transforms are torchvision's (``transforms.v2``,
on PIL images): for evaluation ``Resize(resize_size)`` of the shorter side and
``CenterCrop(image_size)``; for training ``RandomResizedCrop(image_size)`` and
``RandomHorizontalFlip``; then per-channel normalisation by ``mean`` and ``std``.

Everything a batch holds is a pure function of its arguments, never of the number of workers or
of what ran before: an epoch's order is a ``torch.randperm`` seeded from ``(seed, epoch)``
(:func:`epoch_order`), and each sample's random crop and flip come from a generator seeded from
``(seed, epoch, sample index)`` (:func:`mix_seed`), so a resumed run sees the batches an
uninterrupted one would have, and the ranks of a sharded run together see the global batches of one.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from .files import CorruptImageError, FileList, open_rgb
from .tensors import TensorData, check_rank, shard_bounds, split_positions

STATISTICS_SAMPLES = 1000  # train images (seed 0) whose pixels give the normalisation when none is configured
LOAD_BATCH = 256  # batch of the DataLoader that fills ImageFiles.load's tensors and the statistics
MAX_DEFAULT_WORKERS = 8  # load_dataset(workers=None): this process's CPUs, at most this many

Channels = tuple[float, float, float]


def default_workers() -> int:
    """DataLoader workers when none are asked for: the CPUs this process may use, at most
    :data:`MAX_DEFAULT_WORKERS` (more rarely help one training process and each costs memory)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_DEFAULT_WORKERS))


def mix_seed(*parts: int) -> int:
    """A 63-bit seed determined by ``parts`` (and by nothing else: a hash, not Python's ``hash``)."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def epoch_order(n: int, *, seed: int, epoch: int) -> torch.Tensor:
    """The order in which epoch ``epoch`` of a run seeded ``seed`` visits ``n`` samples (int64, CPU)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))


@dataclass(frozen=True)
class Transforms:
    """The geometry and normalisation of a streamed image folder (see the module docstring)."""

    image_size: int
    resize_size: int
    mean: Channels
    std: Channels

    @staticmethod
    def unnormalised(image_size: int, resize_size: int) -> Transforms:
        """The geometry of ``image_size`` and ``resize_size`` with mean 0 and std 1: pixels in [0, 1]."""
        return Transforms(image_size, resize_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    def eval(self) -> Callable[[Any], torch.Tensor]:
        """Resize the shorter side, crop the centre, normalise."""
        from torchvision.transforms import v2

        return v2.Compose([*self._geometry(), *self._tail()])

    def train(self) -> Callable[[Any], torch.Tensor]:
        """A random crop of random area and aspect resized to ``image_size``, a random flip, normalise."""
        from torchvision.transforms import v2

        crop = v2.RandomResizedCrop(self.image_size, antialias=True)
        return v2.Compose([crop, v2.RandomHorizontalFlip(), *self._tail()])

    def pixels(self) -> Callable[[Any], torch.Tensor]:
        """The eval geometry only: uint8 pixels (for exact statistics)."""
        from torchvision.transforms import v2

        return v2.Compose([*self._geometry(), v2.PILToTensor()])

    def _geometry(self) -> list[Any]:
        from torchvision.transforms import v2

        return [v2.Resize(self.resize_size, antialias=True), v2.CenterCrop(self.image_size)]

    def _tail(self) -> list[Any]:
        from torchvision.transforms import v2

        return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(self.mean), list(self.std))]


class _Decoded(TorchDataset):
    """What a DataLoader worker runs: sample ``position`` of a split decoded and transformed.

    Returns ``(image, label, "", "")``, or for a file PIL cannot decode ``(zeros, -1, path,
    reason)``: the worker does not raise, so the main process raises :class:`CorruptImageError`
    itself, with the path as data rather than buried in a re-raised traceback.
    """

    def __init__(
        self,
        files: FileList,
        indices: np.ndarray | None,
        transform: Callable[[Any], torch.Tensor],
        size: int,
        *,
        seeds: tuple[int, int] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.files, self.indices, self.transform, self.size = files, indices, transform, size
        self.seeds, self.dtype = seeds, dtype

    def __len__(self) -> int:
        return len(self.files) if self.indices is None else len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, str, str]:
        file = position if self.indices is None else int(self.indices[position])
        try:
            image = open_rgb(self.files.path(file))
        except CorruptImageError as error:
            return torch.zeros(3, self.size, self.size, dtype=self.dtype), -1, error.path, error.reason
        if self.seeds is None:
            x = self.transform(image)
        else:
            with torch.random.fork_rng(devices=[]):  # the process's own generator is left as it was
                torch.default_generator.manual_seed(mix_seed(*self.seeds, position))
                x = self.transform(image)
        return x, int(self.files.labels[file]), "", ""


class ImageFiles:
    """One split of an image folder on disk, read lazily by ``torch.utils.data.DataLoader`` workers.

    ``device`` is where batches land (``to`` returns a copy that puts them elsewhere; no data
    moves); ``num_workers`` the DataLoader's worker processes (0: decode in this process), a
    runtime setting that changes no number. A subset, head or shard is another ``ImageFiles``
    over the same file list.
    """

    def __init__(
        self,
        files: FileList,
        transforms: Transforms,
        *,
        indices: np.ndarray | None = None,
        device: str | torch.device = "cpu",
        num_workers: int = 0,
    ) -> None:
        self.files, self.transforms, self.indices = files, transforms, indices
        self.device = torch.device(device)
        self.num_workers = num_workers

    def __len__(self) -> int:
        return len(self.files) if self.indices is None else len(self.indices)

    def __repr__(self) -> str:
        t = self.transforms
        return (
            f"ImageFiles({self.files.folder!r}, {len(self)} of {len(self.files)} images, {t.image_size} px "
            f"(resized to {t.resize_size}), device={self.device}, num_workers={self.num_workers})"
        )

    @property
    def labels(self) -> torch.Tensor:
        """Every label of this split (int64, CPU), from the file list: nothing is decoded."""
        labels = self.files.labels if self.indices is None else self.files.labels[self.indices]
        return torch.from_numpy(np.array(labels, dtype=np.int64))

    def path(self, position: int) -> str:
        """The file of sample ``position``."""
        return self.files.path(position if self.indices is None else int(self.indices[position]))

    def _with(self, indices: np.ndarray | None = None, **changes: Any) -> ImageFiles:
        options = {"indices": self.indices, "device": self.device, "num_workers": self.num_workers, **changes}
        if indices is not None:  # positions in this split -> files
            options["indices"] = indices if self.indices is None else self.indices[indices]
        return ImageFiles(self.files, self.transforms, **options)

    def to(self, device: str | torch.device) -> ImageFiles:
        """The same split with its batches landing on ``device``."""
        return self._with(device=torch.device(device))

    def subset(self, n: int | None, *, seed: int = 0) -> ImageFiles:
        """``n`` samples drawn without replacement, exactly those :meth:`TensorData.subset` draws
        (the first ``n`` of a seeded ``torch.randperm``, in that order); all when ``n`` is None or
        not smaller than the split."""
        if n is None or n >= len(self):
            return self
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return self._with(order.numpy().astype(np.int64))

    def split_off(self, n: int, *, seed: int = 0) -> tuple[ImageFiles, ImageFiles]:
        """``(held, rest)`` exactly as :meth:`TensorData.split_off` splits (the same positions)."""
        held, rest = split_positions(len(self), n, seed)
        return self._with(held.numpy().astype(np.int64)), self._with(rest.numpy().astype(np.int64))

    def head(self, n: int | None) -> ImageFiles:
        """The first ``n`` samples (all when ``n`` is None or not smaller than the split)."""
        if n is None or n >= len(self):
            return self
        return self._with(np.arange(n, dtype=np.int64))

    def shard(self, rank: int, world: int) -> ImageFiles:
        """Rank ``rank``'s contiguous part of ``world`` (for sharded evaluation): the parts cover
        the split once, in order, their sizes differing by at most one."""
        start, stop = shard_bounds(len(self), rank, world)
        return self._with(np.arange(start, stop, dtype=np.int64))

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive batches in order (the last possibly smaller), eval transform, on ``device``.

        Raises:
            CorruptImageError: at the batch that holds a file PIL cannot decode.
        """
        _check_batch_size(batch_size)
        t = self.transforms
        decoded = _Decoded(self.files, self.indices, t.eval(), t.image_size)
        yield from self._run(decoded, {"batch_size": batch_size, "shuffle": False})

    def train_batches(
        self,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        rank: int = 0,
        world: int = 1,
        augment: bool = True,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of training batches: a pure function of (``seed``, ``epoch``, ``rank``, ``world``).

        The epoch visits the samples in :func:`epoch_order`; global batch ``i`` is
        ``order[i*batch_size:(i+1)*batch_size]``, the last partial one dropped (a split smaller than
        one batch is one batch), and this rank yields its part
        ``[rank*batch_size//world : (rank+1)*batch_size//world]`` of each. ``augment``: the train
        transform, each sample's crop and flip drawn from a generator seeded by (``seed``,
        ``epoch``, sample index); else the eval transform.

        Raises:
            ValueError: ``batch_size`` is not divisible by ``world``, or ``rank`` is not in [0, world).
        """
        _check_batch_size(batch_size)
        check_rank(rank, world)
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} must be divisible by world {world}: ranks take equal parts")
        order = epoch_order(len(self), seed=seed, epoch=epoch)
        count = max(len(self) // batch_size, 1) if len(self) else 0
        lo, hi = rank * batch_size // world, (rank + 1) * batch_size // world
        parts = [order[i * batch_size : (i + 1) * batch_size][lo:hi].tolist() for i in range(count)]
        t = self.transforms
        transform, seeds = (t.train(), (seed, epoch)) if augment else (t.eval(), None)
        decoded = _Decoded(self.files, self.indices, transform, t.image_size, seeds=seeds)
        batches = self._run(decoded, {"batch_sampler": [p for p in parts if p]})
        for part in parts:
            if part:
                yield next(batches)
            else:  # a split smaller than one batch leaves this rank's part empty: an empty step
                x = torch.empty(0, 3, t.image_size, t.image_size, device=self.device)
                yield x, torch.empty(0, dtype=torch.int64, device=self.device)

    def load(self) -> TensorData:
        """This split decoded with the eval transform (through the workers) into a
        :class:`TensorData` on ``device``, in the same order."""
        size = self.transforms.image_size
        x = torch.empty(len(self), 3, size, size)
        y = torch.empty(len(self), dtype=torch.int64)
        start = 0
        for xb, yb in self.to("cpu").batches(LOAD_BATCH):
            x[start : start + len(yb)], y[start : start + len(yb)] = xb, yb
            start += len(yb)
        return TensorData(x, y).to(self.device)

    def _run(self, decoded: _Decoded, sampling: dict[str, Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cuda = self.device.type == "cuda"
        # a generator of its own: the DataLoader draws its workers' base seed from it, not from the process's
        loader: DataLoader[Any] = DataLoader(
            decoded, num_workers=self.num_workers, pin_memory=cuda, generator=torch.Generator(), **sampling
        )
        for x, y, paths, reasons in loader:
            for path, reason in zip(paths, reasons, strict=True):
                if path:
                    raise CorruptImageError(path, reason)
            yield x.to(self.device, non_blocking=cuda), y.to(self.device, non_blocking=cuda)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def channel_statistics(
    files: FileList, transforms: Transforms, *, samples: int = STATISTICS_SAMPLES, num_workers: int = 0
) -> tuple[Channels, Channels]:
    """Per-channel mean and std (unbiased, as :func:`~.tensors.standardise`) of the pixels in [0, 1]
    of ``samples`` images of ``files`` (the seed-0 subset) under the eval geometry.

    The sums are of integer pixel values, exact in any order, so every process computes the same
    numbers whatever its workers, threads or machine.
    """
    t = transforms
    view = ImageFiles(files, t, num_workers=num_workers).subset(samples, seed=0)
    decoded = _Decoded(files, view.indices, t.pixels(), t.image_size, dtype=torch.uint8)
    loader: DataLoader[Any] = DataLoader(
        decoded, batch_size=LOAD_BATCH, num_workers=num_workers, generator=torch.Generator()
    )
    total, total_sq, count = [0, 0, 0], [0, 0, 0], 0
    for x, _y, paths, reasons in loader:
        for path, reason in zip(paths, reasons, strict=True):
            if path:
                raise CorruptImageError(path, reason)
        wide = x.to(torch.int64)
        total = [a + int(b) for a, b in zip(total, wide.sum(dim=(0, 2, 3)).tolist(), strict=True)]
        total_sq = [a + int(b) for a, b in zip(total_sq, (wide * wide).sum(dim=(0, 2, 3)).tolist(), strict=True)]
        count += wide.shape[0] * wide.shape[2] * wide.shape[3]
    if count < 2:
        raise ValueError(f"channel statistics need at least 2 pixels, got {count} (is {files.folder} empty?)")
    mean = tuple(s / (255 * count) for s in total)
    # unbiased variance from exact integer sums: (n·Σx² − (Σx)²) / (n(n−1)), in 255ths
    var = [(count * sq - s * s) / (count * (count - 1) * 255**2) for s, sq in zip(total, total_sq, strict=True)]
    std = tuple(max(math.sqrt(v), 1e-6) for v in var)
    return (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])
