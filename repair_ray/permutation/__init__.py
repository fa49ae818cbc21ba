"""Permutation symmetry of networks: the spec, applying permutations, weight and activation matching."""

from .activation_matching import activation_matching, correlation_matrices
from .learned import midpoint_loss, sinkhorn_matching, soft_permute, ste_matching
from .ops import (
    Permutation,
    apply_permutation,
    identity_permutation,
    invert_permutation,
    permute_tensor,
    random_permutation,
)
from .spec import PermutationSpec, SpecBuilder, SpecError
from .weight_matching import matching_objective, weight_matching

__all__ = [
    "Permutation",
    "PermutationSpec",
    "SpecBuilder",
    "SpecError",
    "activation_matching",
    "apply_permutation",
    "correlation_matrices",
    "identity_permutation",
    "invert_permutation",
    "matching_objective",
    "midpoint_loss",
    "permute_tensor",
    "random_permutation",
    "sinkhorn_matching",
    "soft_permute",
    "ste_matching",
    "weight_matching",
]
