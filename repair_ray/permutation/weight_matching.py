"""Weight matching (Ainsworth et al. 2022, "Git Re-Basin", algorithm 2).

Coordinate descent over permutation groups: for one group, with every other group's current
permutation applied to B, maximising ``sum_params <W_A, P W_B>`` over that group's permutation
is a linear assignment problem on ``sum_params W_A · W_Bᵀ`` (the group's axis first, all other
axes flattened). Visit the groups in a seeded random order and repeat until a whole sweep
improves nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .ops import Permutation, _check_perm, as_state, identity_permutation, permute_tensor
from .spec import PermutationSpec, SpecError

log = logging.getLogger(__name__)


def _matched_states(
    spec: PermutationSpec,
    a: nn.Module | Mapping[str, torch.Tensor],
    b: nn.Module | Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    state_a, state_b = as_state(a), as_state(b)
    for label, state in (("A", state_a), ("B", state_b)):
        try:
            spec.validate(state)
        except SpecError as err:
            raise SpecError(f"model {label} does not fit the permutation spec: {err}") from None
    return state_a, state_b


def _flat_along(t: torch.Tensor, axis: int) -> torch.Tensor:
    return t.movedim(axis, 0).reshape(t.shape[axis], -1)


def matching_objective(
    spec: PermutationSpec,
    a: nn.Module | Mapping[str, torch.Tensor],
    b: nn.Module | Mapping[str, torch.Tensor],
    perm: Mapping[str, torch.Tensor],
) -> float:
    """``sum_params <W_A, π(W_B)>`` over the parameters the spec permutes: what weight matching maximises."""
    state_a, state_b = _matched_states(spec, a, b)
    total = 0.0
    for name in _permuted_params(spec):
        wb = permute_tensor(spec, name, state_b[name], perm)
        total += float((state_a[name].double() * wb.double()).sum())
    return total


def _permuted_params(spec: PermutationSpec) -> list[str]:
    return [n for n, axes in spec.axes.items() if n not in spec.buffers and any(g is not None for g in axes)]


@torch.no_grad()
def weight_matching(
    spec: PermutationSpec,
    a: nn.Module | Mapping[str, torch.Tensor],
    b: nn.Module | Mapping[str, torch.Tensor],
    *,
    max_iter: int = 100,
    seed: int = 0,
    init_perm: Mapping[str, torch.Tensor] | None = None,
) -> Permutation:
    """The permutation of B whose weights best match A's (Git Re-Basin weight matching).

    Args:
        spec: the architecture's permutation spec (both models must fit it).
        a, b: models or state dicts; tensors stay on their device.
        max_iter: cap on sweeps over all groups.
        seed: seeds the order in which groups are visited; the result is deterministic for it.
        init_perm: start here instead of the identity.

    Returns:
        ``{group: LongTensor}`` on A's device: apply it to B with :func:`apply_permutation`.
    """
    state_a, state_b = _matched_states(spec, a, b)
    device = next(iter(state_a.values())).device
    perm = identity_permutation(spec, device) if init_perm is None else {g: p.to(device) for g, p in init_perm.items()}
    _check_perm(spec, perm)

    # Only parameters take part: running statistics describe the data, not the learned function.
    members = {g: [(n, ax) for n, ax in pairs if n not in spec.buffers] for g, pairs in spec.groups.items()}
    # A's side of every product never changes: flatten it once.
    flat_a = {(n, ax): _flat_along(state_a[n], ax).float() for pairs in members.values() for n, ax in pairs}
    state_b = {n: t.to(device) for n, t in state_b.items()}
    groups = sorted(g for g in spec.sizes if members[g])
    gen = torch.Generator().manual_seed(seed)

    for iteration in range(max_iter):
        improved = False
        for idx in torch.randperm(len(groups), generator=gen).tolist():
            g = groups[idx]
            n_units = spec.sizes[g]
            similarity = torch.zeros(n_units, n_units, dtype=torch.float32, device=device)
            for name, axis in members[g]:
                wb = _flat_along(permute_tensor(spec, name, state_b[name], perm, except_axis=axis), axis).float()
                similarity += flat_a[(name, axis)] @ wb.T
            sim = similarity.double().cpu().numpy()
            rows, cols = linear_sum_assignment(sim, maximize=True)
            old = sim[np.arange(n_units), perm[g].cpu().numpy()].sum()
            new = sim[rows, cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perm[g] = torch.as_tensor(cols, dtype=torch.long, device=device)
                improved = True
        log.debug("weight matching sweep %d: improved=%s", iteration, improved)
        if not improved:
            break
    return perm
