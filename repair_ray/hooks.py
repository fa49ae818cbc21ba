"""Per-channel statistics of module outputs, gathered with forward hooks in one pass."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .datasets import ImageFiles, TensorData


def channels_last_2d(x: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """(N, C, ...) → (N·..., C): every position other than the channel ``axis`` is a sample of each channel."""
    if x.dim() == 2 and axis in (1, -1):
        return x
    return x.movedim(axis, -1).reshape(-1, x.shape[axis])


def channel_view(v: torch.Tensor, like: torch.Tensor, axis: int) -> torch.Tensor:
    """Per-channel values ``v`` shaped to broadcast over ``like`` along ``axis``, in ``like``'s dtype."""
    shape = [1] * like.dim()
    shape[axis] = -1
    return v.view(shape).to(like.dtype)


class ChannelMoments:
    """Running per-channel mean and (population) std in float64 over any number of batches.

    The sums may also carry leading dimensions (one row per network of a stack: [K, C]).
    """

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.total_sq: torch.Tensor | None = None

    def update(self, x: torch.Tensor, axis: int = 1) -> None:
        flat = channels_last_2d(x.detach(), axis).double()
        self.add(flat.sum(0), (flat * flat).sum(0), flat.shape[0])

    def add(self, total: torch.Tensor, total_sq: torch.Tensor, count: int) -> None:
        """Add the per-channel sum and sum of squares (float64) of ``count`` more samples."""
        if self.total is None or self.total_sq is None:
            self.total, self.total_sq = total, total_sq
        else:
            self.total += total
            self.total_sq += total_sq
        self.count += count

    def _sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.total is None or self.total_sq is None:
            raise ValueError("no samples were added, so there are no moments")
        return self.total, self.total_sq

    @property
    def mean(self) -> torch.Tensor:
        total, _ = self._sums()
        return total / self.count

    @property
    def var(self) -> torch.Tensor:
        _, total_sq = self._sums()
        return (total_sq / self.count - self.mean**2).clamp_min(0.0)

    @property
    def std(self) -> torch.Tensor:
        return self.var.sqrt()


@dataclass
class Moments:
    """Per-channel mean and std (float64) of one module output."""

    mean: torch.Tensor
    std: torch.Tensor


Hook = Callable[[str, torch.Tensor], torch.Tensor | None]


@contextmanager
def output_hooks(model: nn.Module, names: Sequence[str], hook: Hook) -> Iterator[None]:
    """Call ``hook(name, output)`` on the named modules' outputs; a returned tensor replaces the output."""
    modules = dict(model.named_modules())
    handles = []
    try:
        for name in names:
            if name not in modules:
                raise KeyError(f"model has no module {name!r}")
            handles.append(modules[name].register_forward_hook(lambda _m, _i, out, name=name: hook(name, out)))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def channel_moments(
    model: nn.Module,
    data: TensorData | ImageFiles,
    names: Sequence[str],
    *,
    axes: Mapping[str, int] | None = None,
    batch_size: int = 1000,
) -> dict[str, Moments]:
    """Per-channel mean and std of the outputs of ``names`` over ``data``, all in one pass (eval mode).

    ``axes`` gives the channel axis of outputs whose channels are not on axis 1.
    """
    acc = {n: ChannelMoments() for n in names}
    axes = axes or {}

    def record(name: str, out: torch.Tensor) -> None:
        acc[name].update(out, axes.get(name, 1))

    model.eval()
    with output_hooks(model, names, record):
        for x, _ in data.batches(batch_size):
            model(x)
    return {n: Moments(a.mean, a.std) for n, a in acc.items()}


class MomentRecorder:
    """Records per-channel moments of named module outputs over samples ``[start, stop)`` of a pass.

    Attach it to a pass that is made anyway (an evaluation over data that holds the wanted
    samples at those positions) instead of making a separate statistics pass.
    """

    def __init__(self, names: Sequence[str], stop: int, start: int = 0, axes: Mapping[str, int] | None = None) -> None:
        self.names, self.start, self.stop = list(names), start, stop
        self.axes = dict(axes or {})
        self.moments = {n: ChannelMoments() for n in self.names}
        self.seen = dict.fromkeys(self.names, 0)

    def __call__(self, name: str, out: torch.Tensor) -> None:
        first, n = self.seen[name], out.shape[0]
        lo, hi = max(self.start - first, 0), min(self.stop - first, n)
        if hi > lo:
            self.moments[name].update(out[lo:hi], self.axes.get(name, 1))
        self.seen[name] += n

    def result(self) -> dict[str, Moments]:
        short = [n for n in self.names if self.seen[n] < self.stop]
        if short:
            raise ValueError(f"only {self.seen[short[0]]} of {self.stop} samples reached {short[0]!r}")
        return {n: Moments(m.mean, m.std) for n, m in self.moments.items()}


class Recorders:
    """Several recorders on one pass (each module output is offered to all of them)."""

    def __init__(self, *recorders: MomentRecorder) -> None:
        self.recorders = recorders
        self.names = sorted({n for r in recorders for n in r.names})

    def __call__(self, name: str, out: torch.Tensor) -> None:
        for r in self.recorders:
            if name in r.moments:
                r(name, out)


def std_ratio(
    measured: Mapping[str, Moments], target: Mapping[str, Moments], *, rel_eps: float = 1e-3
) -> dict[str, float]:
    """Mean over channels of measured std / target std at every point (the ``layers`` table).

    Channels whose target std is tiny relative to the layer's typical std (dead units) are left
    out, so a ratio of ~0/0 cannot dominate the average.
    """
    out = {}
    for name, tgt in target.items():
        scale = tgt.std.abs().mean()
        alive = tgt.std > rel_eps * scale
        if not bool(alive.any()):
            out[name] = float("nan")
            continue
        out[name] = float((measured[name].std[alive] / tgt.std[alive]).mean())
    return out


def variance_ratio(
    measured: Mapping[str, Moments], a: Mapping[str, Moments], b: Mapping[str, Moments]
) -> dict[str, float]:
    """The REPAIR paper's variance ratio at every point (the ``layers`` table's ``mean_var_ratio``).

    The interpolated network's variance averaged over channels, over the mean of the two
    endpoints' channel-averaged variances: ``mean_c σ²_mid / ((mean_c σ²_A + mean_c σ²_B) / 2)``,
    as ``get_layerwise_var`` and ``rrb = vvb / vv01`` in the REPAIR notebooks
    (``Train-and-Permute-MNIST-MLP-BatchNorm.ipynb``) compute it. A ratio of means, not the mean
    of per-channel ratios: wide channels weigh more. NaN where the endpoints have no variance.
    """
    out = {}
    for name, mid in measured.items():
        target = 0.5 * (float((a[name].std.double() ** 2).mean()) + float((b[name].std.double() ** 2).mean()))
        value = float((mid.std.double() ** 2).mean())
        out[name] = value / target if target > 0 else float("nan")
    return out
