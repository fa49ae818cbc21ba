"""Activation matching (Git Re-Basin algorithm 1; Li et al. 2015; Jordan et al. 2023).

Run both networks on the same inputs, correlate every unit of A with every unit of B at each
of a group's activation points (conv outputs flattened over space), sum the correlations over
the points and solve one assignment per group that maximises the total correlation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..datasets import ImageFiles, TensorData
from ..hooks import channels_last_2d, output_hooks
from .ops import Permutation, linear_sum_assignment, sum_tensors
from .spec import PermutationSpec, SpecError
from .weight_matching import matched_states


class CrossMoments:
    """Float64 accumulators of the first and second moments of two unit sets, and their cross product."""

    def __init__(self) -> None:
        self.count = 0
        self.sums: list[torch.Tensor] = []

    def update(self, xa: torch.Tensor, xb: torch.Tensor, axis: int = 1) -> None:
        fa, fb = channels_last_2d(xa, axis).double(), channels_last_2d(xb, axis).double()
        parts = [fa.sum(0), fb.sum(0), (fa * fa).sum(0), (fb * fb).sum(0), fa.T @ fb]
        self.sums = parts if not self.sums else [s + p for s, p in zip(self.sums, parts, strict=True)]
        self.count += fa.shape[0]

    def correlation(self) -> torch.Tensor:
        """Pearson correlation of every A unit with every B unit; 0 where either unit is constant."""
        sa, sb, saa, sbb, sab = (s / self.count for s in self.sums)
        cov = sab - torch.outer(sa, sb)
        std_a = (saa - sa * sa).clamp_min(0).sqrt()
        std_b = (sbb - sb * sb).clamp_min(0).sqrt()
        denom = torch.outer(std_a, std_b)
        tiny = 1e-12 * max(float(denom.max()), 1e-30)
        return torch.where(denom > tiny, cov / denom.clamp_min(tiny), torch.zeros_like(cov))


@torch.no_grad()
def correlation_matrices(
    spec: PermutationSpec,
    model_a: nn.Module,
    model_b: nn.Module,
    data: TensorData | ImageFiles,
    *,
    batch_size: int = 500,
) -> dict[str, torch.Tensor]:
    """For every group, the sum over its activation points of the A-by-B unit correlation matrix."""
    points = sorted({p for pts in spec.activations.values() for p in pts})
    moments = {p: CrossMoments() for p in points}
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str, out: torch.Tensor) -> None:
        captured[name] = out

    model_a.eval()
    model_b.eval()
    for x, _ in data.batches(batch_size):
        with output_hooks(model_a, points, keep):
            model_a(x)
        outs_a = dict(captured)
        captured.clear()
        with output_hooks(model_b, points, keep):
            model_b(x)
        for p in points:
            moments[p].update(outs_a[p], captured[p], spec.channel_axis(p))
        captured.clear()
    return {g: sum_tensors(moments[p].correlation() for p in pts) for g, pts in spec.activations.items()}


def activation_matching(
    spec: PermutationSpec,
    model_a: nn.Module,
    model_b: nn.Module,
    data: TensorData | ImageFiles,
    *,
    num_samples: int | None = None,
    batch_size: int = 500,
) -> Permutation:
    """The permutation of B whose unit activations correlate best with A's on ``data``.

    Args:
        spec: the permutation spec; its ``activations`` name the module outputs per group.
        model_a, model_b: networks of the same architecture (B is not modified).
        data: inputs on the models' device; the first ``num_samples`` are used (all if None).

    Returns:
        ``{group: LongTensor}`` to apply to B with :func:`apply_permutation`.
    """
    matched_states(spec, model_a, model_b)
    missing = [g for g in spec.sizes if g not in spec.activations]
    if missing:
        raise SpecError(f"permutation spec gives no activation point for group {missing[0]!r}")
    corr = correlation_matrices(spec, model_a, model_b, data.head(num_samples), batch_size=batch_size)
    device = next(model_a.parameters()).device
    perm = {}
    for g, c in corr.items():
        rows, cols = linear_sum_assignment(c.cpu().numpy(), maximize=True)
        perm[g] = torch.as_tensor(cols, dtype=torch.long, device=device)
    return perm


__all__: Sequence[str] = ["activation_matching", "correlation_matrices"]
