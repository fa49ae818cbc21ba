"""Data-parallel training in real processes for the tests: a group of gloo workers on 127.0.0.1, each
running one of the scenarios below and writing its result to a folder the test reads.

The workers are spawned with ``torch.multiprocessing`` (start method spawn), their process group has
a timeout, and :func:`run_workers` kills (by their own handles) the workers it started that outlive
its deadline, so a failing or hanging scenario ends the test instead of leaving processes behind.
"""

from __future__ import annotations

import datetime
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from repair_ray.datasets import Dataset, make_synthetic
from repair_ray.models import ModelConfig
from repair_ray.pruning import Mask, dense_mask, magnitude_prune
from repair_ray.training import TrainConfig, Trainer, init_from_env, train_model, train_trunk
from repair_ray.training import checkpointing as checkpointing_module

from .conftest import free_port

COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=60)  # a rank left waiting fails instead of hanging


def run_workers(
    scenario: Callable[..., Any], out: Path, *args: Any, world: int = 2, timeout: float = 120, attempts: int = 3
) -> list[Any]:
    """Run ``scenario(rank, out, *args)`` in ``world`` spawned gloo processes; their return values, by rank.

    Raises what a worker raised (``torch.multiprocessing.ProcessRaisedException``, with its traceback),
    or TimeoutError when they are not all done within ``timeout`` seconds (then they are killed).
    The rendezvous port is one that was free a moment before: when another process took it first
    (rank 0 cannot listen there, before any scenario ran), the workers start again on another.
    """
    out.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        try:
            _spawn(scenario, out, args, world, timeout)
            break
        except mp.ProcessRaisedException as error:
            taken = "EADDRINUSE" in str(error) or "address already in use" in str(error).lower()
            if not taken or attempt == attempts - 1:
                raise
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


def _spawn(scenario: Callable[..., Any], out: Path, args: tuple, world: int, timeout: float) -> None:
    port = free_port()
    context = mp.start_processes(
        _worker, args=(world, port, scenario, out, args), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{scenario.__name__} on {world} workers took over {timeout} s")
    finally:
        for process in context.processes:  # only ours, by handle: still alive after an error or a timeout
            if process.is_alive():
                process.kill()
            process.join(timeout=10)


def _worker(rank: int, world: int, port: int, scenario: Callable[..., Any], out: Path, args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    init_from_env("gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        result = scenario(rank, out, *args)
        torch.save(result, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- what the tests train

MLP = ModelConfig("mlp", width=32, depth=2)
LAYER_RESNET = ModelConfig("cifar_resnet", width=0.5, depth=8, norm="layer")
BATCH_RESNET = ModelConfig("cifar_resnet", width=0.5, depth=8, norm="batch")
GREY = {"shape": (1, 28, 28), "train_size": 512, "test_size": 256}
RGB = {"shape": (3, 32, 32), "train_size": 256, "test_size": 128}
MLP_TRAIN = TrainConfig(epochs=2, batch_size=64, lr=0.05, augment=False)
RESNET_TRAIN = TrainConfig(epochs=2, batch_size=32, lr=0.05, augment=False)
AUGMENTED_TRAIN = TrainConfig(epochs=2, batch_size=64, lr=0.05, augment=True)  # crop_flip


def data(options: dict[str, Any]) -> Dataset:
    return make_synthetic(**options)


def outcome(trainer: Trainer, result: Any) -> dict[str, Any]:
    """What a test compares of a run: its result, and the weights every rank holds."""
    return {
        "status": result.status,
        "error": result.error,
        "metrics": result.metrics,
        "history": result.history,
        "state_dict": result.state_dict,
        "rank": trainer.world.rank,
        "world_size": trainer.world.world_size,
        "data_parallel": trainer.data_parallel,
    }


def trained(rank: int, out: Path, model: ModelConfig, train: TrainConfig, options: dict, **run: Any) -> dict:
    """One run trained data-parallel to its end."""
    trainer = Trainer(model, train, data(options), seed=3, data_seed=4)
    return outcome(trainer, trainer.run(**run))


def many(rank: int, out: Path) -> dict[str, Any]:
    """Every scenario of one spawn (starting processes costs more than these tiny runs)."""
    results: dict[str, Any] = {}
    results["mlp"] = trained(rank, out, MLP, MLP_TRAIN, GREY, checkpoint_uri=str(out / "mlp.pt"))
    results["layer_resnet"] = trained(rank, out, LAYER_RESNET, RESNET_TRAIN, RGB)
    results["augmented"] = trained(rank, out, MLP, AUGMENTED_TRAIN, RGB)
    results["batchnorm"] = batchnorm(rank, out)
    results["interrupted"] = interrupted(rank, out)
    results["errors"] = refusals(rank, out)
    results["nan"] = nan_in_one_slice(rank, out)
    results["epochs"] = epochs_reported(rank, out)
    results["batches"] = first_epoch_batches(rank, out)
    results["lineage"] = lineage(out)
    return results


def prune_half(model: torch.nn.Module) -> Mask:
    """Half of the network's prunable weights kept, by magnitude: an IMP round's mask."""
    return magnitude_prune(model.state_dict(), dense_mask(model), 0.5)


def lineage(out: Path) -> dict[str, Any]:
    """A trunk snapshotted after epoch 1, and an IMP child branched from that snapshot, half of it
    pruned, with its own data order (what ``train_trunk`` and ``train_model`` do alone, in ``out``)."""
    dataset = data(GREY)
    trunk = train_trunk(MLP, MLP_TRAIN, dataset, seed=7, epochs=[1], snapshot_uri=lambda e: str(out / f"trunk-{e}.pt"))
    child = train_model(
        MLP,
        MLP_TRAIN,
        dataset,
        seed=0,
        init_seed=7,
        data_seed=0,
        branch_epoch=1,
        branch_from=str(out / "trunk-1.pt"),
        imp_round=1,
        mask=prune_half,
    )
    return {"trunk": trunk, "status": child.status, "state_dict": child.state_dict, "history": child.history}


def first_epoch_batches(rank: int, out: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """What this rank trains on in the first epoch of the augmented MLP run (a fresh trainer's)."""
    trainer = Trainer(MLP, AUGMENTED_TRAIN, data(RGB), seed=3, data_seed=4)
    return list(trainer.epoch_batches())


def batchnorm(rank: int, out: Path) -> dict[str, Any]:
    """A BatchNorm ResNet, per-rank statistics, checkpointed every epoch; logs who writes checkpoints."""
    real = checkpointing_module.save_checkpoint
    log = out / f"writes-rank{rank}.txt"

    def logged(uri: Any, *args: Any, **kwargs: Any) -> None:
        with open(log, "a") as file:
            file.write(f"{Path(uri).name}\n")
        real(uri, *args, **kwargs)

    checkpointing_module.save_checkpoint = logged  # type: ignore[assignment]
    try:
        result = trained(rank, out, BATCH_RESNET, RESNET_TRAIN, RGB, checkpoint_uri=str(out / "batchnorm.pt"))
    finally:
        checkpointing_module.save_checkpoint = real
    result["writes"] = log.read_text().split() if log.exists() else []
    return result


def interrupted(rank: int, out: Path) -> dict[str, Any]:
    """The MLP run of :func:`many`, stopped after its first epoch (checkpointed): what ``run`` does, one epoch."""
    trainer = Trainer(MLP, MLP_TRAIN, data(GREY), seed=3, data_seed=4)
    uri = str(out / "interrupted.pt")
    assert trainer.prepare_run(uri, None) is None
    trainer.finish_epoch(trainer.train_epoch(), checkpoint_uri=uri, checkpoint_every=1, on_epoch=None)
    if rank == 0:  # kept as it is after epoch 1 (resuming writes over the other)
        shutil.copyfile(uri, out / "interrupted-epoch-1.pt")
    return {"epoch": trainer.epoch}


def resumed(rank: int, out: Path, uri: str) -> dict[str, Any]:
    """New processes resume the interrupted run to its end."""
    trainer = Trainer(MLP, MLP_TRAIN, data(GREY), seed=3, data_seed=4)
    result = outcome(trainer, trainer.run(checkpoint_uri=uri))
    result["resumed_at"] = trainer.history[0]["epoch"] if trainer.history else None
    return result


def refusals(rank: int, out: Path) -> dict[str, str]:
    """The messages of what a data-parallel run refuses."""
    from repair_ray.multiseed import train_together

    errors: dict[str, str] = {}
    attempts: dict[str, Callable[[], Any]] = {
        "batch_size": lambda: Trainer(MLP, TrainConfig(epochs=1, batch_size=63), data(GREY), seed=0),
        "sync_batchnorm": lambda: Trainer(
            BATCH_RESNET, TrainConfig(epochs=1, batch_size=32, sync_batchnorm=True), data(RGB), seed=0
        ),
        "together": lambda: train_together([Trainer(MLP, MLP_TRAIN, data(GREY), seed=0)]),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
        except ValueError as error:
            errors[name] = str(error)
    return errors


def nan_in_one_slice(rank: int, out: Path) -> dict[str, Any]:
    """A NaN input in rank 1's slice of the first global batch only: every rank must stop there."""
    dataset = data(GREY)
    order = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(4))
    poisoned = int(order[MLP_TRAIN.batch_size * 3 // 4])  # in rank 1's half of batch 1
    dataset.train.x[poisoned] = float("nan")
    trainer = Trainer(MLP, MLP_TRAIN, dataset, seed=3, data_seed=4)
    return outcome(trainer, trainer.run(checkpoint_uri=str(out / "nan.pt")))


def epochs_reported(rank: int, out: Path) -> list[int]:
    """The epochs ``on_epoch`` was called with on this rank."""
    seen: list[int] = []
    Trainer(MLP, TrainConfig(epochs=1, batch_size=64), data(GREY), seed=0).run(on_epoch=lambda e, m: seen.append(e))
    return seen
