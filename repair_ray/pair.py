"""Everything measured for one pair of trained networks: align, correct, interpolate, evaluate.

This is the science of one pair, free of Ray: the sweep's pair stage calls :func:`analyse_pair`
and only adds identifiers to the rows it returns.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from .correction import (
    correction_plan,
    has_batchnorm,
    remove_carried,
    repair,
    reset_batchnorm,
    target_moments,
)
from .datasets import Dataset, TensorData
from .errors import Problems, unknown_choice
from .hooks import MomentRecorder, Moments, Recorders, std_ratio, variance_ratio
from .interpolation import barrier_metrics, evaluate, interpolate_state
from .models.fold import fold_batchnorm
from .names import ALIGNS, BATCHNORM_ONLY, CORRECTIONS, DEFAULT_ALIGNS
from .permutation import (
    PermutationSpec,
    activation_matching,
    apply_permutation,
    identity_permutation,
    weight_matching,
)
from .permutation.derive import derive_spec
from .permutation.learned import (
    BATCHNORM_MODES,
    LEARNED_INITS,
    OPTIMIZERS,
    SINKHORN_OBJECTIVES,
    SINKHORN_SELECTS,
    STE_SELECTS,
    sinkhorn_matching,
    ste_matching,
)
from .permutation.spec import axis_index
from .permutation.weight_matching import WEIGHT_STARTS
from .stacked import AlphaStack, auto_alphas_per_pass, chunks, interpolated_tensors

# the settings of the aligns that learn on data; each belongs to its align's rows only
_LEARNED = ("steps", "epochs", "lr", "optimizer", "batch_size", "samples", "init", "select", "batchnorm")
METHOD_FIELDS = {
    "ste": tuple(f"ste_{f}" for f in (*_LEARNED, "momentum")),
    "sinkhorn": tuple(f"sinkhorn_{f}" for f in (*_LEARNED, "objective", "temperatures")),
}
# The published methods by name (``ste: {preset: git-rebasin}``): every setting each paper's code
# uses; settings given beside a preset override it. Sources: samuela/git-re-basin
# ``src/mnist_mlp_ste2.py`` (250 epochs of the 60k MNIST training images, batch 1000, SGD lr 1e-2
# momentum 0.9, from the identity, the best projection by minibatch loss); fagp/sinkhorn-rebasin's
# MLP example (20 epochs of 9,000 training images, batch 1000, AdamW lr 0.1, temperature 1, 20
# Sinkhorn iterations, from the identity plus noise, the final permutation; BatchNorm with batch
# statistics).
PRESETS: dict[str, dict[str, dict[str, object]]] = {
    "ste": {
        "git-rebasin": {
            "epochs": 250,
            "samples": "all",
            "batch_size": 1000,
            "optimizer": "sgd",
            "lr": 1e-2,
            "momentum": 0.9,
            "init": "identity",
            "select": "batch",
            "batchnorm": "batch",
        },
    },
    "sinkhorn": {
        "pena2023": {
            "epochs": 20,
            "samples": 9000,
            "batch_size": 1000,
            "optimizer": "adamw",
            "lr": 0.1,
            "temperatures": (1.0, 1.0),
            "objective": "midpoint",
            "init": "identity",
            "select": "last",
            "batchnorm": "batch",
        },
    },
}
# the arithmetic of a pair's forward passes on a GPU: fp32 (as on the CPU), or TF32 matrix products and
# convolutions (NVIDIA tensor cores since Ampere; ~10 bits of mantissa, several times faster)
PRECISIONS = ("fp32", "tf32")
# Bumped whenever the same settings give different rows, so older rows stop being current (they
# stay readable with load_tables(keys="all")). 2: corrections at the endpoints too, REPAIR's ε,
# weight matching's forward start. 3: ``repair`` on BatchNorm nets is the paper's (RESET + block
# outputs; the earlier one is ``repair_bn``), learned matchings normalise BatchNorm by batch
# statistics, and ``layers`` rows carry ``mean_var_ratio``.
ANALYSIS_VERSION = 3
# PairSettings fields added after rows were keyed by the others: out of the analysis key at these
# defaults, so the rows computed before them stay current
LATER_FIELDS = {"precision": "fp32"}
MAX_ALPHAS = 1001  # a finer grid costs a forward pass per point and pair without changing a barrier


def correction_applies(correction: str, *, batchnorm: bool) -> bool:
    """``reset`` and ``repair_bn`` need BatchNorm; ``none`` and ``repair`` apply to every net."""
    return correction not in BATCHNORM_ONLY or batchnorm


def alpha_grid(alphas: int | Sequence[float]) -> tuple[float, ...]:
    """``n`` evenly spaced points in [0, 1], or the given points, always with 0, 0.5 and 1, sorted.

    The barrier needs both endpoints and the midpoint definitions need 0.5, so they are added.
    Raises ValueError for points outside [0, 1] or fewer than 3 / more than :data:`MAX_ALPHAS` points.
    """
    if isinstance(alphas, bool):
        raise ValueError(f"must be a number of points or a list of points in [0, 1], got {alphas!r}")
    if isinstance(alphas, int):
        if alphas < 3:
            raise ValueError(f"need at least 3 points (0, 0.5, 1), got {alphas}")
        if alphas > MAX_ALPHAS:
            raise ValueError(f"at most {MAX_ALPHAS} points, got {alphas}")
        grid = [i / (alphas - 1) for i in range(alphas)]
    else:
        grid = list(alphas)
        bad = [a for a in grid if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0]
        if bad:
            raise ValueError(f"every alpha must lie in [0, 1], got {bad}")
        if len(grid) > MAX_ALPHAS:
            raise ValueError(f"at most {MAX_ALPHAS} points, got {len(grid)}")
        grid = [float(a) for a in grid]
    for must in (0.0, 0.5, 1.0):
        if not any(abs(a - must) < 1e-9 for a in grid):
            grid.append(must)
    return tuple(sorted(set(round(a, 12) for a in grid)))


@dataclass(frozen=True)
class PairSettings:
    """How a pair is analysed; checked on construction (the one home of these rules).

    ``alphas`` is a number of evenly spaced points or a list of points (see :func:`alpha_grid`);
    after construction it is the sorted grid, and ``aligns``/``corrections`` are tuples.
    Raises :class:`repair_ray.SettingError` naming every offending setting.
    """

    aligns: Sequence[str] = DEFAULT_ALIGNS
    corrections: Sequence[str] = ("none", "repair")
    alphas: int | Sequence[float] = 21
    train_samples: int | None = 10000  # training samples on which the train curve is evaluated
    stat_samples: int = 5000  # training samples for matching and REPAIR/RESET statistics
    stat_batch_size: int = 1000
    eval_batch_size: int = 1000
    subset_seed: int = 0
    weight_matching_seed: int = 0
    weight_matching_max_iter: int = 100
    weight_matching_start: str = "forward"  # "identity": Git Re-Basin's algorithm exactly
    weight_matching_restarts: int = 1
    # the learned matchings: steps (or epochs over their samples), optimiser, minibatch (None: the
    # statistics batch size), samples (None: the statistics samples; "all": the training split),
    # start, which permutation is returned, and BatchNorm's statistics in the midpoint
    ste_steps: int = 200
    ste_epochs: int | None = None
    ste_lr: float = 3e-3
    ste_optimizer: str = "adam"
    ste_momentum: float = 0.9
    ste_batch_size: int | None = None
    ste_samples: int | str | None = None
    ste_init: str = "weight"
    ste_select: str = "data"
    ste_batchnorm: str = "batch"
    sinkhorn_steps: int = 200
    sinkhorn_epochs: int | None = None
    sinkhorn_lr: float = 0.1
    sinkhorn_optimizer: str = "adam"
    sinkhorn_batch_size: int | None = None
    sinkhorn_samples: int | str | None = None
    sinkhorn_init: str = "weight"
    sinkhorn_select: str = "best"
    sinkhorn_batchnorm: str = "batch"
    sinkhorn_objective: str = "midpoint"
    sinkhorn_temperatures: tuple[float, float] = (1.0, 0.05)
    precision: str = "fp32"
    # fold each BatchNorm into the layer before it, then analyse the plain network (the REPAIR
    # paper's depth sweep: MLPs trained with BatchNorm, fused before matching)
    fold_batchnorm: bool = False

    def __post_init__(self) -> None:
        problems = Problems("PairSettings")
        for field_name, known in (("aligns", ALIGNS), ("corrections", CORRECTIONS)):
            values = getattr(self, field_name)
            values = (values,) if isinstance(values, str) else tuple(values)
            object.__setattr__(self, field_name, values)
            if not values:
                problems.add(field_name, f"must list at least one of {', '.join(known)}")
            for i, value in enumerate(values):
                if value not in known:
                    problems.add(f"{field_name}[{i}]", unknown_choice(field_name[:-1], value, known))
            if len(set(values)) != len(values):
                problems.add(field_name, f"lists a value twice: {list(values)}")
        try:
            object.__setattr__(self, "alphas", alpha_grid(self.alphas))
        except ValueError as error:
            problems.add("alphas", str(error))
        if self.train_samples is not None and not (_is_int(self.train_samples) and self.train_samples >= 1):
            problems.add(
                "train_samples", f"must be a positive integer (or None for the whole split), got {self.train_samples!r}"
            )
        for name in ("ste_lr", "sinkhorn_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                problems.add(name, f"must be a positive number, got {value!r}")
        if not isinstance(self.fold_batchnorm, bool):
            problems.add("fold_batchnorm", f"must be true or false, got {self.fold_batchnorm!r}")
        if self.precision not in PRECISIONS:
            problems.add("precision", unknown_choice("precision", self.precision, PRECISIONS))
        for name, known in (
            ("sinkhorn_objective", SINKHORN_OBJECTIVES),
            ("weight_matching_start", WEIGHT_STARTS),
            ("ste_optimizer", OPTIMIZERS),
            ("ste_init", LEARNED_INITS),
            ("ste_select", STE_SELECTS),
            ("ste_batchnorm", BATCHNORM_MODES),
            ("sinkhorn_optimizer", OPTIMIZERS),
            ("sinkhorn_init", LEARNED_INITS),
            ("sinkhorn_select", SINKHORN_SELECTS),
            ("sinkhorn_batchnorm", BATCHNORM_MODES),
        ):
            if getattr(self, name) not in known:
                problems.add(name, unknown_choice(name.rsplit("_", 1)[1], getattr(self, name), known))
        for name in ("ste_epochs", "ste_batch_size", "sinkhorn_epochs", "sinkhorn_batch_size"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value >= 1):
                problems.add(name, f"must be a positive integer or unset, got {value!r}")
        for name in ("ste_samples", "sinkhorn_samples"):
            value = getattr(self, name)
            if value is not None and value != "all" and not (_is_int(value) and value >= 1):
                problems.add(name, f"must be a positive integer, 'all' or unset, got {value!r}")
        value = self.ste_momentum
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            problems.add("ste_momentum", f"must be a number in [0, 1), got {value!r}")
        temps = self.sinkhorn_temperatures
        try:
            temps = tuple(float(t) for t in temps)
            ok = len(temps) == 2 and all(0 < t < float("inf") for t in temps)
        except (TypeError, ValueError):
            ok = False
        if ok:
            object.__setattr__(self, "sinkhorn_temperatures", temps)
        else:
            problems.add("sinkhorn_temperatures", f"must be two positive numbers [first, last], got {temps!r}")
        for name in (
            "stat_samples",
            "stat_batch_size",
            "eval_batch_size",
            "weight_matching_max_iter",
            "weight_matching_restarts",
            "ste_steps",
            "sinkhorn_steps",
        ):
            if not (_is_int(getattr(self, name)) and getattr(self, name) >= 1):
                problems.add(name, f"must be a positive integer, got {getattr(self, name)!r}")
        for name in ("subset_seed", "weight_matching_seed"):
            if not (_is_int(getattr(self, name)) and getattr(self, name) >= 0):
                problems.add(name, f"must be a non-negative integer, got {getattr(self, name)!r}")
        if not problems and self.train_samples is not None and self.stat_samples > self.train_samples:
            problems.add(
                "stat_samples",
                f"the statistics samples are taken from the train-curve samples, so stat_samples "
                f"({self.stat_samples}) must not exceed train_samples ({self.train_samples})",
            )
        problems.raise_if_any()

    def methods(self, *, batchnorm: bool) -> list[tuple[str, str]]:
        """The (align, correction) combinations analysed for a net with or without BatchNorm, in order
        (a net whose BatchNorms are folded is analysed as one without)."""
        return [
            (align, correction)
            for align in self.aligns
            for correction in self.corrections
            if correction_applies(correction, batchnorm=batchnorm and not self.fold_batchnorm)
        ]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class PairResult:
    """Rows for the ``pairs``, ``curves`` and ``layers`` tables (without sweep identifiers)."""

    pairs: list[dict] = field(default_factory=list)
    curves: list[dict] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)


def sample_forwards(
    settings: PairSettings, n_train_eval: int, n_test: int, *, batchnorm: bool, n_train: int | None = None
) -> int:
    """Samples :func:`analyse_pair` pushes through a network for one pair: the forward floor.

    Every endpoint evaluated once on the train-curve and test samples and measured once on the
    statistics samples; activation matching runs both networks on the statistics samples; an
    uncorrected curve evaluates each interior α once on the train-curve and test samples; a
    corrected one (``reset`` only on BatchNorm nets) evaluates every α, endpoints included, after
    one statistics pass each. The endpoints' and the ``layers`` statistics ride on evaluation
    passes, so they cost nothing extra.
    """
    stat = min(settings.stat_samples, n_train_eval)
    interior = sum(1 for a in settings.alphas if 0 < a < 1)
    total = 2 * (n_train_eval + n_test) + 2 * stat
    total += sum(2 * stat for a in settings.aligns if a == "activation")
    # a learned matching: a minibatch per step (backward passes not counted) and two full scorings
    for method in ("ste", "sinkhorn"):
        if method in settings.aligns:
            samples = getattr(settings, f"{method}_samples")
            whole = n_train or n_train_eval  # the training split (learned matchings with samples: all)
            n = stat if samples is None else (whole if samples == "all" else min(whole, samples))
            steps, batch = learned_steps(settings, method, n)
            total += steps * batch + 2 * n
    for _align, correction in settings.methods(batchnorm=batchnorm):
        if correction == "none":
            total += interior * (n_train_eval + n_test)
        else:
            total += len(settings.alphas) * (n_train_eval + n_test + stat)
    return total


def permute_moments(
    spec: PermutationSpec, moments: Mapping[str, Moments], perm: Mapping[str, torch.Tensor]
) -> dict[str, Moments]:
    """B's statistics as seen in the aligned B: gather each point's channels as its weight's output axis is."""
    out = {}
    for p, m in moments.items():
        idx = axis_index(spec.point_entry(p), perm, m.mean.device)
        out[p] = m if idx is None else Moments(m.mean[idx.to(m.mean.device)], m.std[idx.to(m.mean.device)])
    return out


def learned_data(settings: PairSettings, method: str, train: TensorData, stat_data: TensorData) -> TensorData:
    """The training samples a learned matching (``ste``, ``sinkhorn``) learns on: the statistics
    samples by default, else the first ``samples`` of the training split in the subset seed's
    order (the statistics samples are the first of those), or all of it."""
    samples = getattr(settings, f"{method}_samples")
    if samples is None:
        return stat_data
    return train if samples == "all" else train.subset(samples, seed=settings.subset_seed)


def learned_steps(settings: PairSettings, method: str, n_samples: int) -> tuple[int, int]:
    """(steps, batch size) of a learned matching: ``epochs`` over its samples (whole minibatches,
    as it draws them) when set, else ``steps``."""
    batch = min(getattr(settings, f"{method}_batch_size") or settings.stat_batch_size, max(n_samples, 1))
    epochs = getattr(settings, f"{method}_epochs")
    if epochs is None:
        return getattr(settings, f"{method}_steps"), batch
    return epochs * max(n_samples // batch, 1), batch


def _align(
    align: str,
    spec: PermutationSpec,
    model_a: nn.Module,
    model_b: nn.Module,
    stat_data: TensorData,
    settings: PairSettings,
    train: TensorData | None = None,
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
            **weight_options,
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
            **common,
        )
    raise ValueError(f"unknown align {align!r}")


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
) -> PairResult:
    """Align B to A by each method, evaluate each correction along the α grid, compute barriers.

    ``model_a``, ``model_b`` and ``dataset`` must be on the same device. A correction applies at
    every α of its curve, the endpoints included (as the REPAIR notebooks do: RESET changes a
    trained BatchNorm network's statistics, so the barrier compares corrected with corrected);
    the uncorrected curve's endpoints are the trained networks, evaluated once per pair, and so
    are the ``endpoint_*`` columns. A ``reset`` on a network without BatchNorm is skipped (no rows).

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
        return _analyse_pair(model_a, model_b, dataset, settings, spec, progress, alphas_per_pass, memory_share)


@contextmanager
def float_precision(precision: str):
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
) -> PairResult:
    if settings.fold_batchnorm:
        # the plain networks the BatchNorm nets compute; their spec comes from their own graph
        model_a, model_b = fold_batchnorm(model_a), fold_batchnorm(model_b)
        spec = derive_spec(model_a, dataset.train.x[:2])
    spec = spec if spec is not None else model_a.permutation_spec()
    train_eval = dataset.train.subset(settings.train_samples, seed=settings.subset_seed)
    stat_data = train_eval.head(settings.stat_samples)
    splits = {"train": train_eval, "test": dataset.test}
    alphas = sorted(float(a) for a in settings.alphas)
    result = PairResult()
    say = progress or (lambda _msg: None)

    clock = _Clock()
    points = spec.repair_points
    # The variance collapse (``layers``) is measured on training samples that REPAIR did not
    # use, so a repaired ratio near 1 is a finding and not true by construction: the next
    # stat_samples of the train-curve samples (the same ones when there are no others).
    held_out = (len(stat_data), min(2 * len(stat_data), len(train_eval)))
    if held_out[0] >= held_out[1]:
        held_out = (0, len(stat_data))
    if alphas_per_pass is not None and not (_is_int(alphas_per_pass) and alphas_per_pass >= 1):
        raise ValueError(f"alphas_per_pass must be a positive integer or None (automatic), got {alphas_per_pass!r}")
    endpoint: dict[str, tuple[dict[str, float], ...]] = {"train": (), "test": ()}
    moments: list[dict[str, Moments]] = []
    layer_moments: list[dict[str, Moments]] = []
    with clock("eval"):
        # The endpoints' statistics are recorded during their train evaluation, which passes
        # over the statistics samples (its first samples) and the held-out ones anyway.
        for model in (model_a, model_b):
            stats = MomentRecorder(spec.corrected_points, len(stat_data), axes=spec.channel_axes)
            later = MomentRecorder(points, held_out[1], held_out[0], axes=spec.channel_axes)
            train_metrics = evaluate(
                model, train_eval, batch_size=settings.eval_batch_size, record=Recorders(stats, later)
            )
            test_metrics = evaluate(model, dataset.test, batch_size=settings.eval_batch_size)
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
    curve_points = _CurvePoints(
        work, spec, splits, stat_data, settings, clock, (points, *held_out), moments_a, endpoint, per_pass
    )
    for align in settings.aligns:
        with clock("align"):
            perm = _align(align, spec, model_a, model_b, stat_data, settings, dataset.train)
            state_b = apply_permutation(spec, perm, model_b)
        align_seconds = clock.take()["align"]
        moments_b_aligned = permute_moments(spec, moments_b, perm)
        layer_target = target_moments(layer_moments[0], permute_moments(spec, layer_moments[1], perm), 0.5)
        for correction in (c for a, c in methods if a == align):
            say(f"{align}/{correction}")
            measured = curve_points(correction, state_a, state_b, moments_b_aligned, alphas)
            curve = {split: {"alpha": [], "loss": [], "acc": []} for split in splits}
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
                }
                for i, p in enumerate(points)
            ]
            spent = clock.take()
            row = {"align": align, "correction": correction}
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


class _CurvePoints:
    """The metrics of one correction's curve at every α: ``{α: {split: metrics, "layers": moments at 0.5}}``.

    ``per_pass`` α at a time: one (today's reference path: the interpolated network loaded,
    corrected and evaluated α by α) or several as one vmapped program (:mod:`repair_ray.stacked`),
    which gives the same numbers up to float rounding. The uncorrected curve's endpoints are the
    trained networks' evaluations (``endpoint``), not evaluated again.
    """

    def __init__(
        self,
        work: nn.Module,
        spec: PermutationSpec,
        splits: Mapping[str, TensorData],
        stat_data: TensorData,
        settings: PairSettings,
        clock: _Clock,
        record: tuple[Sequence[str], int, int],
        moments_a: Mapping[str, Moments],
        endpoint: Mapping[str, tuple[dict[str, float], ...]],
        per_pass: int,
    ) -> None:
        self.work, self.spec, self.splits, self.stat_data = work, spec, splits, stat_data
        self.settings, self.clock, self.record = settings, clock, record
        self.moments_a, self.endpoint, self.per_pass = moments_a, endpoint, per_pass
        self.skeleton = copy.deepcopy(work).to("meta") if per_pass > 1 else None  # the stacks' architecture

    def __call__(
        self,
        correction: str,
        state_a: Mapping[str, torch.Tensor],
        state_b: Mapping[str, torch.Tensor],
        moments_b: Mapping[str, Moments],
        alphas: Sequence[float],
    ) -> dict[float, dict]:
        out: dict[float, dict] = {}
        todo = []
        for alpha in alphas:
            if alpha in (0.0, 1.0) and correction == "none":
                out[alpha] = {split: self.endpoint[split][0 if alpha == 0.0 else 1] for split in self.splits}
            else:
                todo.append(alpha)
        if self.per_pass <= 1:
            for alpha in todo:
                out[alpha] = self._one(correction, state_a, state_b, moments_b, alpha)
        else:
            for chunk in chunks(todo, self.per_pass):
                out.update(self._stacked(correction, state_a, state_b, moments_b, chunk))
        return out

    def _one(
        self,
        correction: str,
        state_a: Mapping[str, torch.Tensor],
        state_b: Mapping[str, torch.Tensor],
        moments_b: Mapping[str, Moments],
        alpha: float,
    ) -> dict:
        work, settings = self.work, self.settings
        work.load_state_dict(interpolate_state(state_a, state_b, alpha))
        remove_carried(work)  # the previous point's carried affines
        with self.clock("stat"):
            _correct(work, correction, self.moments_a, moments_b, self.stat_data, alpha, self.spec, settings)
        points, start, stop = self.record
        # at alpha = 0.5 the train evaluation also measures the variance collapse (``layers``)
        recorder = MomentRecorder(points, stop, start, axes=self.spec.channel_axes) if alpha == 0.5 else None
        measured: dict = {}
        with self.clock("eval"):
            for split, data in self.splits.items():
                record = recorder if split == "train" else None
                measured[split] = evaluate(work, data, batch_size=settings.eval_batch_size, record=record)
        if recorder is not None:
            measured["layers"] = recorder.result()
        return measured

    def _stacked(
        self,
        correction: str,
        state_a: Mapping[str, torch.Tensor],
        state_b: Mapping[str, torch.Tensor],
        moments_b: Mapping[str, Moments],
        alphas: Sequence[float],
    ) -> dict[float, dict]:
        spec, settings = self.spec, self.settings
        stack = AlphaStack(self.skeleton, interpolated_tensors(self.work, state_a, state_b, alphas))
        carried: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        with self.clock("stat"):
            if correction != "none":
                plan = correction_plan(correction, spec, batchnorm=has_batchnorm(self.work))
                targets = None
                if plan.renormalised:
                    per_alpha = [target_moments(self.moments_a, moments_b, alpha) for alpha in alphas]
                    targets = {point: [t[point] for t in per_alpha] for point in plan.renormalised}
                carried = stack.correct(
                    self.stat_data,
                    reset=plan.reset,
                    targets=targets,
                    batch_size=settings.stat_batch_size,
                    axes=spec.channel_axes,
                    carried=frozenset(plan.carried),
                )
        out: dict[float, dict] = {alpha: {} for alpha in alphas}
        with self.clock("eval"):
            for split, data in self.splits.items():
                record = self.record if split == "train" and 0.5 in alphas else None
                metrics, moments = stack.evaluate(
                    data, batch_size=settings.eval_batch_size, carried=carried, axes=spec.channel_axes, record=record
                )
                for k, alpha in enumerate(alphas):
                    out[alpha][split] = metrics[k]
                    if alpha == 0.5 and record is not None:
                        out[alpha]["layers"] = {point: moments[point][k] for point in moments}
        return out


class _Clock:
    """Accumulates wall time per phase (``align``, ``stat``, ``eval``) until taken."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {"align": 0.0, "stat": 0.0, "eval": 0.0}

    @contextmanager
    def __call__(self, phase: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.spent[phase] += time.perf_counter() - started

    def take(self) -> dict[str, float]:
        spent, self.spent = self.spent, dict.fromkeys(self.spent, 0.0)
        return spent


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
    elif correction != "none":
        repair(
            model,
            moments_a,
            moments_b,
            stat_data,
            alpha=alpha,
            spec=spec,
            batch_size=settings.stat_batch_size,
            correction=correction,
        )
