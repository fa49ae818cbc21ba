"""Training one network, reproducibly and resumably; every name is importable from here.

- :mod:`.config`: :class:`TrainConfig`, the hyperparameters of a run (torch-free).
- :mod:`.trainer`: :class:`Trainer`, the loop (an epoch at a time, evaluation, the run's result),
  and :func:`train_model`, one run start to finish.
- :mod:`.checkpointing`: what a checkpoint of a run holds; resuming it, starting from a trunk's snapshot.
- :mod:`.lineage`: trunks and their snapshots (:func:`train_trunk`), IMP's next mask (:func:`next_imp_mask`).
- :mod:`.steps`: the pieces of a step shared with :mod:`repair_ray.multiseed` (optimizer, augmentation,
  ``torch.compile``).
- :mod:`.batches`: the batches of an epoch, one process's slice of each (in memory or streamed).
- :mod:`.distributed`: this process's place in a ``torch.distributed`` process group (:class:`World`,
  :func:`init_from_env`) and the collectives a data-parallel run uses.
- :mod:`.parallel`: when a run trains data-parallel, what it refuses, its ``DistributedDataParallel``.
"""

from __future__ import annotations

from .checkpointing import Checkpointing
from .config import OPTIMIZERS, PRECISIONS, SCHEDULES, TrainConfig
from .distributed import World, current_world, init_from_env
from .lineage import next_imp_mask, train_trunk
from .steps import (
    Augmentation,
    CompileError,
    apply_augmentation,
    augment_batch,
    compiled,
    draw_augmentation,
    make_optimizer,
    use_fast_cuda_kernels,
)
from .trainer import EVAL_BATCH_SIZE, METRIC_KEYS, NonFiniteLossError, Trainer, TrainResult, train_model

__all__ = [
    "Augmentation",
    "EVAL_BATCH_SIZE",
    "METRIC_KEYS",
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "Checkpointing",
    "CompileError",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "World",
    "apply_augmentation",
    "augment_batch",
    "compiled",
    "current_world",
    "draw_augmentation",
    "init_from_env",
    "make_optimizer",
    "next_imp_mask",
    "train_model",
    "train_trunk",
    "use_fast_cuda_kernels",
]
