"""Aligning B to A by one method: the permutation it finds, and B's statistics seen through it."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..datasets import ImageFiles, TensorData, in_memory
from ..hooks import Moments
from ..permutation import (
    PermutationSpec,
    activation_matching,
    identity_permutation,
    sinkhorn_matching,
    ste_matching,
    weight_matching,
)
from ..permutation.spec import axis_index
from .settings import PairSettings


def permute_moments(
    spec: PermutationSpec, moments: Mapping[str, Moments], perm: Mapping[str, torch.Tensor]
) -> dict[str, Moments]:
    """B's statistics as seen in the aligned B: gather each point's channels as its weight's output axis is."""
    out = {}
    for p, m in moments.items():
        idx = axis_index(spec.point_entry(p), perm, m.mean.device)
        out[p] = m if idx is None else Moments(m.mean[idx.to(m.mean.device)], m.std[idx.to(m.mean.device)])
    return out


def learned_data(
    settings: PairSettings, method: str, train: TensorData | ImageFiles, stat_data: TensorData
) -> TensorData:
    """The training samples a learned matching (``ste``, ``sinkhorn``) learns on: the statistics
    samples by default, else the first ``samples`` of the training split in the subset seed's
    order (the statistics samples are the first of those), or all of it; in memory (a streamed
    split's samples are decoded: the matchings draw minibatches by index)."""
    samples = getattr(settings, f"{method}_samples")
    if samples is None:
        return stat_data
    return in_memory(train if samples == "all" else train.subset(samples, seed=settings.subset_seed))


def learned_steps(settings: PairSettings, method: str, n_samples: int) -> tuple[int, int]:
    """(steps, batch size) of a learned matching: ``epochs`` over its samples (whole minibatches,
    as it draws them) when set, else ``steps``."""
    batch = min(getattr(settings, f"{method}_batch_size") or settings.stat_batch_size, max(n_samples, 1))
    epochs = getattr(settings, f"{method}_epochs")
    if epochs is None:
        return getattr(settings, f"{method}_steps"), batch
    return epochs * max(n_samples // batch, 1), batch


def align_permutation(
    align: str,
    spec: PermutationSpec,
    model_a: nn.Module,
    model_b: nn.Module,
    stat_data: TensorData,
    settings: PairSettings,
    train: TensorData | ImageFiles | None = None,
) -> dict[str, torch.Tensor]:
    device = next(model_a.parameters()).device
    weight_options = {"start": settings.weight_matching_start, "restarts": settings.weight_matching_restarts}
    if align == "none":
        return identity_permutation(spec, device)
    if align == "weight":
        return weight_matching(
            spec,
            model_a,
            model_b,
            seed=settings.weight_matching_seed,
            max_iter=settings.weight_matching_max_iter,
            start=settings.weight_matching_start,
            restarts=settings.weight_matching_restarts,
        )
    if align == "activation":
        return activation_matching(spec, model_a, model_b, stat_data, batch_size=settings.stat_batch_size)
    if align in ("ste", "sinkhorn"):
        data = learned_data(settings, align, train if train is not None else stat_data, stat_data)
        steps, batch_size = learned_steps(settings, align, len(data))
        common = {
            "steps": steps,
            "lr": getattr(settings, f"{align}_lr"),
            "batch_size": batch_size,
            "seed": settings.weight_matching_seed,
            "init": getattr(settings, f"{align}_init"),
            "optimizer": getattr(settings, f"{align}_optimizer"),
            "select": getattr(settings, f"{align}_select"),
            "batchnorm": getattr(settings, f"{align}_batchnorm"),
            "weight_options": weight_options,
        }
        if align == "ste":
            return ste_matching(spec, model_a, model_b, data, momentum=settings.ste_momentum, **common)
        return sinkhorn_matching(
            spec,
            model_a,
            model_b,
            data,
            objective=settings.sinkhorn_objective,
            temperatures=settings.sinkhorn_temperatures,
            order=settings.sinkhorn_order,
            gradient=settings.sinkhorn_gradient,
            **common,
        )
    raise ValueError(f"unknown align {align!r}")
