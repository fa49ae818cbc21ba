"""How a pair is analysed: :class:`PairSettings`, the published presets and the analysis version.

The one home of the pair settings' rules (checked on construction) and of the constants the sweep
keys its rows by (:data:`ANALYSIS_VERSION`, :data:`LATER_FIELDS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from ..errors import Problems, is_int, unknown_choice
from ..names import ALIGNS, BATCHNORM_ONLY, CORRECTIONS, DEFAULT_ALIGNS
from ..permutation.learned import (
    BATCHNORM_MODES,
    LEARNED_INITS,
    OPTIMIZERS,
    SINKHORN_OBJECTIVES,
    SINKHORN_SELECTS,
    STE_SELECTS,
)
from ..permutation.sinkhorn import SINKHORN_GRADIENTS, SINKHORN_ORDERS
from ..permutation.weight_matching import WEIGHT_STARTS

_LEARNED = ("steps", "epochs", "lr", "optimizer", "batch_size", "samples", "init", "select", "batchnorm")
METHOD_FIELDS = {
    "ste": tuple(f"ste_{f}" for f in (*_LEARNED, "momentum")),
    "sinkhorn": tuple(f"sinkhorn_{f}" for f in (*_LEARNED, "objective", "temperatures", "order", "gradient")),
}
# The published methods by name (``ste: {preset: git-rebasin}``): every setting each paper's code
# uses; settings given beside a preset override it. Sources: samuela/git-re-basin
# ``src/mnist_mlp_ste2.py`` (250 epochs of the 60k MNIST training images, batch 1000, SGD lr 1e-2
# momentum 0.9, from the identity, the best projection by minibatch loss); fagp/sinkhorn-rebasin's
# MLP example (20 epochs of 9,000 training images, batch 1000, AdamW lr 0.1, temperature 1, 20
# Sinkhorn iterations, each normalising columns then rows, differentiated implicitly at the fixed
# point; from the identity plus noise, the final permutation; BatchNorm with batch statistics).
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
            "order": "columns",
            "gradient": "implicit",
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
LATER_FIELDS = {
    "precision": "fp32",
    "test_samples": None,
    "test_flip": False,
    "stat_augment": False,
    "sinkhorn_order": "rows",
    "sinkhorn_gradient": "unrolled",
}
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
    # test samples on which the test curve is evaluated (None: the whole test split; else a subset
    # drawn with subset_seed, as the train samples are)
    test_samples: int | None = None
    # flip test-time augmentation on the test split: logits averaged over each image and its mirror
    # (the REPAIR ImageNet notebook evaluates val5k so); the train split is never flipped
    test_flip: bool = False
    # training samples for matching and REPAIR/RESET statistics: the first of the train-curve
    # samples, or "all" (the whole train split; then train_samples is None, the whole split too)
    stat_samples: int | str = 5000
    # the statistics samples augmented as training augments them (one draw per sample, from the
    # subset seed), for the matching activations and REPAIR/RESET statistics
    stat_augment: bool = False
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
    # each Sinkhorn iteration normalises rows then columns ("rows", this tool's first version) or
    # columns then rows ("columns", Peña et al.); its gradient through the iterations ("unrolled")
    # or of their fixed point ("implicit", Peña et al.)
    sinkhorn_order: str = "rows"
    sinkhorn_gradient: str = "unrolled"
    precision: str = "fp32"
    # fold each BatchNorm into the layer before it, then analyse the plain network (the REPAIR
    # paper's depth sweep: MLPs trained with BatchNorm, fused before matching)
    fold_batchnorm: bool = False

    def __post_init__(self) -> None:
        problems = Problems("PairSettings")
        known: Sequence[str]
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
        for name in ("train_samples", "test_samples"):
            value = getattr(self, name)
            if value is not None and not (is_int(value) and value >= 1):
                problems.add(name, f"must be a positive integer (or None for the whole split), got {value!r}")
        if not isinstance(self.test_flip, bool):
            problems.add("test_flip", f"must be true or false, got {self.test_flip!r}")
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
            ("sinkhorn_order", SINKHORN_ORDERS),
            ("sinkhorn_gradient", SINKHORN_GRADIENTS),
        ):
            if getattr(self, name) not in known:
                problems.add(name, unknown_choice(name.rsplit("_", 1)[1], getattr(self, name), known))
        for name in ("ste_epochs", "ste_batch_size", "sinkhorn_epochs", "sinkhorn_batch_size"):
            value = getattr(self, name)
            if value is not None and not (is_int(value) and value >= 1):
                problems.add(name, f"must be a positive integer or unset, got {value!r}")
        for name in ("ste_samples", "sinkhorn_samples"):
            value = getattr(self, name)
            if value is not None and value != "all" and not (is_int(value) and value >= 1):
                problems.add(name, f"must be a positive integer, 'all' or unset, got {value!r}")
        value = self.ste_momentum
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            problems.add("ste_momentum", f"must be a number in [0, 1), got {value!r}")
        temps: Sequence[float] = self.sinkhorn_temperatures
        try:
            temps = tuple(float(t) for t in temps)
            ok = len(temps) == 2 and all(0 < t < float("inf") for t in temps)
        except (TypeError, ValueError):
            ok = False
        if ok:
            object.__setattr__(self, "sinkhorn_temperatures", temps)
        else:
            problems.add("sinkhorn_temperatures", f"must be two positive numbers [first, last], got {temps!r}")
        stat = self.stat_samples
        if stat != "all" and not (is_int(stat) and cast(int, stat) >= 1):
            problems.add("stat_samples", f"must be a positive integer or 'all', got {self.stat_samples!r}")
        if not isinstance(self.stat_augment, bool):
            problems.add("stat_augment", f"must be true or false, got {self.stat_augment!r}")
        for name in (
            "stat_batch_size",
            "eval_batch_size",
            "weight_matching_max_iter",
            "weight_matching_restarts",
            "ste_steps",
            "sinkhorn_steps",
        ):
            if not (is_int(getattr(self, name)) and getattr(self, name) >= 1):
                problems.add(name, f"must be a positive integer, got {getattr(self, name)!r}")
        for name in ("subset_seed", "weight_matching_seed"):
            if not (is_int(getattr(self, name)) and getattr(self, name) >= 0):
                problems.add(name, f"must be a non-negative integer, got {getattr(self, name)!r}")
        if not problems and self.train_samples is not None and self.stat_samples == "all":
            problems.add(
                "stat_samples",
                f"'all' takes the statistics over the whole train split, which are the first of the "
                f"train-curve samples, so train_samples must be null (the whole split), got {self.train_samples}",
            )
        elif not problems and self.train_samples is not None and cast(int, self.stat_samples) > self.train_samples:
            problems.add(
                "stat_samples",
                f"the statistics samples are taken from the train-curve samples, so stat_samples "
                f"({self.stat_samples}) must not exceed train_samples ({self.train_samples})",
            )
        problems.raise_if_any()

    def stat_count(self, n_train_eval: int) -> int:
        """How many statistics samples a pair uses when its train curve has ``n_train_eval`` samples."""
        return n_train_eval if self.stat_samples == "all" else min(cast(int, self.stat_samples), n_train_eval)

    def held_out_split(self, n_train: int | None = None) -> str:
        """Where the held-out samples of the ``layers`` table come from: ``train`` (the train-curve
        samples after the statistics samples) when there are any, else ``test`` (the first samples
        of the test curve's): never the samples REPAIR's statistics were measured on. ``n_train``:
        the train split's size, where it is known (it decides when ``train_samples`` is None)."""
        if self.stat_samples == "all":
            return "test"
        n_eval = n_train if self.train_samples is None else min(self.train_samples, n_train or self.train_samples)
        return "train" if n_eval is None or n_eval > self.stat_count(n_eval) else "test"

    @property
    def alpha_points(self) -> tuple[float, ...]:
        """The α grid: ``alphas`` as construction left it (the sorted points, never a count)."""
        return cast(tuple[float, ...], self.alphas)

    def methods(self, *, batchnorm: bool) -> list[tuple[str, str]]:
        """The (align, correction) combinations analysed for a net with or without BatchNorm, in order
        (a net whose BatchNorms are folded is analysed as one without)."""
        return [
            (align, correction)
            for align in self.aligns
            for correction in self.corrections
            if correction_applies(correction, batchnorm=batchnorm and not self.fold_batchnorm)
        ]
