"""Any folder of images as a dataset: ``train/<class>/*.png`` plus ``test/<class>/...`` (or ``val/``).

Images are converted to RGB, resized to a square and normalised by the train split's per-channel
statistics. Only the files tell how many classes and samples there are, so the registry knows the
input shape of such a dataset in advance but not its class count or split sizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .tensors import Dataset, DatasetNotFoundError, TensorData, standardise

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def imagefolder_missing(path: Path) -> str | None:
    """What of an image folder's layout is missing at ``path`` (None when its splits and classes are there);
    cheap: it lists folders, it reads no image."""
    if not path.is_dir():
        return f"imagefolder {path} does not exist or is not a folder"
    train_dir = path / "train"
    if not train_dir.is_dir():
        return f"imagefolder {path} has no train split: expected the folder {train_dir}"
    if not any((path / sub).is_dir() for sub in ("test", "val")):
        return f"imagefolder {path} has no test split: expected the folder {path / 'test'} (or val)"
    if not any(d.is_dir() for d in train_dir.iterdir()):
        return f"imagefolder train split {train_dir} has no class folders"
    return None


def load_imagefolder(name: str, path: Path, *, image_size: int = 32) -> Dataset:
    """The image folder at ``path`` as a dataset called ``name``, every image ``image_size`` square.

    ``image_size`` is checked by the registry (:func:`~repair_ray.datasets.check_dataset`) before
    :func:`~repair_ray.datasets.load_dataset` calls this; its default is the registry's default.
    Classes are the train split's sub-folders, sorted by name.

    Raises:
        DatasetNotFoundError: the folder, a split, its class folders or its images are missing.
        ValueError: the test split has a class folder the train split lacks.
    """
    from PIL import Image  # imported here: only image folders need it

    missing = imagefolder_missing(path)
    if missing is not None:
        raise DatasetNotFoundError(missing)
    train_dir = path / "train"
    test_dir = next(path / sub for sub in ("test", "val") if (path / sub).is_dir())
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
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
    train_x, test_x = standardise(train_x, test_x)
    train, test = TensorData(train_x, train_y), TensorData(test_x, test_y)
    return Dataset(name, train, test, len(classes), (3, image_size, image_size))
