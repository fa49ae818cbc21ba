"""RESET and REPAIR (Jordan et al., "REPAIR: REnormalizing Permuted Activations for
Interpolation Repair", ICLR 2023).

Both work in ONE forward pass over the statistics data:

* RESET: every BatchNorm normalises each batch with the batch's own statistics (train mode)
  while float64 accumulators collect the exact mean and population variance of its input over
  all samples; these become the running statistics.
* REPAIR: at every REPAIR point of the spec (the pre-activation: a norm layer's output, or a
  conv/linear output in nets without norm) a hook renormalises each batch's channels to the
  target ``μ = (1-α)μA + αμB``, ``σ = (1-α)σA + ασB``, so later layers see the corrected
  earlier ones, and accumulates the statistics of the raw output. After the pass the affine
  ``a = σ/sqrt(σ_raw² + ε), b = μ - a·μ_raw`` (ε as in BatchNorm) is folded into the point's
  weight and bias, leaving a plain model of the same architecture.

With all statistics samples in one batch both are exact; with smaller batches they carry the
usual batch-statistics noise of the REPAIR reference code.

Which points a correction renormalises (:func:`correction_plan`, one rule for every path):

* ``reset``: none; every BatchNorm's statistics are recomputed.
* ``repair``, the paper's procedure for the network's family: without BatchNorm, every REPAIR
  point (each conv/linear output before its nonlinearity, or a LayerNorm's output) and, in a
  residual net, each block's output and the classifier's input; with BatchNorm, RESET plus each
  residual block's output (after the add and its ReLU) and nothing else (the REPAIR notebooks'
  ResNet-50 procedure, ``Merge-ResNet50-ImageNet.ipynb``; a BatchNorm net without residual
  blocks gets RESET alone, as the paper prescribes for BatchNorm nets).
* ``repair_bn`` (BatchNorm nets only): this tool's earlier variant: RESET, and every BatchNorm
  output renormalised to the interpolated endpoints' statistics, plus the block outputs and the
  classifier's input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .datasets import ImageFiles, TensorData
from .hooks import ChannelMoments, Moments, channel_moments, channel_view, channels_last_2d, output_hooks
from .names import BATCHNORM_ONLY, CORRECTIONS
from .permutation.spec import PermutationSpec

# REPAIR divides by sqrt(raw variance + EPS), as BatchNorm does: a near-dead channel (raw std ~0)
# is not amplified without bound (the gain is at most target std / sqrt(EPS)).
EPS = 1e-5

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BATCHNORMS) and m.track_running_stats]


def batchnorm_names(model: nn.Module) -> list[str]:
    """The names of the BatchNorms whose running statistics RESET replaces (those of :func:`batchnorms`)."""
    return [n for n, m in model.named_modules() if isinstance(m, _BATCHNORMS) and m.track_running_stats]


def has_batchnorm(model: nn.Module) -> bool:
    return bool(batchnorms(model))


@dataclass(frozen=True)
class CorrectionPlan:
    """What one correction does: recompute BatchNorm statistics (``reset``), renormalise the
    ``points`` (folded into their weights), and renormalise the ``carried`` points (an affine
    the network carries, see :attr:`PermutationSpec.carried_points`)."""

    reset: bool
    points: tuple[str, ...]
    carried: tuple[str, ...]

    @property
    def renormalised(self) -> tuple[str, ...]:
        return (*self.points, *self.carried)


def correction_plan(correction: str, spec: PermutationSpec, *, batchnorm: bool) -> CorrectionPlan:
    """The :class:`CorrectionPlan` of ``correction`` on a network with ``spec`` (see the module's docstring)."""
    if correction == "none":
        return CorrectionPlan(False, (), ())
    if correction in BATCHNORM_ONLY and not batchnorm:
        raise ValueError(f"{correction} needs a network with BatchNorm layers; this one has none")
    if correction == "reset":
        return CorrectionPlan(True, (), ())
    if correction == "repair_bn":
        return CorrectionPlan(True, spec.repair_points, tuple(spec.carried_points))
    if correction == "repair":
        if batchnorm:
            return CorrectionPlan(True, (), tuple(p for p in spec.carried_points if p != spec.classifier_input))
        return CorrectionPlan(False, spec.repair_points, tuple(spec.carried_points))
    raise ValueError(f"unknown correction {correction!r}; expected one of {', '.join(CORRECTIONS)}")


def repair_moments(
    model: nn.Module, data: TensorData | ImageFiles, spec: PermutationSpec, *, batch_size: int = 1000
) -> dict[str, Moments]:
    """Per-channel mean and std at every point REPAIR corrects, of an endpoint network (one pass)."""
    return channel_moments(model, data, spec.corrected_points, axes=spec.channel_axes, batch_size=batch_size)


def target_moments(a: Mapping[str, Moments], b: Mapping[str, Moments], alpha: float) -> dict[str, Moments]:
    """REPAIR's targets: the interpolation of the endpoints' means and of their stds (not variances)."""
    return {
        k: Moments((1 - alpha) * a[k].mean + alpha * b[k].mean, (1 - alpha) * a[k].std + alpha * b[k].std) for k in a
    }


def _batch_moments(y: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    flat = channels_last_2d(y, axis)
    return flat.mean(0), flat.std(0, unbiased=False)


def safe_scale(target_std: torch.Tensor, raw_std: torch.Tensor) -> torch.Tensor:
    """REPAIR's gain ``σ / sqrt(σ_raw² + ε)``: a near-dead channel is not amplified without bound."""
    return target_std / (raw_std * raw_std + EPS).sqrt()


@torch.no_grad()
def _fold_affine(module: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Replace ``module``'s output y by ``scale·y + shift`` per output channel, in its own weights."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if weight is None or bias is None:
        raise ValueError(f"cannot fold a REPAIR correction into {type(module).__name__}: it needs a weight and a bias")
    scale, shift = scale.to(weight.dtype), shift.to(weight.dtype)
    weight.mul_(scale.view(-1, *([1] * (weight.dim() - 1))))
    bias.mul_(scale).add_(shift)


@torch.no_grad()
def _corrective_pass(
    model: nn.Module,
    data: TensorData | ImageFiles,
    *,
    reset: bool,
    targets: Mapping[str, Moments] | None,
    batch_size: int,
    axes: Mapping[str, int] | None = None,
    carried: frozenset[str] = frozenset(),
) -> None:
    bns = batchnorms(model) if reset else []
    bn_acc = {id(m): ChannelMoments() for m in bns}
    wanted: Mapping[str, Moments] = targets or {}
    point_acc = {k: ChannelMoments() for k in wanted}
    handles = [m.register_forward_pre_hook(lambda m, inp: bn_acc[id(m)].update(inp[0])) for m in bns]

    axes = axes or {}

    def renormalise(name: str, y: torch.Tensor) -> torch.Tensor:
        axis = axes.get(name, 1)
        point_acc[name].update(y, axis)
        mean, std = _batch_moments(y, axis)
        tgt = wanted[name]
        scale = safe_scale(tgt.std.to(y.device), std.double()).to(y.dtype)
        shift = tgt.mean.to(y.device).to(y.dtype) - scale * mean
        return y * channel_view(scale, y, axis) + channel_view(shift, y, axis)

    model.eval()
    for m in bns:
        m.train()  # normalise each batch by its own statistics: the running ones are being replaced
    try:
        with output_hooks(model, list(wanted), renormalise):
            for x, _ in data.batches(batch_size):
                model(x)
    finally:
        for h in handles:
            h.remove()
        model.eval()
    for m in bns:
        acc = bn_acc[id(m)]
        running_mean, running_var, tracked = m.running_mean, m.running_var, m.num_batches_tracked
        assert running_mean is not None and running_var is not None and tracked is not None  # track_running_stats
        running_mean.copy_(acc.mean.to(running_mean.dtype))
        running_var.copy_(acc.var.to(running_var.dtype))
        tracked.fill_(0)
    if wanted:
        modules = dict(model.named_modules())
        for name, tgt in wanted.items():
            raw = point_acc[name]
            scale = safe_scale(tgt.std.to(raw.std.device), raw.std)
            shift = tgt.mean.to(raw.mean.device) - scale * raw.mean
            if name in carried:
                _carry_affine(modules[name], scale, shift, axes.get(name, 1))
            else:
                _fold_affine(modules[name], scale, shift)


def _carry_affine(module: nn.Module, scale: torch.Tensor, shift: torch.Tensor, axis: int) -> None:
    """Make ``module``'s output ``scale·y + shift`` per channel with a forward hook that stays on it."""

    def affine(_module: nn.Module, _inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        return out * channel_view(scale.to(out.device), out, axis) + channel_view(shift.to(out.device), out, axis)

    affine._repair_ray_carried = True  # type: ignore[attr-defined]
    module.register_forward_hook(affine)


def remove_carried(model: nn.Module) -> nn.Module:
    """Take off the per-channel affines an earlier :func:`repair` left at the carried points."""
    for m in model.modules():
        for key, hook in list(m._forward_hooks.items()):
            if getattr(hook, "_repair_ray_carried", False):
                del m._forward_hooks[key]
    return model


def reset_batchnorm(model: nn.Module, data: TensorData | ImageFiles, *, batch_size: int = 1000) -> nn.Module:
    """RESET: recompute every BatchNorm's running statistics over ``data`` (in place; returns ``model``).

    The running mean and variance become the exact mean and population variance of each
    BatchNorm's input over all samples (accumulated in float64), with earlier BatchNorms
    normalising by batch statistics as in training. In one batch this is exact.
    """
    if not has_batchnorm(model):
        raise ValueError("RESET needs a network with BatchNorm layers; this one has none")
    remove_carried(model)
    _corrective_pass(model, data, reset=True, targets=None, batch_size=batch_size)
    return model


def repair(
    model: nn.Module,
    a: nn.Module | Mapping[str, Moments],
    b: nn.Module | Mapping[str, Moments],
    data: TensorData | ImageFiles,
    *,
    alpha: float,
    spec: PermutationSpec,
    batch_size: int = 1000,
    correction: str = "repair",
) -> nn.Module:
    """REPAIR the interpolated network ``model`` in place (and return it).

    Args:
        model: the interpolated network ``θ(α)`` of A and aligned B.
        a, b: the endpoint networks, or their :func:`repair_moments` computed once beforehand.
        data: training samples for the statistics (on the model's device).
        alpha: the interpolation coefficient of ``model``.
        spec: the permutation spec; its ``repair_points`` and ``carried_points`` say where to correct.
        batch_size: samples per forward pass; all of ``data`` in one batch makes REPAIR exact.
        correction: ``repair`` (the paper's procedure for the network's family) or ``repair_bn``
            (BatchNorm nets: the BatchNorm outputs too); see :func:`correction_plan`.

    On a BatchNorm network REPAIR includes RESET, done in the same pass.
    """
    plan = correction_plan(correction, spec, batchnorm=has_batchnorm(model))
    moments_a = repair_moments(a, data, spec, batch_size=batch_size) if isinstance(a, nn.Module) else a
    moments_b = repair_moments(b, data, spec, batch_size=batch_size) if isinstance(b, nn.Module) else b
    targets = target_moments(moments_a, moments_b, alpha)
    remove_carried(model)  # a model repaired before is corrected afresh
    _corrective_pass(
        model,
        data,
        reset=plan.reset,
        targets={p: targets[p] for p in plan.renormalised},
        batch_size=batch_size,
        axes=spec.channel_axes,
        carried=frozenset(plan.carried),
    )
    return model
