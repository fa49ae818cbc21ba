"""repair_ray: linear mode connectivity of neural networks, aligned and repaired, at sweep scale.

The core (this package minus ``repair_ray.sweep``) is pure PyTorch and never imports Ray.
The public names below are loaded on first use (PEP 562), so ``import repair_ray`` and the
command line's ``--help`` stay fast and do not import torch until something needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Checkpoint": ".io.checkpoint",
    "CheckpointError": ".io.checkpoint",
    "load_checkpoint": ".io.checkpoint",
    "save_checkpoint": ".io.checkpoint",
    "load_tables": ".io.tables",
    "Interval": ".report.intervals",
    "interval": ".report.intervals",
    "paired_differences": ".report.differences",
    "Dataset": ".datasets",
    "DatasetNotFoundError": ".datasets",
    "TensorData": ".datasets",
    "load_dataset": ".datasets",
    "barrier_metrics": ".interpolation",
    "evaluate": ".interpolation",
    "interpolate_state": ".interpolation",
    "ModelConfig": ".models",
    "build_model": ".models",
    "permutation_spec": ".models",
    "PairSettings": ".pair",
    "analyse_pair": ".pair",
    "Permutation": ".permutation",
    "PermutationSpec": ".permutation",
    "SpecError": ".permutation",
    "activation_matching": ".permutation",
    "apply_permutation": ".permutation",
    "random_permutation": ".permutation",
    "sinkhorn_matching": ".permutation",
    "ste_matching": ".permutation",
    "weight_matching": ".permutation",
    "repair": ".correction",
    "reset_batchnorm": ".correction",
    "SettingError": ".errors",
    "train_together": ".multiseed",
    "TrainConfig": ".training",
    "TrainResult": ".training",
    "train_model": ".training",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .correction import repair, reset_batchnorm
    from .datasets import Dataset, DatasetNotFoundError, TensorData, load_dataset
    from .errors import SettingError
    from .interpolation import barrier_metrics, evaluate, interpolate_state
    from .io.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
    from .io.tables import load_tables
    from .models import ModelConfig, build_model, permutation_spec
    from .multiseed import train_together
    from .pair import PairSettings, analyse_pair
    from .permutation import (
        Permutation,
        PermutationSpec,
        SpecError,
        activation_matching,
        apply_permutation,
        random_permutation,
        sinkhorn_matching,
        ste_matching,
        weight_matching,
    )
    from .report.differences import paired_differences
    from .report.intervals import Interval, interval
    from .training import TrainConfig, TrainResult, train_model
