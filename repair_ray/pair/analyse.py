"""Everything measured for one pair of trained networks: align, correct, interpolate, evaluate.

This is the science of one pair, free of Ray: the sweep's pair stage calls :func:`analyse_pair`
and only adds identifiers to the rows it returns.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..correction import has_batchnorm, target_moments
from ..datasets import Dataset, ImageFiles, TensorData, in_memory
from ..errors import is_int
from ..hooks import MomentRecorder, Moments, Recorders, std_ratio, variance_ratio
from ..interpolation import barrier_metrics, evaluate
from ..models import permutation_spec
from ..models.fold import fold_batchnorm
from ..permutation import PermutationSpec, apply_permutation
from ..permutation.derive import derive_spec
from ..stacked import auto_alphas_per_pass
from ..training import Augmentation
from .align import align_permutation, permute_moments
from .curve import Clock, CurvePoints, HeldOut
from .settings import PairSettings


@dataclass
class PairResult:
    """Rows for the ``pairs``, ``curves`` and ``layers`` tables (without sweep identifiers)."""

    pairs: list[dict] = field(default_factory=list)
    curves: list[dict] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)


def analyse_pair(
    model_a: nn.Module,
    model_b: nn.Module,
    dataset: Dataset,
    settings: PairSettings,
    *,
    spec: PermutationSpec | None = None,
    progress: Callable[[str], None] | None = None,
    alphas_per_pass: int | None = None,
    memory_share: float = 1.0,
    augmentation: Augmentation | None = None,
) -> PairResult:
    """Align B to A by each method, evaluate each correction along the α grid, compute barriers.

    ``model_a``, ``model_b`` and ``dataset`` must be on the same device. The train curve is
    evaluated on ``settings.train_samples`` of the train split (held in memory: a streamed split's
    are decoded), the test curve on ``settings.test_samples`` of the test split (streamed or not),
    both drawn with ``settings.subset_seed``; ``settings.test_flip`` evaluates the test split with
    flip test-time augmentation (the endpoints' ``endpoint_test_*`` too). A correction applies at
    every α of its curve, the endpoints included (as the REPAIR notebooks do: RESET changes a
    trained BatchNorm network's statistics, so the barrier compares corrected with corrected);
    the uncorrected curve's endpoints are the trained networks, evaluated once per pair, and so
    are the ``endpoint_*`` columns. A ``reset`` on a network without BatchNorm is skipped (no rows).

    The matching activations and the REPAIR/RESET statistics are measured on the first
    ``settings.stat_samples`` of the train-curve samples (``all``: every one, the whole train split);
    with ``settings.stat_augment`` on them augmented once by ``augmentation`` (what training did to
    its inputs, :meth:`~repair_ray.training.Augmentation.of`), drawn from ``settings.subset_seed``.
    The ``layers`` rows measure on held-out samples, disjoint from those (:class:`~.curve.HeldOut`;
    their ``held_out`` column says which split gave them).

    ``settings.precision`` holds for every forward pass of the analysis, whatever the process did
    before (a worker that trained a network has TF32 switched on for training): ``fp32`` computes in
    full float32 (on a GPU as on the CPU, up to summation order), ``tf32`` lets CUDA matrix products
    and convolutions use TF32.

    ``alphas_per_pass``: how many α one forward pass evaluates (several run as one vmapped program,
    :mod:`repair_ray.stacked`; the rows are the same up to float rounding). None chooses: 1 on the
    CPU, on a GPU as many as keep it busy and fit in ``memory_share`` of its free memory (the part
    of the GPU this pair has). Each ``pairs`` row says it (``alphas_per_pass``). It is not an
    analysis setting: it changes how fast the rows come, not what they say.
    """
    with float_precision(settings.precision):
        return _analyse_pair(
            model_a, model_b, dataset, settings, spec, progress, alphas_per_pass, memory_share, augmentation
        )


@contextmanager
def float_precision(precision: str) -> Iterator[None]:
    """CUDA's TF32 switches for matrix products and convolutions as ``precision`` says, restored afterwards."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32, tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _analyse_pair(
    model_a: nn.Module,
    model_b: nn.Module,
    dataset: Dataset,
    settings: PairSettings,
    spec: PermutationSpec | None,
    progress: Callable[[str], None] | None,
    alphas_per_pass: int | None,
    memory_share: float,
    augmentation: Augmentation | None,
) -> PairResult:
    train_eval = in_memory(dataset.train.subset(settings.train_samples, seed=settings.subset_seed))
    test = dataset.test.subset(settings.test_samples, seed=settings.subset_seed)
    if settings.fold_batchnorm:
        # the plain networks the BatchNorm nets compute; their spec comes from their own graph
        model_a, model_b = fold_batchnorm(model_a), fold_batchnorm(model_b)
        spec = derive_spec(model_a, train_eval.x[:2])
    spec = spec if spec is not None else permutation_spec(model_a)
    stat_data = statistics_samples(train_eval, settings, augmentation)
    splits = {"train": train_eval, "test": test}
    alphas = sorted(float(a) for a in settings.alpha_points)
    result = PairResult()
    say = progress or (lambda _msg: None)

    clock = Clock()
    points = spec.repair_points
    held = held_out_samples(points, train_eval, test, len(stat_data))
    if alphas_per_pass is not None and not (is_int(alphas_per_pass) and alphas_per_pass >= 1):
        raise ValueError(f"alphas_per_pass must be a positive integer or None (automatic), got {alphas_per_pass!r}")
    endpoint: dict[str, tuple[dict[str, float], ...]] = {"train": (), "test": ()}
    moments: list[dict[str, Moments]] = []
    layer_moments: list[dict[str, Moments]] = []
    with clock("eval"):
        # The endpoints' statistics are recorded during their train evaluation, which passes over
        # the statistics samples (its first samples) and held-out train samples anyway; augmented
        # statistics samples and held-out test samples take a pass of their own.
        for model in (model_a, model_b):
            stats = MomentRecorder(spec.corrected_points, len(stat_data), axes=spec.channel_axes)
            later = held.recorder(spec.channel_axes)
            riding = [r for r, rides in ((stats, not settings.stat_augment), (later, held.rides_on_train)) if rides]
            train_metrics = evaluate(
                model, train_eval, batch_size=settings.eval_batch_size, record=Recorders(*riding) if riding else None
            )
            test_metrics = evaluate(model, test, batch_size=settings.eval_batch_size, flip=settings.test_flip)
            if settings.stat_augment:
                evaluate(model, stat_data, batch_size=settings.eval_batch_size, record=stats)
            if not held.rides_on_train:
                evaluate(model, held.data, batch_size=settings.eval_batch_size, record=later)
            moments.append(stats.result())
            layer_moments.append(later.result())
            endpoint["train"] += (train_metrics,)
            endpoint["test"] += (test_metrics,)
    moments_a, moments_b = moments
    shared = clock.take()

    state_a = {k: v.detach() for k, v in model_a.state_dict().items()}
    work = copy.deepcopy(model_a)
    methods = settings.methods(batchnorm=has_batchnorm(work))
    per_pass = alphas_per_pass or auto_alphas_per_pass(
        model_a,
        train_eval.x,
        batch_size=max(settings.eval_batch_size, settings.stat_batch_size),
        points=len(alphas),
        memory_share=memory_share,
    )
    curve_points = CurvePoints(work, spec, splits, stat_data, settings, clock, held, moments_a, endpoint, per_pass)
    for align in settings.aligns:
        with clock("align"):
            perm = align_permutation(align, spec, model_a, model_b, stat_data, settings, dataset.train)
            state_b = apply_permutation(spec, perm, model_b)
        align_seconds = clock.take()["align"]
        moments_b_aligned = permute_moments(spec, moments_b, perm)
        layer_target = target_moments(layer_moments[0], permute_moments(spec, layer_moments[1], perm), 0.5)
        for correction in (c for a, c in methods if a == align):
            say(f"{align}/{correction}")
            measured = curve_points(correction, state_a, state_b, moments_b_aligned, alphas)
            curve: dict[str, dict[str, list[float]]] = {split: {"alpha": [], "loss": [], "acc": []} for split in splits}
            for alpha in alphas:
                for split in splits:
                    metrics = measured[alpha][split]
                    curve[split]["alpha"].append(alpha)
                    curve[split]["loss"].append(metrics["loss"])
                    curve[split]["acc"].append(metrics["acc"])
                    result.curves.append(
                        {"align": align, "correction": correction, "split": split, "alpha": alpha, **metrics}
                    )
            ratios = std_ratio(measured[0.5]["layers"], layer_target)
            var_ratios = variance_ratio(measured[0.5]["layers"], *layer_moments)
            result.layers += [
                {
                    "align": align,
                    "correction": correction,
                    "layer": p,
                    "layer_index": i,
                    "std_ratio": ratios[p],
                    "mean_var_ratio": var_ratios[p],
                    "held_out": held.split,
                    "held_out_samples": held.stop - held.start,
                }
                for i, p in enumerate(points)
            ]
            spent = clock.take()
            row: dict[str, str | float] = {"align": align, "correction": correction}
            for split in splits:
                for key, value in barrier_metrics(curve[split]).items():
                    row[_column(key, split)] = value
            row["endpoint_test_acc_a"] = endpoint["test"][0]["acc"]
            row["endpoint_test_acc_b"] = endpoint["test"][1]["acc"]
            row["endpoint_test_loss_a"] = endpoint["test"][0]["loss"]
            row["endpoint_test_loss_b"] = endpoint["test"][1]["loss"]
            row["align_seconds"] = align_seconds
            # the endpoints' shared evaluation is split evenly over the pair's curves
            share = shared["eval"] / max(len(methods), 1)
            row["eval_seconds"] = spent["eval"] + share
            row["stat_seconds"] = spent["stat"]
            row["alphas_per_pass"] = per_pass
            result.pairs.append(row)
    return result


def statistics_samples(train_eval: TensorData, settings: PairSettings, augmentation: Augmentation | None) -> TensorData:
    """The samples matching and REPAIR/RESET measure on: the first ``settings.stat_samples`` of the
    train-curve samples (all of them for ``all``), with ``settings.stat_augment`` augmented once by
    ``augmentation``, drawn from a generator seeded with ``settings.subset_seed`` (every pair of a
    sweep sees the same augmented samples, as it sees the same subset).

    Raises:
        ValueError: ``stat_augment`` without an augmentation to apply.
    """
    stat_data = train_eval.head(settings.stat_count(len(train_eval)))
    if not settings.stat_augment:
        return stat_data
    if augmentation is None:
        raise ValueError("eval.stat_augment: true needs the training's augmentation, and none was given")
    generator = torch.Generator().manual_seed(settings.subset_seed)
    return TensorData(augmentation(stat_data.x, generator), stat_data.y)


def held_out_samples(
    points: Sequence[str], train_eval: TensorData, test: TensorData | ImageFiles, n_stat: int
) -> HeldOut:
    """The ``layers`` table's samples, disjoint from the ``n_stat`` statistics samples (the first of
    ``train_eval``): the next ``n_stat`` train-curve samples where there are any, else the first
    ``n_stat`` of the test curve's (:class:`~.curve.HeldOut`)."""
    if len(train_eval) > n_stat:
        return HeldOut(points, "train", train_eval, n_stat, min(2 * n_stat, len(train_eval)))
    n = min(n_stat, len(test))
    return HeldOut(points, "test", test.head(n), 0, n)


def _column(key: str, split: str) -> str:
    # barrier_loss -> barrier_test_loss; midpoint_acc -> midpoint_test_acc
    prefix, _, metric = key.rpartition("_")
    return f"{prefix}_{split}_{metric}"
