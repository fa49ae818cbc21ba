"""An image folder's files: listed once per process, held compactly, decoded one at a time.

An image folder is ``<path>/train/<class>/<image>`` plus ``<path>/test/<class>/...`` (or
``val/``). :func:`folder_listing` lists it without decoding anything and keeps every file name of
a split in two numpy arrays (:class:`FileList`), not in a list of Python strings: DataLoader worker
processes are forked, and a worker that touches a Python object writes its reference count, which
copies the object's memory page into the worker. With one bytes buffer per split, a worker's
memory does not grow with the number of images it reads (the known PyTorch issue 13246).

A file that PIL cannot decode (not an image, truncated, damaged) fails the run naming the file
(:class:`CorruptImageError`) rather than being skipped: a skipped file would silently change the
dataset, and with it every number computed on it, while its key stayed the same.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
TEST_FOLDERS = ("test", "val")  # the first of these that exists is the test split
LISTINGS_KEPT = 4  # folders whose listing a process keeps


class CorruptImageError(ValueError):
    """An image file PIL cannot decode (not an image, truncated, damaged); ``path`` names it."""

    def __init__(self, path: str, reason: str = "cannot be decoded") -> None:
        super().__init__(f"cannot decode image {path}: {reason} (a corrupt image fails the run: remove or replace it)")
        self.path, self.reason = path, reason

    def __reduce__(self) -> tuple[type[CorruptImageError], tuple[str, str]]:
        return CorruptImageError, (self.path, self.reason)  # pickled whole (Ray sends errors between processes)


def open_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """The image at ``path``, decoded and converted to RGB (greyscale, palette and RGBA files too).

    Raises:
        CorruptImageError: PIL cannot decode the file (a missing or unreadable file raises its own OSError).
    """
    from PIL import Image  # imported here: only image folders need it

    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # converting loads every pixel: a truncated file fails here
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as error:
        raise CorruptImageError(os.fspath(path), f"{type(error).__name__}: {error}") from error


@dataclass(frozen=True)
class FileList:
    """The image files of one split: names relative to ``folder``, encoded back to back in one
    uint8 array (``names``, each ending at ``ends[i]``), and their labels (int64)."""

    folder: str
    names: np.ndarray
    ends: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        """The full path of file ``index``."""
        start = int(self.ends[index - 1]) if index > 0 else 0
        return os.path.join(self.folder, os.fsdecode(self.names[start : int(self.ends[index])].tobytes()))

    @property
    def nbytes(self) -> int:
        """Memory the list takes (its arrays)."""
        return self.names.nbytes + self.ends.nbytes + self.labels.nbytes


@dataclass(frozen=True)
class FolderListing:
    """An image folder listed: its classes (the train split's sub-folders, sorted) and both splits."""

    classes: tuple[str, ...]
    train: FileList
    test: FileList


def evaluation_folder(path: Path) -> Path | None:
    """The folder of ``path``'s test split (``test``, else ``val``), None when it has neither."""
    return next((path / sub for sub in TEST_FOLDERS if (path / sub).is_dir()), None)


def list_split(folder: Path, classes: Sequence[str]) -> FileList:
    """Every image file under ``folder/<class>/`` (by extension; nothing is opened), class folders
    and files in sorted order, labelled by their class's position in ``classes``.

    Raises:
        ValueError: ``folder`` has a class folder that is not among ``classes``.
    """
    index = {c: i for i, c in enumerate(classes)}
    names: list[bytes] = []
    labels: list[int] = []
    for class_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
        if class_dir.name not in index:
            raise ValueError(f"imagefolder class folder {class_dir} is not among the train classes {list(classes)}")
        files = sorted(e.name for e in os.scandir(class_dir) if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
        names += [os.fsencode(os.path.join(class_dir.name, name)) for name in files]
        labels += [index[class_dir.name]] * len(files)
    buffer = np.frombuffer(b"".join(names), dtype=np.uint8)
    ends = np.cumsum(np.fromiter((len(n) for n in names), dtype=np.int64, count=len(names)))
    return FileList(str(folder), buffer, ends, np.asarray(labels, dtype=np.int64))


_LISTINGS: dict[str, tuple[tuple, FolderListing]] = {}


def folder_listing(path: Path) -> FolderListing:
    """Both splits of the image folder at ``path`` (its layout checked by the caller), listed once
    per process: a later call lists again only when a split's or class folder's modification time
    changed (adding or removing a file changes its folder's; these times tick every few ms, so a
    change within the tick of the listing goes unseen until the next one)."""
    train_dir, test_dir = path / "train", evaluation_folder(path)
    assert test_dir is not None, f"{path} has no test split"  # imagefolder_missing said so first
    signature = tuple(
        (str(d), d.stat().st_mtime_ns)
        for split in (train_dir, test_dir)
        for d in (split, *sorted(c for c in split.iterdir() if c.is_dir()))
    )
    key = str(path.resolve())
    cached = _LISTINGS.get(key)
    if cached is not None and cached[0] == signature:
        return cached[1]
    classes = tuple(sorted(d.name for d in train_dir.iterdir() if d.is_dir()))
    listing = FolderListing(classes, list_split(train_dir, classes), list_split(test_dir, classes))
    _LISTINGS.pop(key, None)
    while len(_LISTINGS) >= LISTINGS_KEPT:
        _LISTINGS.pop(next(iter(_LISTINGS)))
    _LISTINGS[key] = (signature, listing)
    return listing
