"""Permutations learned on data: Git Re-Basin's straight-through estimator and Sinkhorn re-basin.

Both optimise the loss of the midpoint network ``(θ_A + π(θ_B)) / 2`` on training samples.
Each can run as published (``init="identity"``: an independent method) or as this tool's
refinement of weight matching (``init="weight"``: it starts from weight matching's permutation
and returns it when it finds none better). On BatchNorm networks the midpoint normalises by
batch statistics (``batchnorm="batch"``, as Peña et al. train it), or by the interpolated
running statistics (``"running"``, this tool's earlier choice).

* :func:`ste_matching` (Ainsworth et al. 2022, section 3.3): a free copy ``θ̃`` of the
  network's weights, starting at A's; every step projects it to the nearest permutation of B by weight matching,
  evaluates the midpoint with the projected weights and passes the gradient straight through to
  ``θ̃`` (Adam).
* :func:`sinkhorn_matching` (Peña et al. 2023, "Re-basin via implicit Sinkhorn
  differentiation"): per group a matrix of logits whose log-space Sinkhorn normalisation is a
  doubly stochastic relaxation of the permutation; B is permuted softly, the midpoint loss (or the
  weight distance ``Σ‖θ_A − P(θ_B)‖²``) is minimised with Adam while the temperature anneals, and
  each group is hardened to a permutation with the assignment solver at the end.

Which permutation is returned (``select``) is each paper's rule or this tool's: see the
functions. Both are deterministic for a seed on the CPU.
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
from .ops import Permutation, apply_permutation, identity_permutation, linear_sum_assignment, sum_tensors
from .sinkhorn import SINKHORN_GRADIENTS, SINKHORN_ORDERS, sinkhorn
from .spec import PermutationSpec
from .weight_matching import matched_states, weight_matching

StateDict = dict[str, torch.Tensor]


LEARNED_INITS = ("weight", "identity")
BATCHNORM_MODES = ("batch", "running")
STE_SELECTS = ("data", "batch")
SINKHORN_SELECTS = ("best", "last")
OPTIMIZERS = ("adam", "adamw", "sgd")


@torch.no_grad()
def midpoint_loss(
    model: nn.Module, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], data: TensorData,
    *, batch_size: int = 1000, batchnorm: str = "running",
) -> float:  # fmt: skip
    """Mean cross-entropy on ``data`` of the network with the midpoint of two state dicts.

    ``batchnorm``: ``running`` evaluates in eval mode (BatchNorm with the interpolated running
    statistics); ``batch`` normalises each batch of ``batch_size`` by its own statistics.
    """
    mid = interpolate_state(state_a, state_b, 0.5)
    _set_mode(model, batchnorm)
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


def _set_mode(model: nn.Module, batchnorm: str) -> None:
    """Eval mode; with ``batchnorm="batch"`` every BatchNorm normalises by its batch's statistics
    and leaves its running statistics alone (train mode without tracking)."""
    if batchnorm not in BATCHNORM_MODES:
        raise ValueError(f"batchnorm must be one of {', '.join(BATCHNORM_MODES)}, got {batchnorm!r}")
    model.eval()
    if batchnorm == "batch":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
                m.track_running_stats = False


def _optimizer(name: str, params, lr: float, momentum: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def _check_choice(name: str, value: str, known: tuple[str, ...]) -> None:
    if value not in known:
        raise ValueError(f"{name} must be one of {', '.join(known)}, got {value!r}")


def _check_data(data: TensorData, name: str) -> None:
    if len(data) == 0:
        raise ValueError(f"{name} needs training samples; got none")


def _start(spec, model_a, model_b, init_perm, seed, weight_options) -> Permutation:
    if init_perm is not None:
        return {g: p.clone() for g, p in init_perm.items()}
    return weight_matching(spec, model_a, model_b, seed=seed, **(weight_options or {}))


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
    init: str = "weight",
    optimizer: str = "adam",
    momentum: float = 0.9,
    select: str = "data",
    batchnorm: str = "batch",
    weight_options: Mapping[str, object] | None = None,
) -> Permutation:
    """Git Re-Basin's straight-through estimator: the permutation of B whose midpoint with A has the lowest loss.

    A free copy ``θ̃`` of the weights starts at ``θ_A``; every step projects it to the nearest
    permutation of B by weight matching (warm-started from the previous projection), evaluates
    the midpoint with the projected weights on one minibatch and passes the gradient straight
    through to ``θ̃``.

    Args:
        spec: the architecture's permutation spec.
        model_a, model_b: the two networks (not modified).
        data: training samples on the models' device.
        steps: optimiser steps on ``θ̃``; each costs a weight matching, a forward and a backward
            pass of one minibatch.
        lr, optimizer, momentum: the optimiser (``adam``, ``adamw`` or ``sgd``; ``momentum`` for sgd).
        batch_size: samples per step.
        seed: seeds the minibatch order and the weight matchings' visiting orders.
        eval_every: with ``select="data"``, every this many steps the current projection's
            midpoint loss is measured on all of ``data``.
        init_perm: start here (as with ``init="weight"``, without computing it).
        init: ``identity``: as Git Re-Basin (``mnist_mlp_ste2.py``): the first projection is a
            weight matching from the identity, and nothing else is a candidate; ``weight``: start
            from weight matching (with ``weight_options``), which is also the first candidate,
            so the result is never worse than it on ``data``.
        select: ``batch``: as Git Re-Basin, the projection of the lowest minibatch loss (measured
            at its step, before the update); ``data``: the projection of the lowest midpoint loss
            on all of ``data``, measured every ``eval_every`` steps.
        batchnorm: ``batch`` or ``running`` statistics in the midpoint (see the module).
        weight_options: ``start`` / ``restarts`` of the initial weight matching (``init="weight"``).
    """
    _check_data(data, "ste_matching")
    for name, value, known in (
        ("init", init, LEARNED_INITS),
        ("select", select, STE_SELECTS),
        ("batchnorm", batchnorm, BATCHNORM_MODES),
    ):
        _check_choice(name, value, known)
    state_a, state_b = matched_states(spec, model_a, model_b)
    work = _frozen_copy(model_a)
    _set_mode(work, batchnorm)
    trainable = [n for n, _ in model_a.named_parameters() if n in state_a]
    # θ̃ starts at θ_A (as in Git Re-Basin): its projection, the nearest permutation of B, is the
    # weight matching of A and B
    free = {n: state_a[n].detach().clone().float().requires_grad_(True) for n in trainable}
    opt = _optimizer(optimizer, free.values(), lr, momentum)
    batches = _Batches(data, batch_size, seed)
    best: tuple[float, Permutation | None] = (math.inf, None)
    seen: set[tuple] = set()
    if init == "weight" or init_perm is not None:
        perm = _start(spec, model_a, model_b, init_perm, seed, weight_options)
        if select == "data":
            best = (
                midpoint_loss(work, state_a, apply_permutation(spec, perm, state_b), data, batchnorm=batchnorm),
                perm,
            )
            seen.add(_key(perm))
    else:
        perm = identity_permutation(spec, next(iter(state_a.values())).device)
    for step in range(1, steps + 1):
        current = {n: t.detach() for n, t in free.items()}
        perm = weight_matching(spec, {**state_b, **current}, state_b, init_perm=perm, seed=seed + step)
        projected = apply_permutation(spec, perm, state_b)
        # the value of the projected weights, the gradient of the free ones
        through = {n: projected[n] + (free[n] - free[n].detach()).to(projected[n].dtype) for n in trainable}
        mid = interpolate_state(state_a, {**projected, **through}, 0.5)
        x, y = batches.next()
        loss = F.cross_entropy(functional_call(work, mid, (x,)).float(), y)
        if select == "batch" and float(loss.detach()) < best[0]:
            best = (float(loss.detach()), perm)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if select == "data" and (step % eval_every == 0 or step == steps):
            key = _key(perm)
            if key not in seen:
                seen.add(key)
                measured = midpoint_loss(work, state_a, projected, data, batchnorm=batchnorm)
                if measured < best[0]:
                    best = (measured, perm)
    chosen = best[1] if best[1] is not None else perm
    return {g: p.clone() for g, p in chosen.items()}


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
    order: str = "rows",
    gradient: str = "unrolled",
    seed: int = 0,
    init_perm: Mapping[str, torch.Tensor] | None = None,
    init: str = "weight",
    optimizer: str = "adam",
    select: str = "best",
    batchnorm: str = "batch",
    weight_options: Mapping[str, object] | None = None,
) -> Permutation:
    """Sinkhorn re-basin: learned doubly stochastic relaxations of every group's permutation, hardened at the end.

    Args:
        spec: the architecture's permutation spec.
        model_a, model_b: the two networks (not modified).
        data: training samples for the ``midpoint`` objective (unused by ``distance``).
        objective: ``midpoint`` (cross-entropy of ``(θ_A + P(θ_B))/2``) or ``distance``
            (``Σ‖θ_A − P(θ_B)‖²`` over the permuted parameters).
        steps: optimiser steps on the logits.
        lr, optimizer: the optimiser (``adam``, ``adamw`` as Peña et al., ``sgd``) and its rate.
        batch_size: samples per step (``midpoint``).
        temperatures: the Sinkhorn temperature anneals geometrically from the first to the second
            (Peña et al.: a constant 1).
        iters: Sinkhorn normalisation iterations per step.
        order: ``columns``: each iteration normalises the columns, then the rows, as Peña et al.;
            ``rows``: the rows first (this tool's first version).
        gradient: ``implicit``: the gradient of the Sinkhorn fixed point (one linear solve per
            group), as Peña et al.; ``unrolled``: backpropagation through the ``iters`` iterations
            (this tool's first version). See :mod:`repair_ray.permutation.sinkhorn`.
        seed: seeds the minibatch order, the identity start's noise and the weight matching.
        init_perm: start here (as ``init="weight"``, without computing it).
        init: ``identity``: as Peña et al. (``sinkhorn-rebasin`` examples), the logits start at
            the identity plus 0.1 × standard normal noise; ``weight``: peaked at weight
            matching's permutation (with ``weight_options``).
        select: ``last``: as Peña et al., the hardened final logits; ``best``: the better of the
            start and the hardened logits by the objective on ``data`` (never worse than the start).
        batchnorm: ``batch`` or ``running`` statistics in the midpoint (see the module).
        weight_options: ``start`` / ``restarts`` of the weight matching start.
    """
    for name, value, known in (
        ("init", init, LEARNED_INITS),
        ("select", select, SINKHORN_SELECTS),
        ("batchnorm", batchnorm, BATCHNORM_MODES),
        ("order", order, SINKHORN_ORDERS),
        ("gradient", gradient, SINKHORN_GRADIENTS),
    ):
        _check_choice(name, value, known)
    if objective not in SINKHORN_OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(SINKHORN_OBJECTIVES)}, got {objective!r}")
    if objective == "midpoint":
        if data is None:
            raise ValueError("the midpoint objective needs training samples (data)")
        _check_data(data, "sinkhorn_matching")
    state_a, state_b = matched_states(spec, model_a, model_b)
    device = next(iter(state_a.values())).device
    identity = init == "identity" and init_perm is None
    perm = (
        identity_permutation(spec, device)
        if identity
        else _start(spec, model_a, model_b, init_perm, seed, weight_options)
    )
    float_a, float_b = (
        {k: (v.float() if v.is_floating_point() else v) for k, v in st.items()} for st in (state_a, state_b)
    )
    logits = {}
    noise = torch.Generator().manual_seed(seed)
    for g, n in spec.sizes.items():
        if identity:  # Peña et al.: the identity plus a little noise
            start = torch.eye(n) + 0.1 * torch.randn(n, n, generator=noise)
        else:  # peaked at the start: at the first temperature its soft permutation is already near it
            start = torch.zeros(n, n)
            start[torch.arange(n), perm[g].cpu()] = 3.0
        logits[g] = start.to(device).requires_grad_(True)
    opt = _optimizer(optimizer, logits.values(), lr, 0.9)
    work = _frozen_copy(model_a)
    _set_mode(work, batchnorm)
    permuted = [n for n, axes in spec.axes.items() if n not in spec.buffers and any(e is not None for e in axes)]
    score: Callable[[Permutation], float]
    if objective == "midpoint":
        assert data is not None  # checked above
        batches = _Batches(data, batch_size, seed)

        def score(p: Permutation) -> float:
            return midpoint_loss(work, state_a, apply_permutation(spec, p, state_b), data, batchnorm=batchnorm)
    else:

        def score(p: Permutation) -> float:
            aligned = apply_permutation(spec, p, state_b)
            return float(sum(((state_a[n].double() - aligned[n].double()) ** 2).sum() for n in permuted))

    t0, t1 = temperatures
    for step in range(steps):
        tau = t0 * (t1 / t0) ** (step / max(steps - 1, 1))
        soft = {g: sinkhorn(z / tau, iters, order=order, gradient=gradient) for g, z in logits.items()}
        mixed = soft_permute(spec, float_b, soft)
        if objective == "midpoint":
            x, y = batches.next()
            # statistics buffers (BatchNorm's running mean and variance) are mixed but carry no
            # gradient: batch_norm cannot differentiate through them, and they are not weights
            mixed = {k: v.detach() if k in spec.buffers else v for k, v in mixed.items()}
            mid = interpolate_state(float_a, mixed, 0.5)
            loss = F.cross_entropy(functional_call(work, mid, (x,)).float(), y)
        else:
            loss = sum_tensors(((state_a[n].float() - mixed[n]) ** 2).sum() for n in permuted)
        opt.zero_grad()
        loss.backward()
        opt.step()
    hardened = {g: _harden(z) for g, z in logits.items()}
    if select == "last":
        return hardened
    candidates = [(score(perm), 0, perm), (score(hardened), 1, hardened)]
    return {g: p.clone() for g, p in min(candidates, key=lambda c: (c[0], c[1]))[2].items()}


__all__ = ["midpoint_loss", "sinkhorn_matching", "soft_permute", "ste_matching"]
