"""Applying and drawing permutations described by a :class:`PermutationSpec`.

A permutation is a ``dict[str, torch.LongTensor]`` from group name to an index tensor ``p``:
unit ``i`` of the aligned network is unit ``p[i]`` of the original, so every permuted axis is
gathered with ``index_select(axis, p)``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .spec import PermutationSpec, SpecError, axis_index

Permutation = dict[str, torch.Tensor]
StateDict = dict[str, torch.Tensor]


def as_state(model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> StateDict:
    """A state dict from a model or a mapping of tensors."""
    if isinstance(model_or_state, nn.Module):
        return model_or_state.state_dict()
    return model_or_state if isinstance(model_or_state, dict) else dict(model_or_state)


def identity_permutation(spec: PermutationSpec, device: str | torch.device = "cpu") -> Permutation:
    return {g: torch.arange(n, device=device) for g, n in spec.sizes.items()}


def random_permutation(spec: PermutationSpec, *, seed: int = 0, device: str | torch.device = "cpu") -> Permutation:
    """A uniformly random permutation of every group, drawn from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    return {g: torch.randperm(n, generator=gen).to(device) for g, n in sorted(spec.sizes.items())}


def invert_permutation(perm: Permutation) -> Permutation:
    return {g: torch.argsort(p) for g, p in perm.items()}


def check_permutation(spec: PermutationSpec, perm: Mapping[str, torch.Tensor]) -> None:
    """Raise a SpecError unless ``perm`` holds a permutation of the right size for every group of ``spec``."""
    for g, n in spec.sizes.items():
        if g not in perm:
            raise SpecError(f"permutation has no entry for group {g!r}")
        p = perm[g]
        if p.shape != (n,) or not torch.equal(torch.sort(p.cpu()).values, torch.arange(n)):
            raise SpecError(f"permutation of group {g!r} is not a permutation of {n} units")


def permute_tensor(
    spec: PermutationSpec,
    name: str,
    tensor: torch.Tensor,
    perm: Mapping[str, torch.Tensor],
    except_axis: int | None = None,
) -> torch.Tensor:
    """``tensor`` (the entry ``name``) with every permuted axis gathered, except ``except_axis``."""
    for axis, entry in enumerate(spec.axes[name]):
        if entry is not None and axis != except_axis:
            tensor = tensor.index_select(axis, axis_index(entry, perm, tensor.device).to(tensor.device))
    return tensor


def apply_permutation(
    spec: PermutationSpec,
    perm: Mapping[str, torch.Tensor],
    model_or_state: nn.Module | Mapping[str, torch.Tensor],
) -> StateDict:
    """The state dict of the permuted network (parameters and buffers); computes the same function.

    Raises:
        SpecError: if the state does not fit the spec or ``perm`` is not a permutation of every group.
    """
    state = as_state(model_or_state)
    spec.validate(state)
    check_permutation(spec, perm)
    out = OrderedDict((k, permute_tensor(spec, k, v, perm)) for k, v in state.items())
    if hasattr(state, "_metadata"):  # module versions: some modules load older layouts by them
        out._metadata = state._metadata  # type: ignore[attr-defined]  # torch's untyped state-dict attribute
    return out


def sum_tensors(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """``sum(terms)`` typed for tensors: at least one term, added in order."""
    parts = iter(terms)
    total = next(parts)
    for term in parts:
        total = total + term
    return total


def linear_sum_assignment(cost: Any, *, maximize: bool = False) -> tuple[Any, Any]:
    """``scipy.optimize.linear_sum_assignment``, imported on first use: scipy.optimize takes longer
    to import than a small trial takes to train, and a worker that only trains never needs it."""
    from scipy.optimize import linear_sum_assignment as solve

    return solve(cost, maximize=maximize)
