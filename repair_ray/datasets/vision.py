"""The torchvision datasets (MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100) read into memory.

Files live under a data root in torchvision's layout (``$REPAIR_RAY_DATA``, else
``~/.cache/repair_ray/data``). MNIST-format files are read directly by a small IDX reader, which
spares the seconds torchvision takes to import; everything else (CIFAR, and MNIST when only the
compressed files are there) goes through torchvision, which downloads missing files when online.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .tensors import Dataset, DatasetNotFoundError, TensorData, black_of, normalise

DATA_ENV = "REPAIR_RAY_DATA"


@dataclass(frozen=True)
class TorchvisionSpec:
    """How one torchvision dataset is found on disk and normalised, and what it holds."""

    class_name: str
    folder: str  # where torchvision expects the files, relative to the data root
    num_classes: int
    in_shape: tuple[int, int, int]
    split_sizes: tuple[int, int]  # (train, test) samples
    mean: tuple[float, ...]
    std: tuple[float, ...]
    idx_files: bool = False  # MNIST-format files that are read without torchvision


TORCHVISION_DATASETS: dict[str, TorchvisionSpec] = {
    "mnist": TorchvisionSpec("MNIST", "MNIST/raw", 10, (1, 28, 28), (60000, 10000), (0.1307,), (0.3081,), True),
    "fashion_mnist": TorchvisionSpec(
        "FashionMNIST", "FashionMNIST/raw", 10, (1, 28, 28), (60000, 10000), (0.2860,), (0.3530,), True
    ),
    "cifar10": TorchvisionSpec(
        "CIFAR10",
        "cifar-10-batches-py",
        10,
        (3, 32, 32),
        (50000, 10000),
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": TorchvisionSpec(
        "CIFAR100",
        "cifar-100-python",
        100,
        (3, 32, 32),
        (50000, 10000),
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
    ),
}


def data_root() -> Path:
    """Where real datasets live: ``$REPAIR_RAY_DATA``, else ``~/.cache/repair_ray/data``."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "repair_ray" / "data"


def load_torchvision(name: str, root: Path | None = None) -> Dataset:
    """Both splits of the torchvision dataset ``name``, normalised by its published statistics.

    ``root`` is the data root (default :func:`data_root`). Raises :class:`DatasetNotFoundError`
    when the files are missing and cannot be downloaded.
    """
    spec = TORCHVISION_DATASETS[name]
    root = data_root() if root is None else root

    def split(train: bool) -> TensorData:
        raw = _read_idx_split(root / spec.folder, train) if spec.idx_files else None
        data, targets = raw if raw is not None else _torchvision_split(name, root, train)
        # MNIST-like data is (N, H, W); CIFAR is (N, H, W, C).
        x = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
        x = normalise(x.to(torch.float32).div_(255), spec.mean, spec.std).contiguous()
        return TensorData(x, torch.as_tensor(targets, dtype=torch.int64))

    return Dataset(name, split(True), split(False), spec.num_classes, spec.in_shape, black_of(spec.mean, spec.std))


def _torchvision_split(name: str, root: Path, train: bool) -> tuple[torch.Tensor, Any]:
    """Raw (uint8 images, labels) of one split through torchvision, downloading when missing."""
    import torchvision  # imported here: it takes seconds to import and only these datasets need it

    spec = TORCHVISION_DATASETS[name]
    cls = getattr(torchvision.datasets, spec.class_name)
    try:
        raw = cls(str(root), train=train, download=False)
    except RuntimeError:  # torchvision's "Dataset not found"
        made = None  # the topmost folder the download would create (torchvision makes every parent)
        for folder in (root / spec.folder, *(root / spec.folder).parents):
            if folder.exists():
                break
            made = folder
        try:
            raw = cls(str(root), train=train, download=True)
        except Exception as error:
            if made is not None:  # what the failed download created goes: no folder is left behind
                shutil.rmtree(made, ignore_errors=True)
            reason = " ".join(str(error).split())  # one line (torchvision's lists every mirror it tried)
            raise DatasetNotFoundError(
                f"dataset {name} not found in {root / spec.folder} and downloading it failed ({reason}). "
                f"Put the files there, or set {DATA_ENV} to a data root holding {spec.folder}/"
            ) from error
    return torch.as_tensor(raw.data), raw.targets


def _read_idx_split(folder: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """MNIST-format files of a split read directly (torchvision's layout, without its slow import).

    None when the uncompressed files are not all there; torchvision then finds or downloads them.
    """
    prefix = "train" if train else "t10k"
    images, labels = folder / f"{prefix}-images-idx3-ubyte", folder / f"{prefix}-labels-idx1-ubyte"
    if not (images.is_file() and labels.is_file()):
        return None
    return torch.from_numpy(_read_idx(images)), torch.from_numpy(_read_idx(labels).astype(np.int64))


def _read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte array of the IDX format (big-endian header: magic, then one int32 per dim)."""
    data = path.read_bytes()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != math.prod(shape):
        raise ValueError(f"{path} holds {array.size} values, its header says {shape}")
    return array.reshape(shape).copy()
