"""One network trained data-parallel by several processes: when a run is, what it refuses, and its
``DistributedDataParallel`` wrapper.

Every process of the group builds the same network from the same seeds, draws the same epoch
order and augmentation, and trains on its contiguous slice of each global batch
(:mod:`repair_ray.training.batches`); ``DistributedDataParallel`` averages the gradients, so each
step is one process's step on the whole global batch, up to float rounding.
"""

from __future__ import annotations

import torch
from torch.nn.parallel import DistributedDataParallel

from .config import TrainConfig
from .distributed import World, current_world, initialised


def resolve_world(distributed: bool | None) -> tuple[World, bool]:
    """``(world, data_parallel)`` of a run asked to be ``distributed``.

    None: from the environment, data-parallel when an initialised default process group has more
    than one process (so the same call trains alone, under ``torchrun`` and under Ray Train).
    True: data-parallel over the initialised group, even of one process. False: one process alone,
    even inside a group (each process of a group may train a network of its own).

    Raises:
        ValueError: ``distributed=True`` without an initialised process group (a run never sets one
            up itself: the group is the global state of whoever started the processes, see
            :func:`~repair_ray.training.distributed.init_from_env`).
    """
    if distributed is False:
        return World(), False
    if distributed and not initialised():
        raise ValueError(
            "distributed=True needs an initialised torch.distributed process group: start the processes "
            "with torchrun (and call repair_ray.training.distributed.init_from_env()) or Ray Train's TorchTrainer"
        )
    world = current_world()
    return world, bool(distributed) or world.is_distributed


def check_data_parallel(
    config: TrainConfig, world: World, train_samples: int, device: torch.device, model: torch.nn.Module
) -> None:
    """Refuse what a data-parallel run cannot train as one process would.

    Raises:
        ValueError: naming ``train.batch_size`` when the global batch does not split evenly over the
            processes or the train split is smaller than one batch (slices of unequal size would weigh
            samples unequally in the averaged gradient); naming ``train.sync_batchnorm`` for a
            network with BatchNorm on the CPU (PyTorch's SyncBatchNorm runs on GPUs only: its forward
            pass raises for CPU tensors, torch 2.14).
    """
    size, workers = config.batch_size, world.world_size
    if size % workers:
        raise ValueError(
            f"train.batch_size ({size}) must be divisible by the number of data-parallel processes ({workers}): "
            "it is the global batch, split evenly among them"
        )
    if train_samples < size:
        raise ValueError(
            f"train.batch_size ({size}) is larger than the train split ({train_samples} samples): "
            "data-parallel training needs whole global batches"
        )
    has_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if config.sync_batchnorm and has_batchnorm and device.type == "cpu":
        raise ValueError(
            "train.sync_batchnorm needs GPUs: PyTorch's SyncBatchNorm does not run on the CPU; "
            "train with per-process BatchNorm statistics (sync_batchnorm: false) or on CUDA devices"
        )


def data_parallel_device(device: torch.device, world: World) -> torch.device:
    """The device of this process: a CUDA device without an index becomes the process's own GPU
    (``cuda:<local_rank>``, made current so that NCCL's collectives use it); others stay as they are."""
    if device.type != "cuda":
        return device
    if device.index is None:
        device = torch.device("cuda", world.local_rank)
    torch.cuda.set_device(device)
    return device


def with_sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every BatchNorm layer a ``torch.nn.SyncBatchNorm`` sharing its parameters and
    buffers (so the weights, their initial values and the state dict's keys stay the same)."""
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def data_parallel(model: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    """``model`` wrapped for a data-parallel forward and backward pass (gradients averaged over the
    processes during ``backward``; rank 0's buffers broadcast before every forward pass)."""
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
