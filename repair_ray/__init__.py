"""repair_ray: linear mode connectivity of neural networks, aligned and repaired, at sweep scale.

The core (this package minus ``repair_ray.sweep``) is pure PyTorch and never imports Ray.
"""

from __future__ import annotations

from torch import nn

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .data import Dataset, DatasetNotFoundError, TensorData, load_dataset
from .interpolation import barrier_metrics, evaluate, interpolate_state
from .models import build_model
from .pair import PairSettings, analyse_pair
from .permutation import (
    Permutation,
    PermutationSpec,
    SpecError,
    activation_matching,
    apply_permutation,
    random_permutation,
    weight_matching,
)
from .repair import repair, reset_batchnorm
from .tables import load_tables

__version__ = "0.1.0"


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """The :class:`PermutationSpec` of a model of the zoo (validated against the model)."""
    if not hasattr(model, "permutation_spec"):
        raise TypeError(f"{type(model).__name__} has no permutation spec; build it with repair_ray.build_model")
    return model.permutation_spec()


__all__ = [
    "Checkpoint",
    "CheckpointError",
    "Dataset",
    "DatasetNotFoundError",
    "PairSettings",
    "Permutation",
    "PermutationSpec",
    "SpecError",
    "TensorData",
    "activation_matching",
    "analyse_pair",
    "apply_permutation",
    "barrier_metrics",
    "build_model",
    "evaluate",
    "interpolate_state",
    "load_checkpoint",
    "load_dataset",
    "load_tables",
    "permutation_spec",
    "random_permutation",
    "repair",
    "reset_batchnorm",
    "save_checkpoint",
    "weight_matching",
]
