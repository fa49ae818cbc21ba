"""Image loading: the streaming loader (decode + train transform in DataLoader workers) against
batches of in-memory tensors, on this CPU.

    python benchmarks/loader.py [--quick]

Writes a folder of JPEGs of 256 to 500 px per side (about 80 KiB a file; ImageNet's average about
110 KiB) into .bench/loader, loads it with ``load: stream`` at 224 px and times one
epoch of ``ImageFiles.train_batches`` (JPEG decode, ``RandomResizedCrop(224)``, flip, normalise)
with 0 (in the training process), 1 and 2 worker processes, in steady state (from the first batch
on, so the workers' start is not counted). The in-memory path is the same images decoded once
(``ImageFiles.load``) and batched as the trainer does, by a random index into one tensor.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".bench" / "loader"
BATCH = 32
CLASSES = 4

try:
    from .common import table
except ImportError:
    from common import table


def write_folder(root: Path, per_class: int, seed: int = 0) -> Path:
    """``per_class`` JPEGs per class in ``train/`` (and 2 in ``val/``), random sides in [256, 500]:
    upsampled low-resolution noise plus pixel noise: ~80 KiB a file, near ImageNet's ~110 KiB."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", 2)):
        for label in range(CLASSES):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                target = folder / f"{i:04d}.jpg"
                if target.exists():
                    continue
                width, height = (int(s) for s in rng.integers(256, 501, 2))
                coarse = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).resize(
                    (width, height), Image.Resampling.BICUBIC
                )
                pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-40, 41, (height, width, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(target, quality=90)
    return root


def streamed_rate(files: Any, workers: int) -> tuple[float, int]:
    """Images per second of one epoch of train_batches with ``workers`` workers, from the first batch on."""
    from repair_ray.datasets import ImageFiles

    loader = ImageFiles(files.files, files.transforms, indices=files.indices, num_workers=workers)
    batches = loader.train_batches(BATCH, seed=0, epoch=0)
    first = next(batches)
    started, seen = time.perf_counter(), 0
    for _x, y in batches:
        seen += len(y)
    elapsed = time.perf_counter() - started
    return seen / elapsed, len(first[1]) + seen


def memory_rate(files: Any, repeats: int) -> float:
    """Images per second of random batches indexed out of the decoded images (the trainer's way)."""
    data = files.load()
    generator = torch.Generator().manual_seed(0)
    started, seen = time.perf_counter(), 0
    for _ in range(repeats):
        order = torch.randperm(len(data), generator=generator)
        for index in order.split(BATCH):
            batch = data.x[index], data.y[index]  # what a training step gets
            seen += len(batch[1])
    return seen / (time.perf_counter() - started)


def run(quick: bool = False) -> list[dict[str, Any]]:
    from repair_ray.datasets import ImageFiles, load_dataset

    torch.set_num_threads(1)
    per_class = 24 if quick else 96
    root = write_folder(WORK / f"jpegs-{per_class}", per_class)
    dataset = load_dataset(
        f"imagefolder:{root}", load="stream", image_size=224, mean=[0.5] * 3, std=[0.25] * 3, workers=0
    )
    train = dataset.train
    assert isinstance(train, ImageFiles)
    megabytes = sum(p.stat().st_size for p in (root / "train").rglob("*.jpg")) / 2**20
    rows = []
    for workers in (0, 1, 2):
        rate, images = streamed_rate(train, workers)
        rows.append(
            {
                "path": "streamed: decode + RandomResizedCrop(224) + flip",
                "workers": workers,
                "images_per_s": rate,
                "per_process": rate / max(workers, 1),
                "images": images,
            }
        )
    memory = memory_rate(train, repeats=3 if quick else 10)
    rows.append({"path": "in memory: TensorData, random index batches", "workers": 0, "images_per_s": memory})
    for r in rows:
        r["memory_over_this"] = memory / r["images_per_s"]
        r["folder"] = f"{len(train)} JPEGs, 256-500 px, {megabytes:.0f} MiB"
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    return (
        table(
            rows,
            [
                ("path", "data path"),
                ("workers", "workers"),
                ("images_per_s", "images/s"),
                ("per_process", "images/s per decoding process"),
                ("memory_over_this", "in memory is x faster"),
            ],
        )
        + f"\n\n{rows[0]['folder']}; batch {BATCH}; torch with 1 thread in the timing process."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    print(f"Command: python benchmarks/loader.py{' --quick' if args.quick else ''}\n")
    print(markdown(run(quick=args.quick)))
