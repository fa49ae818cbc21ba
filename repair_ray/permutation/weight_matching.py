"""Weight matching (Ainsworth et al. 2022, "Git Re-Basin", algorithm 2).

Coordinate descent over permutation groups: for one group, with every other group's current
permutation applied to B, maximising ``sum_params <W_A, P W_B>`` over that group's permutation
is a linear assignment problem on ``sum_params W_A · W_Bᵀ`` (the group's axis first, all other
axes flattened). Visit the groups in a seeded random order and repeat until a whole sweep
improves nothing.

Speed: each parameter's product ``W_A · π(W_B)ᵀ`` is kept between visits and only brought up to
date (reused, corrected for the units whose neighbour permutation moved, or recomputed), and a
group whose similarity is unchanged since its last assignment is not solved again (the same
matrix gives the same assignment). Products are float32 on the models' device; only the
assignment runs on a float64 CPU copy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from .ops import Permutation, as_state, check_permutation, identity_permutation, linear_sum_assignment, permute_tensor
from .spec import AxisEntry, PermutationSpec, SpecError, axis_index, entry_groups, unit_positions

log = logging.getLogger(__name__)

# where the coordinate descent starts: Git Re-Basin's identity, or a first pass input to output
WEIGHT_STARTS = ("forward", "identity")


def matched_states(
    spec: PermutationSpec,
    a: nn.Module | Mapping[str, torch.Tensor],
    b: nn.Module | Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The state dicts of A and B, each checked against ``spec`` (a SpecError names the model that does not fit)."""
    state_a, state_b = as_state(a), as_state(b)
    for label, state in (("A", state_a), ("B", state_b)):
        try:
            spec.validate(state)
        except SpecError as err:
            raise SpecError(f"model {label} does not fit the permutation spec: {err}") from None
    return state_a, state_b


def matching_objective(
    spec: PermutationSpec,
    a: nn.Module | Mapping[str, torch.Tensor],
    b: nn.Module | Mapping[str, torch.Tensor],
    perm: Mapping[str, torch.Tensor],
) -> float:
    """``sum_params <W_A, π(W_B)>`` over the parameters the spec permutes: what weight matching maximises."""
    state_a, state_b = matched_states(spec, a, b)
    total = 0.0
    for name in _permuted_params(spec):
        wb = permute_tensor(spec, name, state_b[name], perm)
        total += float((state_a[name].double() * wb.double()).sum())
    return total


def _permuted_params(spec: PermutationSpec) -> list[str]:
    return [n for n, axes in spec.axes.items() if n not in spec.buffers and any(e is not None for e in axes)]


class _Term:
    """One parameter's share of a group's similarity: ``flat(W_A) · flat(π(W_B))ᵀ`` along the group's axis.

    ``π`` applies every other group's current permutation. The product is kept between visits
    and brought up to date lazily: reused while the other groups' permutations are unchanged,
    corrected for the changed units only when few of one group's units moved, recomputed
    otherwise. A parameter no other group acts on (a bias, a norm's affine) is computed once.
    Both tensors are kept as (units, occurrences, other axes...): a unit's occurrences are its
    repeats along a segmented axis (one for a plain axis, H·W for a flattened feature map).
    """

    # A correction costs (changed units / all units) of a full product, plus two gathers.
    MAX_CHANGED_FRACTION = 0.5

    def __init__(
        self, spec: PermutationSpec, name: str, axis: int, group: str, a: torch.Tensor, b: torch.Tensor
    ) -> None:
        entry = spec.axes[name][axis]
        units = spec.sizes[group]
        self.a, self.b = (self._rows(t, entry, axis, group, units) for t in (a, b))
        self.flat_a = self.a.reshape(units, -1)
        # the other permuted axes, numbered as in the (units, occurrences, ...) tensors
        self.others = [
            ((i if i < axis else i - 1) + 2, e) for i, e in enumerate(spec.axes[name]) if e is not None and i != axis
        ]
        self.value: torch.Tensor | None = None
        self.basis: dict[str, torch.Tensor] = {}  # the other groups' permutations ``value`` is for
        self.version = 0  # counts the changes of ``value``

    @staticmethod
    def _rows(t: torch.Tensor, entry: AxisEntry, axis: int, group: str, units: int) -> torch.Tensor:
        if isinstance(entry, str):
            return t.movedim(axis, 0).unsqueeze(1).contiguous()
        positions = unit_positions(entry, group, units, t.device)
        picked = t.index_select(axis, positions.reshape(-1)).movedim(axis, 0)
        return picked.reshape(units, positions.shape[1], *picked.shape[1:]).contiguous()

    def _permuted_b(self, perm: Mapping[str, torch.Tensor], unmoved: set[str], skip: int | None = None) -> torch.Tensor:
        wb = self.b
        for i, entry in self.others:
            if i != skip and not unmoved.issuperset(entry_groups(entry)):
                wb = wb.index_select(i, axis_index(entry, perm, wb.device))
        return wb

    def product(self, perm: Mapping[str, torch.Tensor], unmoved: set[str]) -> torch.Tensor:
        """The product for ``perm``; ``unmoved``: the groups whose permutation is the identity."""
        if self.value is not None:
            moved = [(i, e) for i, e in self.others if any(perm[g] is not self.basis[g] for g in entry_groups(e))]
            if not moved:
                return self.value
            i, g = moved[0]
            if len(moved) == 1 and isinstance(g, str):
                old, new = self.basis[g], perm[g]
                units = torch.nonzero(old != new).squeeze(1)
                if units.numel() <= self.MAX_CHANGED_FRACTION * new.numel():
                    if units.numel():
                        # Only the moved slices of B's axis i change: add their new minus their old share.
                        wb = self._permuted_b(perm, unmoved, skip=i)
                        delta = wb.index_select(i, new[units]) - wb.index_select(i, old[units])
                        part_a = self.a.index_select(i, units)
                        self.value.addmm_(part_a.reshape(len(part_a), -1), delta.reshape(len(delta), -1).T)
                        self.version += 1
                    self.basis[g] = new
                    return self.value
        wb = self._permuted_b(perm, unmoved)
        self.value = self.flat_a @ wb.reshape(len(wb), -1).T
        self.basis = {g: perm[g] for _, e in self.others for g in entry_groups(e)}
        self.version += 1
        return self.value


@torch.no_grad()
def weight_matching(
    spec: PermutationSpec,
    a: nn.Module | Mapping[str, torch.Tensor],
    b: nn.Module | Mapping[str, torch.Tensor],
    *,
    max_iter: int = 100,
    seed: int = 0,
    init_perm: Mapping[str, torch.Tensor] | None = None,
    start: str = "forward",
    restarts: int = 1,
) -> Permutation:
    """The permutation of B whose weights best match A's (Git Re-Basin weight matching).

    Args:
        spec: the architecture's permutation spec (both models must fit it).
        a, b: models or state dicts; tensors stay on their device.
        max_iter: cap on sweeps over all groups.
        seed: seeds the order in which groups are visited; the result is deterministic for it.
        init_perm: start here instead of the identity.
        start: ``forward`` (the default) first matches the groups once from the input to
            the output, each on the parameters whose other axes are already matched (a layer is
            matched after the one feeding it), then goes on with the random sweeps; it reaches
            higher objectives in fewer sweeps than ``identity``, which starts the coordinate
            descent from the identity right away (Git Re-Basin's algorithm 2 exactly;
            BENCHMARKS.md). With ``init_perm`` the descent starts there and there is no forward pass.
        restarts: run the descent this many times, with the visiting orders of seeds ``seed``,
            ``seed + 1``, ..., and keep the permutation of the highest objective (the first of
            equals). 1: one descent, as the paper.

    Returns:
        ``{group: LongTensor}`` on A's device: apply it to B with :func:`apply_permutation`.
    """
    if start not in WEIGHT_STARTS:
        raise ValueError(f"start must be one of {', '.join(WEIGHT_STARTS)}, got {start!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be a positive integer, got {restarts!r}")
    state_a, state_b = matched_states(spec, a, b)
    perm = _descend(spec, state_a, state_b, max_iter, seed, init_perm, start)
    if restarts == 1:
        return perm
    best = (matching_objective(spec, state_a, state_b, perm), perm)
    for k in range(1, restarts):
        perm = _descend(spec, state_a, state_b, max_iter, seed + k, init_perm, start)
        value = matching_objective(spec, state_a, state_b, perm)
        if value > best[0]:
            best = (value, perm)
    return best[1]


def _descend(spec, state_a, state_b, max_iter, seed, init_perm, start) -> Permutation:
    """One coordinate descent of :func:`weight_matching` (one visiting order)."""
    device = next(iter(state_a.values())).device
    perm = identity_permutation(spec, device) if init_perm is None else {g: p.to(device) for g, p in init_perm.items()}
    check_permutation(spec, perm)

    # Only parameters take part: running statistics describe the data, not the learned function.
    members = {g: [(n, ax) for n, ax in pairs if n not in spec.buffers] for g, pairs in spec.groups.items()}
    names = {n for pairs in members.values() for n, _ in pairs}
    a32 = {n: state_a[n].float() for n in names}
    b32 = {n: state_b[n].to(device).float() for n in names}
    terms = {(n, ax, g): _Term(spec, n, ax, g, a32[n], b32[n]) for g, pairs in members.items() for n, ax in pairs}
    groups = sorted(g for g in spec.sizes if members[g])
    forward = [g for g in spec.sizes if members[g]]  # a spec lists its groups from input to output
    unmoved = {g for g in groups if torch.equal(perm[g], torch.arange(spec.sizes[g], device=device))}
    gen = torch.Generator().manual_seed(seed)
    # The versions of a group's terms at its last assignment: the same similarity again gives the
    # same assignment (which was accepted or rejected then), so the visit can change nothing.
    solved: dict[str, tuple[int, ...]] = {}

    if start == "forward" and init_perm is None:
        _forward_sweep(spec, members, terms, perm, unmoved, forward)
    for iteration in range(max_iter):
        improved = False
        for idx in torch.randperm(len(groups), generator=gen).tolist():
            g = groups[idx]
            n_units = spec.sizes[g]
            products = [terms[(n, ax, g)].product(perm, unmoved) for n, ax in members[g]]
            versions = tuple(terms[(n, ax, g)].version for n, ax in members[g])
            if solved.get(g) == versions:
                continue
            solved[g] = versions
            similarity = torch.zeros(n_units, n_units, dtype=torch.float32, device=device)
            for product in products:
                similarity += product
            sim = similarity.double().cpu().numpy()
            rows, cols = linear_sum_assignment(sim, maximize=True)
            old = sim[np.arange(n_units), perm[g].cpu().numpy()].sum()
            new = sim[rows, cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perm[g] = torch.as_tensor(cols, dtype=torch.long, device=device)
                unmoved.discard(g)
                improved = True
        log.debug("weight matching sweep %d: improved=%s", iteration, improved)
        if not improved:
            break
    return perm


def _assign(similarity: torch.Tensor) -> np.ndarray:
    return linear_sum_assignment(similarity.double().cpu().numpy(), maximize=True)[1]


def _forward_sweep(spec, members, terms, perm, unmoved, forward) -> None:
    """Match each group once, input to output, on the parameters whose other groups are matched already."""
    device = next(iter(perm.values())).device
    done: set[str] = set()
    for g in forward:
        usable = [
            (n, ax)
            for n, ax in members[g]
            if all(h == g or h in done for i, e in enumerate(spec.axes[n]) if i != ax for h in entry_groups(e))
        ]
        similarity = sum(terms[(n, ax, g)].product(perm, unmoved) for n, ax in usable or members[g])
        cols = _assign(similarity)
        if not np.array_equal(cols, np.arange(len(cols))):
            perm[g] = torch.as_tensor(cols, dtype=torch.long, device=device)
            unmoved.discard(g)
        done.add(g)
