"""Seeds trained together (``repair_ray.multiseed.train_together``) vs one at a time, on the CPU.

    python benchmarks/seeds_per_trial.py [--quick] [--compile] [--device cuda]

Time per seed per epoch of N seeds of one network on MNIST (a 40-batch slice of the train split,
batch 128, SGD with momentum; 1,000 test samples evaluated after each epoch, the train slice after
the last): N lone ``Trainer.run`` calls in a row vs one ``train_together`` of the N trainers. Speedup
per seed = (time of the N lone runs) / (time of the N-seed stacked run); both include the
evaluations, which are the same work either way. Narrow MLPs (width 32 and 128, depth 2 and 4) and a
small CNN (vgg11 at width 0.125: 8 to 64 channels; 10 batches, one epoch), with 1 and 2 torch threads.

``--compile`` measures ``train.compile`` instead: the same runs eager and under ``torch.compile``
(``Trainer(compile=True)``), lone and together; each compiled configuration is run once untimed first,
so the times are of compiled steps, not of compiling (which a trial pays once per worker and shape).
``--device cuda`` runs on the GPU (data on the device, one thread).
"""

from __future__ import annotations

import argparse
import dataclasses
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

    mnist = load_dataset("mnist")
    return dataclasses.replace(mnist, train=mnist.train.head(BATCH * batches), test=mnist.test.head(1000))


def _trainers(knobs: dict[str, Any], epochs: int, data, seeds: int, compile: bool = False, device: str = "cpu") -> list:
    from repair_ray.models import ModelConfig
    from repair_ray.training import TrainConfig, Trainer

    config = TrainConfig(epochs=epochs, batch_size=BATCH, lr=0.05, momentum=0.9)
    return [
        Trainer(ModelConfig(**knobs), config, data, seed=seed, compile=compile, device=device) for seed in range(seeds)
    ]


def _seconds(train: Any, trainers: list) -> float:
    started = time.perf_counter()
    train(trainers)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def measure(
    knobs: dict[str, Any], batches: int, epochs: int, seeds: int, compile: bool = False, device: str = "cpu"
) -> dict[str, float]:
    """Seconds per seed per epoch, lone and together, for ``seeds`` seeds (trainers built untimed)."""
    from repair_ray.multiseed import train_together

    data = _data(batches)
    lone = _seconds(lambda ts: [t.run() for t in ts], _trainers(knobs, epochs, data, seeds, compile, device))
    together = _seconds(train_together, _trainers(knobs, epochs, data, seeds, compile, device))
    per = seeds * epochs
    return {"lone_ms": 1000 * lone / per, "together_ms": 1000 * together / per, "speedup": lone / together}


def run(quick: bool = False, device: str = "cpu") -> list[dict[str, Any]]:
    models = MODELS[:1] + MODELS[3:4] if quick else MODELS
    counts = (1, 4) if quick else (1, 4, 16)
    rows = []
    for threads in (1,) if quick else (1, 2):
        torch.set_num_threads(threads)
        for name, knobs, batches, epochs in models:
            measure(knobs, batches, 1, 1, device=device)  # warm-up: first calls of each kernel and of vmap
            for seeds in counts:
                row = {"threads": threads, "model": name, "seeds": seeds, "batches": batches * epochs}
                row.update(measure(knobs, batches, epochs, seeds, device=device))
                rows.append(row)
                print(row, flush=True)
    return rows


def run_compile(quick: bool = False, device: str = "cpu") -> list[dict[str, Any]]:
    """Eager vs compiled, lone and together (one torch thread); compiling itself is left out."""
    models = MODELS[:1] + MODELS[3:4] if quick else MODELS
    counts = (1, 16)
    torch.set_num_threads(1)
    rows = []
    for name, knobs, batches, epochs in models:
        for seeds in counts:
            row = {"model": name, "seeds": seeds, "batches": batches * epochs}
            for compile in (False, True):
                measure(knobs, batches, 1, seeds, compile, device)  # warm-up: compiles for these shapes
                times = measure(knobs, batches, epochs, seeds, compile, device)
                tag = "compiled" if compile else "eager"
                row[f"lone_{tag}_ms"], row[f"together_{tag}_ms"] = times["lone_ms"], times["together_ms"]
            row["lone_gain"] = row["lone_eager_ms"] / row["lone_compiled_ms"]
            row["together_gain"] = row["together_eager_ms"] / row["together_compiled_ms"]
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


def markdown_compile(rows: list[dict[str, Any]]) -> str:
    return (
        table(
            rows,
            [
                ("model", "network"),
                ("seeds", "seeds N"),
                ("lone_eager_ms", "lone eager: ms / seed / epoch"),
                ("lone_compiled_ms", "lone compiled"),
                ("lone_gain", "compile gain, lone"),
                ("together_eager_ms", "together eager"),
                ("together_compiled_ms", "together compiled"),
                ("together_gain", "compile gain, together"),
            ],
        )
        + f"\n\nMNIST, batch {BATCH}, SGD, 1 torch thread; compiling is left out (warm-up run per shape)."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compile", action="store_true", help="eager vs torch.compile instead of lone vs together")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.compile:
        print(markdown_compile(run_compile(quick=args.quick, device=args.device)))
    else:
        print(markdown(run(quick=args.quick, device=args.device)))
