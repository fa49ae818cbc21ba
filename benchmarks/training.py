"""Training throughput: the quickstart MLP from in-memory tensors vs DataLoader baselines, and
thread settings for parallel trials.

    python benchmarks/training.py [--quick]

1. Samples per second of one training process (1 thread) for the quickstart's MLP (128x4,
   batch 256, SGD) on MNIST: ours (``Trainer``: tensors in memory, batches by index) against
   (a) torchvision's MNIST with ``ToTensor`` + ``Normalize`` through a ``DataLoader`` (the usual
   notebook) and (b) a ``DataLoader`` over a ``TensorDataset`` of the same in-memory tensors.
2. Two trials at once on this machine, each with 1 thread (what the train stage sets: its CPUs
   per trial) vs each with torch's default thread count (every core): total samples per second.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from typing import Any

import torch
import torch.nn.functional as F

try:
    from .common import table
except ImportError:
    from common import table

BATCH = 256


def _model():
    torch.manual_seed(0)
    from repair_ray import build_model

    return build_model("mlp", width=128, depth=4)


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def _steps(model, opt, batches, limit: int) -> int:
    seen = 0
    model.train()
    for i, (x, y) in enumerate(batches):
        if i >= limit:
            break
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
    return seen


def ours(steps: int) -> float:
    from repair_ray import load_dataset
    from repair_ray.models import ModelConfig
    from repair_ray.training import TrainConfig, Trainer

    data = load_dataset("mnist")
    trainer = Trainer(ModelConfig("mlp", 128, 4), TrainConfig(epochs=1, batch_size=BATCH, lr=0.05), data, seed=0)
    train = trainer.dataset.train
    started = time.perf_counter()
    order = torch.randperm(len(train), generator=trainer.generator)
    seen = _steps(
        trainer.model,
        trainer.optimizer,
        ((train.x[idx], train.y[idx]) for idx in order[: steps * BATCH].split(BATCH)),
        steps,
    )
    return seen / (time.perf_counter() - started)


def torchvision_loader(steps: int) -> float:
    import torchvision.transforms as T
    from torchvision.datasets import MNIST

    from repair_ray.datasets import data_root

    dataset = MNIST(
        str(data_root()),
        train=True,
        download=False,
        transform=T.Compose([T.ToTensor(), T.Normalize((0.1307,), (0.3081,))]),
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0)
    model = _model()
    started = time.perf_counter()
    seen = _steps(model, _sgd(model), loader, steps)
    return seen / (time.perf_counter() - started)


def tensor_loader(steps: int) -> float:
    from repair_ray import load_dataset

    data = load_dataset("mnist")
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data.train.x, data.train.y), batch_size=BATCH, shuffle=True
    )
    model = _model()
    started = time.perf_counter()
    seen = _steps(model, _sgd(model), loader, steps)
    return seen / (time.perf_counter() - started)


def _trial(threads: int | None, steps: int, queue) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
    queue.put(ours(steps))


def parallel(threads: int | None, steps: int) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_trial, args=(threads, steps, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    rates = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def run(quick: bool = False, device: str = "cpu") -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    steps = 40 if quick else 200
    single = {
        "ours": ours(steps),
        "torchvision DataLoader": torchvision_loader(steps),
        "TensorDataset DataLoader": tensor_loader(steps),
    }
    rows = [
        {"setup": name, "samples_per_s": rate, "ours_speedup": single["ours"] / rate, "kind": "1 process, 1 thread"}
        for name, rate in single.items()
    ]
    one = parallel(1, steps)
    default = parallel(None, steps)
    rows.append(
        {"setup": "2 trials x 1 thread (ours)", "samples_per_s": one, "ours_speedup": 1.0, "kind": "2 processes"}
    )
    rows.append(
        {
            "setup": f"2 trials x {os.cpu_count()} threads (torch default)",
            "samples_per_s": default,
            "ours_speedup": one / default,
            "kind": "2 processes",
        }
    )
    for r in rows:
        r["steps"] = steps
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    return (
        table(
            rows,
            [
                ("kind", "runs"),
                ("setup", "data path / threads"),
                ("samples_per_s", "samples/s"),
                ("ours_speedup", "ours is x faster"),
            ],
        )
        + f"\n\n{rows[0]['steps']} steps of batch {BATCH} each; MLP 784-128-128-128-128-10, SGD."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(markdown(run(quick=args.quick)))
