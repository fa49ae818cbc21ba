"""Seeds trained together (``repair_ray.multiseed.train_together``) vs one at a time, on the CPU.

    python benchmarks/seeds_per_trial.py [--quick]

Time per seed per epoch of N seeds of one network on MNIST (a 40-batch slice of the train split,
batch 128, SGD with momentum; 1,000 test samples evaluated after each epoch, the train slice after
the last): N lone ``Trainer.run`` calls in a row vs one ``train_together`` of the N trainers. Speedup
per seed = (time of the N lone runs) / (time of the N-seed stacked run); both include the
evaluations, which are the same work either way. Narrow MLPs (width 32 and 128, depth 2 and 4) and a
small CNN (vgg11 at width 0.125: 8 to 64 channels; 10 batches, one epoch), with 1 and 2 torch threads.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

try:
    from .common import table
except ImportError:
    from common import table

BATCH = 128
# (name, model knobs, batches per epoch, epochs)
MODELS = [
    ("mlp 32x2", {"arch": "mlp", "width": 32, "depth": 2}, 40, 2),
    ("mlp 32x4", {"arch": "mlp", "width": 32, "depth": 4}, 40, 2),
    ("mlp 128x2", {"arch": "mlp", "width": 128, "depth": 2}, 40, 2),
    ("mlp 128x4", {"arch": "mlp", "width": 128, "depth": 4}, 40, 2),
    ("vgg11 x0.125 (CNN)", {"arch": "vgg", "width": 0.125, "depth": 11}, 10, 1),
]


def _data(batches: int):
    from repair_ray import load_dataset
    from repair_ray.datasets import Dataset

    mnist = load_dataset("mnist")
    return Dataset("mnist", mnist.train.head(BATCH * batches), mnist.test.head(1000), 10, mnist.in_shape)


def _trainers(knobs: dict[str, Any], epochs: int, data, seeds: int) -> list:
    from repair_ray.models import ModelConfig
    from repair_ray.training import TrainConfig, Trainer

    config = TrainConfig(epochs=epochs, batch_size=BATCH, lr=0.05, momentum=0.9)
    return [Trainer(ModelConfig(**knobs), config, data, seed=seed) for seed in range(seeds)]


def _seconds(train: Any, trainers: list) -> float:
    started = time.perf_counter()
    train(trainers)
    return time.perf_counter() - started


def measure(knobs: dict[str, Any], batches: int, epochs: int, seeds: int) -> dict[str, float]:
    """Seconds per seed per epoch, lone and together, for ``seeds`` seeds (trainers built untimed)."""
    from repair_ray.multiseed import train_together

    data = _data(batches)
    lone = _seconds(lambda ts: [t.run() for t in ts], _trainers(knobs, epochs, data, seeds))
    together = _seconds(train_together, _trainers(knobs, epochs, data, seeds))
    per = seeds * epochs
    return {"lone_ms": 1000 * lone / per, "together_ms": 1000 * together / per, "speedup": lone / together}


def run(quick: bool = False, device: str = "cpu") -> list[dict[str, Any]]:
    models = MODELS[:1] + MODELS[3:4] if quick else MODELS
    counts = (1, 4) if quick else (1, 4, 16)
    rows = []
    for threads in (1,) if quick else (1, 2):
        torch.set_num_threads(threads)
        for name, knobs, batches, epochs in models:
            measure(knobs, batches, 1, 1)  # warm-up: first calls of each kernel and of vmap
            for seeds in counts:
                row = {"threads": threads, "model": name, "seeds": seeds, "batches": batches * epochs}
                row.update(measure(knobs, batches, epochs, seeds))
                rows.append(row)
                print(row, flush=True)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    return (
        table(
            rows,
            [
                ("threads", "torch threads"),
                ("model", "network"),
                ("seeds", "seeds N"),
                ("batches", "batches per seed"),
                ("lone_ms", "one at a time: ms / seed / epoch"),
                ("together_ms", "together: ms / seed / epoch"),
                ("speedup", "speedup per seed"),
            ],
        )
        + f"\n\nMNIST, batch {BATCH}, SGD; the times include each epoch's evaluation (the same either way)."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(markdown(run(quick=args.quick)))
