"""Everything measured for one pair of trained networks: align, correct, interpolate, evaluate.

This is the science of one pair, free of Ray: the sweep's pair stage calls :func:`analyse_pair`
and only adds identifiers to the rows it returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .data import Dataset, TensorData
from .hooks import Moments, channel_moments, std_ratio
from .interpolation import barrier_metrics, evaluate, interpolate_state
from .permutation import (
    PermutationSpec,
    activation_matching,
    apply_permutation,
    identity_permutation,
    weight_matching,
)
from .repair import has_batchnorm, repair, repair_moments, reset_batchnorm, target_moments

ALIGNS = ("none", "weight", "activation")
CORRECTIONS = ("none", "reset", "repair")


@dataclass(frozen=True)
class PairSettings:
    """How a pair is analysed; the defaults follow DESIGN.md's example sweep."""

    aligns: Sequence[str] = ALIGNS
    corrections: Sequence[str] = ("none", "repair")
    alphas: Sequence[float] = tuple(i / 20 for i in range(21))
    train_samples: int | None = 10000  # training samples on which the train curve is evaluated
    stat_samples: int = 5000  # training samples for matching and REPAIR/RESET statistics
    stat_batch_size: int = 1000
    eval_batch_size: int = 1000
    subset_seed: int = 0
    weight_matching_seed: int = 0
    weight_matching_max_iter: int = 100

    def __post_init__(self) -> None:
        for a in self.aligns:
            if a not in ALIGNS:
                raise ValueError(f"unknown align {a!r}; expected one of {', '.join(ALIGNS)}")
        for c in self.corrections:
            if c not in CORRECTIONS:
                raise ValueError(f"unknown correction {c!r}; expected one of {', '.join(CORRECTIONS)}")
        if any(not 0.0 <= a <= 1.0 for a in self.alphas):
            raise ValueError(f"alphas must lie in [0, 1], got {list(self.alphas)}")
        for must in (0.0, 0.5, 1.0):
            if not any(abs(a - must) < 1e-9 for a in self.alphas):
                raise ValueError(f"alphas must include {must} (endpoints and midpoint), got {list(self.alphas)}")


@dataclass
class PairResult:
    """Rows for the ``pairs``, ``curves`` and ``layers`` tables (without sweep identifiers)."""

    pairs: list[dict] = field(default_factory=list)
    curves: list[dict] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)


def point_groups(spec: PermutationSpec) -> dict[str, str]:
    """The permutation group of the channels of every REPAIR point (from its weight's output axis)."""
    return {p: spec.axes[f"{p}.weight"][0] for p in spec.repair_points}


def permute_moments(
    spec: PermutationSpec, moments: Mapping[str, Moments], perm: Mapping[str, torch.Tensor]
) -> dict[str, Moments]:
    """B's statistics as seen in the aligned B: gather each point's channels by its group's permutation."""
    groups = point_groups(spec)
    out = {}
    for p, m in moments.items():
        idx = perm[groups[p]].to(m.mean.device)
        out[p] = Moments(m.mean[idx], m.std[idx])
    return out


def correction_applies(correction: str, model: nn.Module) -> bool:
    """``reset`` needs BatchNorm; ``none`` and ``repair`` apply to every net."""
    return correction != "reset" or has_batchnorm(model)


def _align(
    align: str,
    spec: PermutationSpec,
    model_a: nn.Module,
    model_b: nn.Module,
    stat_data: TensorData,
    settings: PairSettings,
) -> dict[str, torch.Tensor]:
    device = next(model_a.parameters()).device
    if align == "none":
        return identity_permutation(spec, device)
    if align == "weight":
        return weight_matching(
            spec,
            model_a,
            model_b,
            seed=settings.weight_matching_seed,
            max_iter=settings.weight_matching_max_iter,
        )
    if align == "activation":
        return activation_matching(spec, model_a, model_b, stat_data, batch_size=settings.stat_batch_size)
    raise ValueError(f"unknown align {align!r}")


def analyse_pair(
    model_a: nn.Module,
    model_b: nn.Module,
    dataset: Dataset,
    settings: PairSettings,
    *,
    spec: PermutationSpec | None = None,
    progress: Callable[[str], None] | None = None,
) -> PairResult:
    """Align B to A by each method, evaluate each correction along the α grid, compute barriers.

    ``model_a``, ``model_b`` and ``dataset`` must be on the same device. Corrections apply for
    0 < α < 1; the endpoints are the trained networks as they are (evaluated once per pair).
    A ``reset`` on a network without BatchNorm is skipped (no rows).
    """
    spec = spec if spec is not None else model_a.permutation_spec()
    train_eval = dataset.train.subset(settings.train_samples, seed=settings.subset_seed)
    stat_data = train_eval.head(settings.stat_samples)
    splits = {"train": train_eval, "test": dataset.test}
    alphas = sorted(float(a) for a in settings.alphas)
    result = PairResult()
    say = progress or (lambda _msg: None)

    t0 = time.perf_counter()
    endpoint = {
        split: (
            evaluate(model_a, data, batch_size=settings.eval_batch_size),
            evaluate(model_b, data, batch_size=settings.eval_batch_size),
        )
        for split, data in splits.items()
    }
    moments_a = repair_moments(model_a, stat_data, spec, batch_size=settings.stat_batch_size)
    moments_b = repair_moments(model_b, stat_data, spec, batch_size=settings.stat_batch_size)
    shared_seconds = time.perf_counter() - t0

    state_a = {k: v.detach() for k, v in model_a.state_dict().items()}
    work = _clone_architecture(model_a)
    for align in settings.aligns:
        t_align = time.perf_counter()
        perm = _align(align, spec, model_a, model_b, stat_data, settings)
        state_b = apply_permutation(spec, perm, model_b)
        align_seconds = time.perf_counter() - t_align
        moments_b_aligned = permute_moments(spec, moments_b, perm)
        for correction in settings.corrections:
            if not correction_applies(correction, work):
                continue
            say(f"{align}/{correction}")
            t_eval = time.perf_counter()
            curve = {split: {"alpha": [], "loss": [], "acc": []} for split in splits}
            for alpha in alphas:
                at_endpoint = alpha in (0.0, 1.0)
                if not at_endpoint:
                    work.load_state_dict(interpolate_state(state_a, state_b, alpha))
                    _correct(work, correction, moments_a, moments_b_aligned, stat_data, alpha, spec, settings)
                for split, data in splits.items():
                    if at_endpoint:
                        metrics = endpoint[split][0 if alpha == 0.0 else 1]
                    else:
                        metrics = evaluate(work, data, batch_size=settings.eval_batch_size)
                    curve[split]["alpha"].append(alpha)
                    curve[split]["loss"].append(metrics["loss"])
                    curve[split]["acc"].append(metrics["acc"])
                    result.curves.append(
                        {"align": align, "correction": correction, "split": split, "alpha": alpha, **metrics}
                    )
                if alpha == 0.5:
                    measured = channel_moments(work, stat_data, spec.repair_points, batch_size=settings.stat_batch_size)
                    ratios = std_ratio(measured, target_moments(moments_a, moments_b_aligned, 0.5))
                    result.layers += [
                        {
                            "align": align,
                            "correction": correction,
                            "layer": p,
                            "layer_index": i,
                            "std_ratio": ratios[p],
                        }
                        for i, p in enumerate(spec.repair_points)
                    ]
            row = {"align": align, "correction": correction}
            for split in splits:
                for key, value in barrier_metrics(curve[split]).items():
                    row[_column(key, split)] = value
            row["endpoint_test_acc_a"] = endpoint["test"][0]["acc"]
            row["endpoint_test_acc_b"] = endpoint["test"][1]["acc"]
            row["endpoint_test_loss_a"] = endpoint["test"][0]["loss"]
            row["endpoint_test_loss_b"] = endpoint["test"][1]["loss"]
            row["align_seconds"] = align_seconds
            row["eval_seconds"] = time.perf_counter() - t_eval + shared_seconds / max(len(settings.aligns), 1)
            result.pairs.append(row)
    return result


def _column(key: str, split: str) -> str:
    # barrier_loss -> barrier_test_loss; midpoint_acc -> midpoint_test_acc
    prefix, _, metric = key.rpartition("_")
    return f"{prefix}_{split}_{metric}"


def _correct(
    model: nn.Module,
    correction: str,
    moments_a: Mapping[str, Moments],
    moments_b: Mapping[str, Moments],
    stat_data: TensorData,
    alpha: float,
    spec: PermutationSpec,
    settings: PairSettings,
) -> None:
    if correction == "reset":
        reset_batchnorm(model, stat_data, batch_size=settings.stat_batch_size)
    elif correction == "repair":
        repair(
            model,
            moments_a,
            moments_b,
            stat_data,
            alpha=alpha,
            spec=spec,
            batch_size=settings.stat_batch_size,
        )


def _clone_architecture(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)
