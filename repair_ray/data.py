"""Datasets held as tensors in memory (on the compute device), not fed through DataLoader workers."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


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

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive batches in order, the last one possibly smaller."""
        for start in range(0, len(self), batch_size):
            yield self.x[start : start + batch_size], self.y[start : start + batch_size]


# ---------------------------------------------------------------------------------------------
# Datasets by name
# ---------------------------------------------------------------------------------------------

DATA_ENV = "REPAIR_RAY_DATA"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class Dataset:
    """A classification dataset held in memory: normalised train and test tensors plus their shape."""

    name: str
    train: TensorData
    test: TensorData
    num_classes: int
    in_shape: tuple[int, int, int]

    def to(self, device: str | torch.device) -> Dataset:
        """The same dataset with both splits on ``device``."""
        return Dataset(self.name, self.train.to(device), self.test.to(device), self.num_classes, self.in_shape)


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not on disk and could not be downloaded."""


@dataclass(frozen=True)
class _TorchvisionSpec:
    """How one torchvision dataset is found on disk and normalised."""

    class_name: str
    folder: str  # where torchvision expects the files, relative to the data root
    num_classes: int
    in_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    idx_files: bool = False  # MNIST-format files that are read without torchvision


TORCHVISION_DATASETS: dict[str, _TorchvisionSpec] = {
    "mnist": _TorchvisionSpec("MNIST", "MNIST/raw", 10, (1, 28, 28), (0.1307,), (0.3081,), True),
    "fashion_mnist": _TorchvisionSpec("FashionMNIST", "FashionMNIST/raw", 10, (1, 28, 28), (0.2860,), (0.3530,), True),
    "cifar10": _TorchvisionSpec(
        "CIFAR10", "cifar-10-batches-py", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    "cifar100": _TorchvisionSpec(
        "CIFAR100", "cifar-100-python", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
}
KNOWN_DATASETS = (*TORCHVISION_DATASETS, "synthetic", "imagefolder:<path>")


def data_root() -> Path:
    """Where real datasets live: ``$REPAIR_RAY_DATA``, else ``~/.cache/repair_ray/data``."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "repair_ray" / "data"


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    **options: Any,
) -> Dataset:
    """Load a dataset by name into memory, normalised per channel, as (N, C, H, W) float32 tensors.

    Args:
        name: ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` (torchvision files under the
            data root), ``synthetic`` (generated from a seed) or ``imagefolder:<path>`` (a folder
            with ``train/<class>/*.png`` and ``test/<class>/...`` or ``val/<class>/...``).
        root: data root of the torchvision datasets; defaults to :func:`data_root`.
        device: where the tensors end up.
        options: ``synthetic``: ``shape``, ``num_classes``, ``train_size``, ``test_size``, ``seed``;
            ``imagefolder``: ``image_size``. The torchvision datasets take none.

    Raises:
        DatasetNotFoundError: the files are missing and could not be downloaded.
        ValueError: an unknown name or option.
    """
    _check_options(name, options, dataset_options(name))
    if name in TORCHVISION_DATASETS:
        dataset = _load_torchvision(name, Path(root).expanduser() if root is not None else data_root())
    elif name == "synthetic":
        dataset = make_synthetic(**options)
    else:
        path = Path(name.split(":", 1)[1]).expanduser()
        dataset = _load_imagefolder(name, path, options.get("image_size", 32))
    return dataset.to(device)


def dataset_options(name: str) -> tuple[str, ...]:
    """The options ``load_dataset(name, ...)`` accepts; ValueError for an unknown dataset name."""
    if name in TORCHVISION_DATASETS:
        return ()
    if name == "synthetic":
        return ("shape", "num_classes", "train_size", "test_size", "seed")
    if name.startswith("imagefolder:") and len(name) > len("imagefolder:"):
        return ("image_size",)
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(KNOWN_DATASETS)}")


def dataset_in_shape(name: str, options: dict[str, Any]) -> tuple[int, int, int] | None:
    """(C, H, W) of one input of a dataset, without loading it (None when only the files tell)."""
    if name in TORCHVISION_DATASETS:
        return TORCHVISION_DATASETS[name].in_shape
    if name == "synthetic":
        return tuple(int(v) for v in options.get("shape", (1, 28, 28)))
    if name.startswith("imagefolder:"):
        size = int(options.get("image_size", 32))
        return (3, size, size)
    return None


def _check_options(name: str, options: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) if allowed else "none"
        raise ValueError(f"dataset {name} does not take option(s) {', '.join(unknown)}; it accepts {accepted}")


def _normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, C, H, W) float in place: subtract the per-channel mean, divide by the per-channel std."""
    shape = (1, len(mean), 1, 1)
    return x.sub_(torch.tensor(mean, dtype=x.dtype).view(shape)).div_(torch.tensor(std, dtype=x.dtype).view(shape))


def _load_torchvision(name: str, root: Path) -> Dataset:
    spec = TORCHVISION_DATASETS[name]

    def split(train: bool) -> TensorData:
        raw = _read_idx_split(root / spec.folder, train) if spec.idx_files else None
        data, targets = raw if raw is not None else _torchvision_split(name, root, train)
        # MNIST-like data is (N, H, W); CIFAR is (N, H, W, C).
        x = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
        x = _normalise(x.to(torch.float32).div_(255), spec.mean, spec.std).contiguous()
        return TensorData(x, torch.as_tensor(targets, dtype=torch.int64))

    return Dataset(name, split(True), split(False), spec.num_classes, spec.in_shape)


def _torchvision_split(name: str, root: Path, train: bool) -> tuple[torch.Tensor, Any]:
    """Raw (uint8 images, labels) of one split through torchvision, downloading when missing."""
    import torchvision  # imported here: it takes seconds to import and only these datasets need it

    spec = TORCHVISION_DATASETS[name]
    cls = getattr(torchvision.datasets, spec.class_name)
    try:
        raw = cls(str(root), train=train, download=False)
    except RuntimeError:  # torchvision's "Dataset not found"
        try:
            raw = cls(str(root), train=train, download=True)
        except Exception as error:
            raise DatasetNotFoundError(
                f"dataset {name} not found in {root / spec.folder} and downloading it failed ({error}). "
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


def make_synthetic(
    *,
    shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    train_size: int = 2048,
    test_size: int = 512,
    seed: int = 0,
) -> Dataset:
    """A learnable image classification task generated from ``seed``, for tests and quick runs.

    Every class has a smooth prototype image (low-resolution noise upsampled); a sample is its
    class prototype at a random amplitude, plus a smooth nuisance image and pixel noise. A small
    MLP reaches roughly 90% test accuracy on the default shape in two epochs, well short of 100%.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"synthetic shape must be three positive integers (C, H, W), got {shape!r}")
    if num_classes < 2:
        raise ValueError(f"synthetic num_classes must be at least 2, got {num_classes!r}")
    if train_size < 1 or test_size < 1:
        raise ValueError(f"synthetic train_size and test_size must be positive, got {train_size}, {test_size}")
    generator = torch.Generator().manual_seed(seed)
    prototypes = _smooth_images(generator, num_classes, shape)

    def split(n: int) -> TensorData:
        y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]
        amplitude = 0.5 + torch.rand(n, 1, 1, 1, generator=generator)
        nuisance = _smooth_images(generator, n, shape)
        noise = torch.randn(n, *shape, generator=generator)
        return TensorData(prototypes[y] * amplitude + nuisance + 2.0 * noise, y)

    train, test = split(train_size), split(test_size)  # train first: test_size never changes train
    mean = train.x.mean(dim=(0, 2, 3)).tolist()
    std = train.x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
    train.x, test.x = _normalise(train.x, mean, std), _normalise(test.x, mean, std)
    return Dataset("synthetic", train, test, num_classes, shape)


def _smooth_images(generator: torch.Generator, n: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """``n`` images of ``shape`` with smooth spatial structure and unit overall std."""
    channels, height, width = shape
    low = torch.randn(n, channels, min(4, height), min(4, width), generator=generator)
    images = torch.nn.functional.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)
    return images / images.std().clamp_min(1e-6) if images.numel() > 1 else images


def _load_imagefolder(name: str, path: Path, image_size: int) -> Dataset:
    from PIL import Image

    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"imagefolder image_size must be a positive integer, got {image_size!r}")
    if not path.is_dir():
        raise DatasetNotFoundError(f"imagefolder {path} does not exist or is not a folder")
    train_dir = path / "train"
    test_dir = next((path / sub for sub in ("test", "val") if (path / sub).is_dir()), None)
    if not train_dir.is_dir():
        raise DatasetNotFoundError(f"imagefolder {path} has no train split: expected the folder {train_dir}")
    if test_dir is None:
        raise DatasetNotFoundError(
            f"imagefolder {path} has no test split: expected the folder {path / 'test'} (or val)"
        )
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise DatasetNotFoundError(f"imagefolder train split {train_dir} has no class folders")
    index = {c: i for i, c in enumerate(classes)}

    def split(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for class_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
            if class_dir.name not in index:
                raise ValueError(f"imagefolder class folder {class_dir} is not among the train classes {classes}")
            for file in sorted(class_dir.iterdir()):
                if file.suffix.lower() in IMAGE_EXTENSIONS:
                    with Image.open(file) as image:
                        rgb = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
                        images.append(np.asarray(rgb, dtype=np.uint8))
                    labels.append(index[class_dir.name])
        if not images:
            raise DatasetNotFoundError(f"imagefolder split {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(torch.float32).div_(255).contiguous()
        return x, torch.tensor(labels, dtype=torch.int64)

    train_x, train_y = split(train_dir)
    test_x, test_y = split(test_dir)
    mean = train_x.mean(dim=(0, 2, 3)).tolist()
    std = train_x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
    train = TensorData(_normalise(train_x, mean, std), train_y)
    test = TensorData(_normalise(test_x, mean, std), test_y)
    return Dataset(name, train, test, len(classes), (3, image_size, image_size))
