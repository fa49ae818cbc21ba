"""Permutations learned on data: Git Re-Basin's straight-through estimator and Sinkhorn re-basin.

Both start from weight matching and optimise the loss of the midpoint network
``(θ_A + π(θ_B)) / 2`` on training samples (the sweep's statistics samples):

* :func:`ste_matching` (Ainsworth et al. 2022, section 3.3): a free copy ``θ̃`` of the
  network's weights, starting at A's; every step projects it to the nearest permutation of B by weight matching,
  evaluates the midpoint with the projected weights and passes the gradient straight through to
  ``θ̃`` (Adam).
* :func:`sinkhorn_matching` (Peña et al. 2023, "Re-basin via implicit Sinkhorn
  differentiation"): per group a matrix of logits whose log-space Sinkhorn normalisation is a
  doubly stochastic relaxation of the permutation; B is permuted softly, the midpoint loss (or the
  weight distance ``Σ‖θ_A − P(θ_B)‖²``) is minimised with Adam while the temperature anneals, and
  each group is hardened to a permutation with the assignment solver at the end.

Each returns the best permutation it met, measured on all of ``data`` by the objective it
optimises (the weight-matching start included), so it is never worse than its start there. Both
are deterministic for a seed on the CPU.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..datasets import TensorData
from ..interpolation import interpolate_state
from .ops import Permutation, apply_permutation, linear_sum_assignment
from .spec import PermutationSpec
from .weight_matching import _matched_states, weight_matching

StateDict = dict[str, torch.Tensor]


@torch.no_grad()
def midpoint_loss(
    model: nn.Module, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], data: TensorData,
    *, batch_size: int = 1000,
) -> float:  # fmt: skip
    """Mean cross-entropy on ``data`` of the network with the midpoint of two state dicts (eval mode)."""
    mid = interpolate_state(state_a, state_b, 0.5)
    model.eval()
    total, n = 0.0, 0
    for x, y in data.batches(batch_size):
        logits = functional_call(model, mid, (x,))
        total += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        n += len(y)
    return total / max(n, 1)


class _Batches:
    """Seeded minibatches of ``data``, epoch after epoch."""

    def __init__(self, data: TensorData, batch_size: int, seed: int) -> None:
        self.data, self.batch_size = data, min(batch_size, len(data))
        self.gen = torch.Generator().manual_seed(seed)
        self.order: list[torch.Tensor] = []

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.order:
            perm = torch.randperm(len(self.data), generator=self.gen).to(self.data.x.device)
            self.order = list(perm.split(self.batch_size))
            if len(self.order) > 1 and len(self.order[-1]) < self.batch_size:
                self.order.pop()
        idx = self.order.pop(0)
        return self.data.x[idx], self.data.y[idx]


def _as_float(state: Mapping[str, torch.Tensor]) -> StateDict:
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def _frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode to run other weights through (``functional_call``), without gradients."""
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(False)
    return work


def _check_data(data: TensorData, name: str) -> None:
    if len(data) == 0:
        raise ValueError(f"{name} needs training samples; got none")


def _start(spec, model_a, model_b, init_perm, seed) -> Permutation:
    if init_perm is not None:
        return {g: p.clone() for g, p in init_perm.items()}
    return weight_matching(spec, model_a, model_b, seed=seed)


def _key(perm: Mapping[str, torch.Tensor]) -> tuple:
    return tuple((g, tuple(p.tolist())) for g, p in sorted(perm.items()))


def ste_matching(
    spec: PermutationSpec,
    model_a: nn.Module,
    model_b: nn.Module,
    data: TensorData,
    *,
    steps: int = 200,
    lr: float = 3e-3,
    batch_size: int = 500,
    seed: int = 0,
    eval_every: int = 10,
    init_perm: Mapping[str, torch.Tensor] | None = None,
) -> Permutation:
    """Git Re-Basin's straight-through estimator: the permutation of B whose midpoint with A has the lowest loss.

    Args:
        spec: the architecture's permutation spec.
        model_a, model_b: the two networks (not modified).
        data: training samples on the models' device (the sweep passes its statistics samples).
        steps: Adam steps on the free weights ``θ̃``; each costs a weight matching (warm-started
            from the previous projection), a forward and a backward pass of one minibatch.
        lr: Adam's learning rate.
        batch_size: samples per step.
        seed: seeds the minibatch order (and the weight matching start).
        eval_every: every this many steps the current projection's midpoint loss is measured on
            all of ``data``; the best permutation measured is returned.
        init_perm: start here instead of weight matching.
    """
    _check_data(data, "ste_matching")
    state_a, state_b = _matched_states(spec, model_a, model_b)
    perm = _start(spec, model_a, model_b, init_perm, seed)
    work = _frozen_copy(model_a)
    trainable = [n for n, _ in model_a.named_parameters() if n in state_a]
    # θ̃ starts at B as weight matching aligned it, so the first projection is the start
    start = apply_permutation(spec, perm, state_b)
    # θ̃ starts at θ_A (as in Git Re-Basin): its projection, the nearest permutation of B, is the
    # weight matching of A and B, so the search starts there
    free = {n: state_a[n].detach().clone().float().requires_grad_(True) for n in trainable}
    optimizer = torch.optim.Adam(free.values(), lr=lr)
    batches = _Batches(data, batch_size, seed)
    best = (midpoint_loss(work, state_a, start, data), perm)
    seen = {_key(perm)}
    for step in range(1, steps + 1):
        current = {n: t.detach() for n, t in free.items()}
        perm = weight_matching(spec, {**state_b, **current}, state_b, init_perm=perm, seed=seed + step)
        projected = apply_permutation(spec, perm, state_b)
        # the value of the projected weights, the gradient of the free ones
        through = {n: projected[n] + (free[n] - free[n].detach()).to(projected[n].dtype) for n in trainable}
        mid = interpolate_state(state_a, {**projected, **through}, 0.5)
        x, y = batches.next()
        loss = F.cross_entropy(functional_call(work, mid, (x,)).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            key = _key(perm)
            if key not in seen:
                seen.add(key)
                measured = midpoint_loss(work, state_a, projected, data)
                if measured < best[0]:
                    best = (measured, perm)
    return {g: p.clone() for g, p in best[1].items()}


def _log_sinkhorn(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """A doubly stochastic matrix from ``logits`` by alternating row and column normalisation (in log space)."""
    log_p = logits
    for _ in range(iters):
        log_p = log_p - torch.logsumexp(log_p, dim=1, keepdim=True)
        log_p = log_p - torch.logsumexp(log_p, dim=0, keepdim=True)
    return log_p.exp()


def _soft_axis(tensor: torch.Tensor, axis: int, entry, soft: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``tensor`` with the units along ``axis`` mixed by each group's soft permutation (row i ← Σ_j S[i, j]·unit j)."""
    if isinstance(entry, str):
        moved = tensor.movedim(axis, 0)
        mixed = (soft[entry] @ moved.reshape(moved.shape[0], -1)).reshape(moved.shape)
        return mixed.movedim(0, axis)
    parts, offset = [], 0
    for s in entry:
        size = s.units * s.inner
        part = tensor.narrow(axis, offset, size)
        if s.group is not None:
            moved = part.movedim(axis, 0)
            rest = moved.shape[1:]
            grouped = moved.reshape(s.units, s.inner * math.prod(rest))
            part = (soft[s.group] @ grouped).reshape(size, *rest).movedim(0, axis)
        parts.append(part)
        offset += size
    return torch.cat(parts, dim=axis)


def soft_permute(
    spec: PermutationSpec, state: Mapping[str, torch.Tensor], soft: Mapping[str, torch.Tensor]
) -> StateDict:
    """Every entry of ``state`` with every permuted axis mixed by its group's doubly stochastic matrix.

    With permutation matrices (``S[i, p[i]] = 1``) this is :func:`apply_permutation`.
    """
    out = {}
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            out[name] = tensor
            continue
        t = tensor
        for axis, entry in enumerate(spec.axes[name]):
            if entry is not None:
                t = _soft_axis(t, axis, entry, soft)
        out[name] = t
    return out


def _harden(logits: torch.Tensor) -> torch.Tensor:
    _, cols = linear_sum_assignment(logits.detach().double().cpu().numpy(), maximize=True)
    return torch.as_tensor(np.asarray(cols), dtype=torch.long, device=logits.device)


SINKHORN_OBJECTIVES = ("midpoint", "distance")


def sinkhorn_matching(
    spec: PermutationSpec,
    model_a: nn.Module,
    model_b: nn.Module,
    data: TensorData | None,
    *,
    objective: str = "midpoint",
    steps: int = 200,
    lr: float = 0.1,
    batch_size: int = 500,
    temperatures: tuple[float, float] = (1.0, 0.05),
    iters: int = 20,
    seed: int = 0,
    init_perm: Mapping[str, torch.Tensor] | None = None,
) -> Permutation:
    """Sinkhorn re-basin: learned doubly stochastic relaxations of every group's permutation, hardened at the end.

    Args:
        spec: the architecture's permutation spec.
        model_a, model_b: the two networks (not modified).
        data: training samples for the ``midpoint`` objective (unused by ``distance``).
        objective: ``midpoint`` (cross-entropy of ``(θ_A + P(θ_B))/2``) or ``distance``
            (``Σ‖θ_A − P(θ_B)‖²`` over the permuted parameters).
        steps: Adam steps on the logits.
        lr: Adam's learning rate on the logits.
        batch_size: samples per step (``midpoint``).
        temperatures: the Sinkhorn temperature anneals geometrically from the first to the second.
        iters: Sinkhorn normalisation iterations per step.
        seed: seeds the minibatch order (and the weight matching start).
        init_perm: start here instead of weight matching (the logits start peaked at it).
    """
    if objective not in SINKHORN_OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(SINKHORN_OBJECTIVES)}, got {objective!r}")
    if objective == "midpoint":
        if data is None:
            raise ValueError("the midpoint objective needs training samples (data)")
        _check_data(data, "sinkhorn_matching")
    state_a, state_b = _matched_states(spec, model_a, model_b)
    perm = _start(spec, model_a, model_b, init_perm, seed)
    device = next(iter(state_a.values())).device
    float_a, float_b = (
        {k: (v.float() if v.is_floating_point() else v) for k, v in st.items()} for st in (state_a, state_b)
    )
    # logits peaked at the start: at the first temperature its soft permutation is already near it
    logits = {}
    for g, n in spec.sizes.items():
        start = torch.zeros(n, n, device=device)
        start[torch.arange(n, device=device), perm[g].to(device)] = 3.0
        logits[g] = start.requires_grad_(True)
    optimizer = torch.optim.Adam(logits.values(), lr=lr)
    work = _frozen_copy(model_a)
    permuted = [n for n, axes in spec.axes.items() if n not in spec.buffers and any(e is not None for e in axes)]
    score: Callable[[Permutation], float]
    if objective == "midpoint":
        batches = _Batches(data, batch_size, seed)

        def score(p: Permutation) -> float:
            return midpoint_loss(work, state_a, apply_permutation(spec, p, state_b), data)
    else:

        def score(p: Permutation) -> float:
            aligned = apply_permutation(spec, p, state_b)
            return float(sum(((state_a[n].double() - aligned[n].double()) ** 2).sum() for n in permuted))

    t0, t1 = temperatures
    for step in range(steps):
        tau = t0 * (t1 / t0) ** (step / max(steps - 1, 1))
        soft = {g: _log_sinkhorn(z / tau, iters) for g, z in logits.items()}
        mixed = soft_permute(spec, float_b, soft)
        if objective == "midpoint":
            x, y = batches.next()
            # statistics buffers (BatchNorm's running mean and variance) are mixed but carry no
            # gradient: batch_norm cannot differentiate through them, and they are not weights
            mixed = {k: v.detach() if k in spec.buffers else v for k, v in mixed.items()}
            mid = interpolate_state(float_a, mixed, 0.5)
            loss = F.cross_entropy(functional_call(work, mid, (x,)).float(), y)
        else:
            loss = sum(((state_a[n].float() - mixed[n]) ** 2).sum() for n in permuted)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    hardened = {g: _harden(z) for g, z in logits.items()}
    candidates = [(score(perm), 0, perm), (score(hardened), 1, hardened)]
    return {g: p.clone() for g, p in min(candidates, key=lambda c: (c[0], c[1]))[2].items()}


__all__ = ["midpoint_loss", "sinkhorn_matching", "soft_permute", "ste_matching"]
