"""Data-parallel scaling of one network: the same global batch trained by 1 process vs 2 gloo CPU
processes (``Trainer`` with a ``torch.distributed`` group, no Ray), for an MLP and a small ResNet.

    python benchmarks/ddp.py [--quick]

Each process runs 1 thread; a row "1 process, 2 threads" shows what one process makes of the same
two cores. Times are of whole training epochs after a warm-up epoch (steps/s of the global batch;
samples/s = steps/s x batch), medians over the timed epochs, measured on rank 0 between barriers.
The ratio is samples/s over the 1-process, 1-thread row's. On a machine whose cores other work
shares, the ratios are noisy.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

try:
    from .common import table
except ImportError:
    from common import table

# (name, model config kwargs, data shape, global batch)
MODELS = [
    ("mlp 784-512-512-512-10", {"arch": "mlp", "width": 512, "depth": 3}, (1, 28, 28), 256),
    (
        "cifar_resnet 8 x0.5, batchnorm",
        {"arch": "cifar_resnet", "width": 0.5, "depth": 8, "norm": "batch"},
        (3, 32, 32),
        128,
    ),
]


def _epochs(quick: bool) -> tuple[int, int]:
    """(steps per epoch, timed epochs)."""
    return (8, 2) if quick else (20, 3)


def _train(
    model: dict[str, Any], shape: tuple[int, ...], batch: int, steps: int, epochs: int, threads: int
) -> list[float]:
    """Seconds of each timed epoch of one process's part (after one warm-up epoch); all ranks call it alike."""
    from repair_ray.datasets import make_synthetic
    from repair_ray.models import ModelConfig
    from repair_ray.training import TrainConfig, Trainer

    torch.set_num_threads(threads)
    data = make_synthetic(shape=shape, train_size=batch * steps, test_size=10)
    config = TrainConfig(epochs=epochs + 1, batch_size=batch, lr=0.01, augment=False)
    trainer = Trainer(ModelConfig(**model), config, data, seed=0)
    trainer.train_epoch()  # warm-up: allocations, DDP's bucket rebuild
    times = []
    for _ in range(epochs):
        if trainer.data_parallel:
            dist.barrier()
        started = time.perf_counter()
        trainer.train_epoch()
        if trainer.data_parallel:
            dist.barrier()
        times.append(time.perf_counter() - started)
    return times


def _worker(rank: int, world: int, port: int, out: str, args: tuple) -> None:
    from repair_ray.training import init_from_env

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    init_from_env("gloo", timeout=datetime.timedelta(seconds=300))
    try:
        times = _train(*args, threads=1)
        if rank == 0:
            torch.save(times, Path(out) / "times.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(args: tuple) -> list[float]:
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_worker, args=(2, _free_port(), out, args), nprocs=2, start_method="spawn")
        return torch.load(Path(out) / "times.pt")


def run(quick: bool = False) -> list[dict[str, Any]]:
    rows = []
    for name, model, shape, batch in MODELS:
        steps, epochs = _epochs(quick)
        args = (model, shape, batch, steps, epochs)
        setups = [
            ("1 process, 1 thread", 1, 1),
            ("2 processes (DDP, gloo), 1 thread each", 2, 1),
            ("1 process, 2 threads", 1, 2),
        ]
        base = None
        for setup, processes, threads in setups:
            times = _two_processes(args) if processes == 2 else _train(*args, threads=threads)
            seconds = statistics.median(times)
            steps_per_s = steps / seconds
            samples = steps_per_s * batch
            base = base or samples
            rows.append(
                {
                    "model": name,
                    "batch": batch,
                    "setup": setup,
                    "steps_per_s": steps_per_s,
                    "samples_per_s": samples,
                    "ratio": samples / base,
                    "steps": steps,
                    "epochs": epochs,
                }
            )
    torch.set_num_threads(1)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    return (
        table(
            rows,
            [
                ("model", "network"),
                ("batch", "global batch"),
                ("setup", "processes x threads"),
                ("steps_per_s", "steps/s"),
                ("samples_per_s", "samples/s"),
                ("ratio", "vs 1 process, 1 thread"),
            ],
        )
        + f"\n\nMedian of {rows[0]['epochs']} epochs of {rows[0]['steps']} steps each, after a warm-up epoch; "
        "synthetic data in memory, SGD, fp32, CPU."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(f"$ python {' '.join(sys.argv)}\n")
    print(markdown(run(quick=args.quick)))
