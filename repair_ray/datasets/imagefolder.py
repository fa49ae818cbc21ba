"""Any folder of images as a dataset: ``train/<class>/*.png`` plus ``test/<class>/...`` (or ``val/``).

Classes are the train split's sub-folders, sorted by name; every image is converted to RGB. The
``load`` option says how the images reach the network:

- ``memory``: every image decoded once and held as float32 tensors (:class:`~.tensors.TensorData`).
  Each image is squashed to ``image_size`` square (bilinear; the aspect ratio is not kept), or,
  when ``resize_size`` is given, resized and centre-cropped as the streamed evaluation does.
- ``stream``: the files stay on disk and DataLoader workers decode each batch
  (:class:`~.streaming.ImageFiles`): ``Resize(resize_size)`` + ``CenterCrop(image_size)`` for
  evaluation, ``RandomResizedCrop`` + ``RandomHorizontalFlip`` for training; ``resize_size``
  defaults to ``image_size * 256 / 224`` (ImageNet's 256 -> 224).
- ``auto`` (the default): ``memory`` when both splits as float32 tensors would take at most
  :data:`MEMORY_BUDGET` bytes (counted from the file listing, nothing decoded), else ``stream``.

Both normalise per channel by ``mean`` and ``std`` when they are given; otherwise the in-memory
path uses its train split's statistics and the streamed path those of :data:`~.streaming.STATISTICS_SAMPLES`
train images (seed 0, eval transform, exact integer sums: every process gets the same numbers).

A corrupt image (PIL cannot decode it, or it is truncated) fails the run naming the file
(:class:`~.files.CorruptImageError`), on both paths, rather than being skipped: skipping would
change the dataset, and every number computed on it, under the same key.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .files import IMAGE_EXTENSIONS, FileList, FolderListing, evaluation_folder, folder_listing, open_rgb
from .streaming import Channels, ImageFiles, Transforms, channel_statistics, default_workers
from .tensors import Dataset, DatasetNotFoundError, TensorData, black_of, normalise, standardise

MEMORY_BUDGET = 2 * 1024**3  # load: auto holds an image folder in memory up to this many bytes of float32
LOADINGS = ("auto", "memory", "stream")

_STATISTICS: dict[tuple, tuple[Channels, Channels]] = {}  # computed normalisations, per process


def default_resize(image_size: int) -> int:
    """The side the eval transform resizes to before cropping ``image_size``: ImageNet's 256 for 224."""
    return round(image_size * 256 / 224)


def imagefolder_missing(path: Path) -> str | None:
    """What of an image folder's layout is missing at ``path`` (None when its splits and classes are there);
    cheap: it lists folders, it reads no image."""
    if not path.is_dir():
        return f"imagefolder {path} does not exist or is not a folder"
    train_dir = path / "train"
    if not train_dir.is_dir():
        return f"imagefolder {path} has no train split: expected the folder {train_dir}"
    if evaluation_folder(path) is None:
        return f"imagefolder {path} has no test split: expected the folder {path / 'test'} (or val)"
    if not any(d.is_dir() for d in train_dir.iterdir()):
        return f"imagefolder train split {train_dir} has no class folders"
    return None


def imagefolder_listing(path: Path) -> FolderListing | None:
    """The folder's classes and files (listed once per process), None when its layout is incomplete
    or inconsistent (what :func:`load_imagefolder` would raise for)."""
    if imagefolder_missing(path) is not None:
        return None
    try:
        return folder_listing(path)
    except (OSError, ValueError):
        return None


def memory_bytes(images: int, image_size: int) -> int:
    """Bytes of ``images`` RGB images of ``image_size`` square as float32."""
    return images * 3 * image_size * image_size * 4


def imagefolder_loading(path: Path, *, image_size: int, load: str) -> str | None:
    """``memory`` or ``stream``: the path :func:`load_imagefolder` takes (``auto`` decided by the
    listing, no decode), None when only missing files could tell."""
    if load != "auto":
        return load
    listing = imagefolder_listing(path)
    if listing is None:
        return None
    size = memory_bytes(len(listing.train) + len(listing.test), image_size)
    return "memory" if size <= MEMORY_BUDGET else "stream"


def load_imagefolder(
    name: str,
    path: Path,
    workers: int | None = None,
    *,
    image_size: int = 32,
    load: str = "auto",
    resize_size: int | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> Dataset:
    """The image folder at ``path`` as a dataset called ``name`` (see the module docstring).

    The keyword-only options are checked by the registry (:func:`~repair_ray.datasets.check_dataset`)
    before :func:`~repair_ray.datasets.load_dataset` calls this; their defaults are the registry's.
    ``workers``: DataLoader workers of a streamed dataset (None: :func:`~.streaming.default_workers`),
    a runtime setting outside every key.

    Raises:
        DatasetNotFoundError: the folder, a split, its class folders or its images are missing.
        CorruptImageError: an image cannot be decoded (a ValueError naming the file).
        ValueError: the test split has a class folder the train split lacks.
    """
    missing = imagefolder_missing(path)
    if missing is not None:
        raise DatasetNotFoundError(missing)
    listing = folder_listing(path)
    for files in (listing.train, listing.test):
        if not len(files):
            extensions = ", ".join(IMAGE_EXTENSIONS)
            raise DatasetNotFoundError(f"imagefolder split {files.folder} holds no images ({extensions})")
    in_shape = (3, image_size, image_size)
    if imagefolder_loading(path, image_size=image_size, load=load) == "memory":
        train_x = _decoded(listing.train, image_size, resize_size)
        test_x = _decoded(listing.test, image_size, resize_size)
        if mean is None or std is None:
            train_x, test_x, black = standardise(train_x, test_x)
        else:
            train_x, test_x = normalise(train_x, mean, std), normalise(test_x, mean, std)
            black = black_of(mean, std)
        train = TensorData(train_x, torch.from_numpy(listing.train.labels.copy()))
        test = TensorData(test_x, torch.from_numpy(listing.test.labels.copy()))
        return Dataset(name, train, test, len(listing.classes), in_shape, black)
    workers = default_workers() if workers is None else workers
    resize = default_resize(image_size) if resize_size is None else resize_size
    if mean is None or std is None:
        key = (listing.train.folder, len(listing.train), int(listing.train.ends[-1]), image_size, resize)
        if key not in _STATISTICS:
            geometry = Transforms.unnormalised(image_size, resize)
            _STATISTICS[key] = channel_statistics(listing.train, geometry, num_workers=workers)
        mean, std = _STATISTICS[key]
    transforms = Transforms(image_size, resize, _three(mean), _three(std))
    train_files = ImageFiles(listing.train, transforms, num_workers=workers)
    test_files = ImageFiles(listing.test, transforms, num_workers=workers)
    return Dataset(name, train_files, test_files, len(listing.classes), in_shape, black_of(mean, std))


def _three(values: tuple[float, float, float] | list[float]) -> Channels:
    first, second, third = (float(v) for v in values)
    return first, second, third


def _decoded(files: FileList, image_size: int, resize_size: int | None) -> torch.Tensor:
    """Every image of ``files`` decoded into one (N, 3, size, size) float32 tensor in [0, 1]:
    squashed to the square (bilinear), or resized and centre-cropped when ``resize_size`` is given."""
    from PIL import Image

    crop = None if resize_size is None else Transforms.unnormalised(image_size, resize_size).pixels()
    images = []
    for i in range(len(files)):
        rgb = open_rgb(files.path(i))
        if crop is None:
            images.append(np.asarray(rgb.resize((image_size, image_size), Image.Resampling.BILINEAR), dtype=np.uint8))
        else:
            images.append(crop(rgb).permute(1, 2, 0).numpy())
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(torch.float32).div_(255).contiguous()
