"""Linear interpolation of weights, evaluation, and barrier metrics of interpolation curves."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .datasets import ImageFiles, TensorData
from .hooks import MomentRecorder, Recorders, output_hooks


def interpolate_state(
    state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1-α)·θA + α·θB`` for every floating entry.

    Integer buffers (BatchNorm's ``num_batches_tracked``) are interpolated and rounded.
    """
    return {name: tensor[0] for name, tensor in interpolate_states(state_a, state_b, [alpha]).items()}


def interpolate_states(
    state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], alphas: Sequence[float]
) -> dict[str, torch.Tensor]:
    """:func:`interpolate_state` at every α of ``alphas``, stacked along a new first dimension: one
    ``torch.lerp`` per entry (a tensor weight computes as a number does: slice k is bit for bit the
    state at ``alphas[k]``)."""
    if set(state_a) != set(state_b):
        diff = sorted(set(state_a) ^ set(state_b))
        raise KeyError(f"state dicts differ: {diff[0]!r} is only in one of them")
    out = {}
    for k, ta in state_a.items():
        tb = state_b[k].to(ta.device)
        if ta.shape != tb.shape:
            raise ValueError(f"{k!r} has shape {tuple(ta.shape)} in A but {tuple(tb.shape)} in B")
        dtype = ta.dtype if ta.is_floating_point() else torch.float64
        weight = torch.tensor(list(alphas), dtype=dtype, device=ta.device).view(-1, *([1] * ta.dim()))
        if ta.is_floating_point():
            out[k] = torch.lerp(ta.contiguous().unsqueeze(0), tb.to(ta.dtype).contiguous().unsqueeze(0), weight)
        else:
            out[k] = torch.round((1 - weight) * ta.double() + weight * tb.double()).to(ta.dtype)
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: TensorData | ImageFiles,
    *,
    batch_size: int = 1000,
    record: MomentRecorder | Recorders | None = None,
    flip: bool = False,
) -> dict[str, float]:
    """Mean cross-entropy ``loss`` and ``acc`` (fraction correct) of ``model`` on ``data``, in eval mode.

    ``record`` collects channel statistics during the same pass (see :class:`MomentRecorder`).
    ``flip``: flip test-time augmentation, the logits of a sample are :func:`flip_averaged`. It is
    an argument of the evaluation, not a property of the data, because it changes how the model
    is asked (two forward passes per batch), not which samples it is asked about.

    Raises:
        ValueError: ``record`` and ``flip`` together (each sample would be recorded twice).
    """
    if record is not None:
        if flip:
            raise ValueError("evaluate cannot record statistics with flip: each sample would pass twice")
        with output_hooks(model, record.names, record):
            return evaluate(model, data, batch_size=batch_size)
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=data.device)
    correct = torch.zeros((), dtype=torch.int64, device=data.device)
    for x, y in data.batches(batch_size):
        logits = flip_averaged(model, x) if flip else model(x)
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    n = max(len(data), 1)
    return {"loss": float(total_loss) / n, "acc": float(correct) / n}


def flip_averaged(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Flip test-time augmentation: ``(forward(x) + forward(x.flip(-1))) / 2``, the logits averaged
    over the inputs and their mirror images along the last axis (an image's width), as the REPAIR
    ImageNet notebook evaluates; loss and accuracy are then those of the averaged logits."""
    return (forward(x) + forward(x.flip(-1))) / 2


def _at(alphas: np.ndarray, values: np.ndarray, target: float) -> float:
    hit = np.flatnonzero(np.isclose(alphas, target, atol=1e-9))
    if not len(hit):
        raise ValueError(f"curve has no point at alpha={target}; alphas are {alphas.tolist()}")
    return float(values[hit[0]])


def barrier_metrics(curve: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Barriers of one interpolation curve.

    Args:
        curve: ``alpha``, ``loss`` and ``acc`` sequences of equal length (one split); the
            alphas must include 0, 0.5 and 1.

    Returns:
        ``barrier_loss`` and ``barrier_error``: ``max_α [L(α) − ((1-α)L(0) + αL(1))]`` with
        ``error = 1 − acc`` (the error version is Frankle et al. 2020's instability; Entezari et al.
        2021 define the loss barrier so); ``max_barrier_loss`` and ``max_barrier_error``:
        ``max_α L(α) − (L(0) + L(1))/2`` (the barrier of Git Re-Basin's plots); ``midpoint_loss``
        and ``midpoint_acc``: the values at α = 0.5; ``midpoint_barrier_loss`` and
        ``midpoint_barrier_error``: the value at 0.5 minus the mean of the endpoints (the REPAIR
        paper's figures).
    """
    alphas = np.asarray(curve["alpha"], dtype=np.float64)
    loss = np.asarray(curve["loss"], dtype=np.float64)
    error = 1.0 - np.asarray(curve["acc"], dtype=np.float64)
    if not (len(alphas) == len(loss) == len(error)):
        raise ValueError("curve's alpha, loss and acc must have the same length")
    out: dict[str, float] = {}
    for name, values in (("loss", loss), ("error", error)):
        v0, v1 = _at(alphas, values, 0.0), _at(alphas, values, 1.0)
        out[f"barrier_{name}"] = float(np.max(values - ((1 - alphas) * v0 + alphas * v1)))
        out[f"max_barrier_{name}"] = float(np.max(values)) - (v0 + v1) / 2
        out[f"midpoint_barrier_{name}"] = _at(alphas, values, 0.5) - (v0 + v1) / 2
    out["midpoint_loss"] = _at(alphas, loss, 0.5)
    out["midpoint_acc"] = 1.0 - _at(alphas, error, 0.5)
    return out
