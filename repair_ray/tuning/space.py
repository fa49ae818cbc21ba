"""The ``tune:`` section: a search space over a recipe's keys and how to search it (torch-free).

A :class:`Distribution` is plain data (``choice`` or ``grid`` of values, ``uniform`` or
``loguniform`` between two numbers); the Ray shell turns it into ``tune.choice`` & co. Every value a
space can produce is checked here against :class:`TrainConfig`'s own rules, merged over the recipe it
tunes, so a bad space fails before any trial starts: a key that is not a recipe's, a distribution
that does not exist, bounds the wrong way round, a range over an integer key, a value TrainConfig
refuses, a metric the trials do not report, a missing ``mode``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import Problems, SettingError, is_int, is_real, unknown_choice
from ..training.config import TrainConfig

KINDS = ("choice", "grid", "uniform", "loguniform")
"""``choice``: one of the values, sampled; ``grid``: every value (times ``num_samples``); ``uniform`` and
``loguniform``: a float between two bounds (log-uniform: evenly in log space, both bounds positive)."""
METRICS = ("val_acc", "val_loss")
"""What every trial reports each epoch: the mean over its seeds of the validation split's accuracy and loss."""
SCHEDULERS = ("asha", "fifo")
MODES = ("max", "min")
_TRAIN_TYPES = typing.get_type_hints(TrainConfig)


@dataclass(frozen=True)
class Distribution:
    """Where one recipe key's values come from: ``kind`` (:data:`KINDS`) and its ``values`` (the
    choices or grid points, or the two bounds of a range)."""

    kind: str
    values: tuple[Any, ...]

    @classmethod
    def parse(cls, spec: Any, where: str, problems: Problems) -> Distribution | None:
        """``{choice: [...]}``, ``{grid: [...]}``, ``{uniform: [low, high]}`` or ``{loguniform: [low, high]}``;
        None (with the problem under ``where``) for anything else."""
        if not isinstance(spec, Mapping) or len(spec) != 1:
            problems.add(where, f"must be one of {{{', '.join(f'{k}: [...]' for k in KINDS)}}}, got {spec!r}")
            return None
        kind, values = next(iter(spec.items()))
        if kind not in KINDS:
            problems.add(where, unknown_choice("distribution", kind, KINDS))
            return None
        if not isinstance(values, list) or not values:
            problems.add(f"{where}.{kind}", f"must be a non-empty list, got {values!r}")
            return None
        if kind in ("uniform", "loguniform"):
            if len(values) != 2 or not all(is_real(v) for v in values):
                problems.add(f"{where}.{kind}", f"must be two numbers [low, high], got {values!r}")
                return None
            low, high = values
            if not low < high:
                problems.add(f"{where}.{kind}", f"needs low < high, got {values!r}")
                return None
            if kind == "loguniform" and low <= 0:
                problems.add(f"{where}.{kind}", f"needs positive bounds (it samples their logarithm), got {values!r}")
                return None
        elif len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            problems.add(f"{where}.{kind}", f"lists a value twice: {values!r}")
            return None
        return cls(kind, tuple(values))

    @property
    def is_range(self) -> bool:
        return self.kind in ("uniform", "loguniform")

    def as_data(self) -> dict[str, list[Any]]:
        """The YAML form it was parsed from."""
        return {self.kind: list(self.values)}


@dataclass(frozen=True)
class TuneSettings:
    """How to tune each model config's recipe: a search ``space`` over :class:`TrainConfig` keys.

    ``num_samples`` samples are drawn from the space (with ``grid`` keys, that many per grid
    point); each trains ``seeds`` networks side by side for at most ``max_epochs`` epochs (None:
    the recipe's ``epochs``; fewer cut the recipe's schedule short, which still spans ``epochs``)
    and reports ``metric`` (:data:`METRICS`) after every epoch, averaged over its seeds, to be
    ``mode`` (max or min). ``scheduler: asha`` stops samples that trail the others at each rung
    (after ``grace_period`` epochs, then every ``reduction_factor`` times more); ``fifo`` runs
    every sample to the end. ``max_concurrent`` caps the samples in flight (None: as many as the
    cluster holds). The validation split is ``val_samples`` training samples drawn with
    ``val_seed``; the networks train on the rest, and the test split is never used.
    """

    space: Mapping[str, Distribution]
    mode: str
    metric: str = "val_acc"
    num_samples: int = 8
    scheduler: str = "asha"
    seeds: int = 1
    max_concurrent: int | None = None
    max_epochs: int | None = None
    grace_period: int = 1
    reduction_factor: int = 2
    val_samples: int = 5000
    val_seed: int = 0

    @classmethod
    def parse(cls, data: Mapping[str, Any], recipes: Mapping[str, TrainConfig]) -> TuneSettings:
        """The settings of a ``tune:`` mapping whose space is checked against every recipe it will
        tune (``recipes``: a name for messages -> the recipe); raises :class:`SettingError` with
        every problem, each under its key (``space.lr.loguniform``, ``metric``, ``mode``)."""
        problems = Problems("tune")
        data = dict(data)
        raw_space = data.pop("space", None)
        space: dict[str, Distribution] = {}
        if not isinstance(raw_space, Mapping) or not raw_space:
            problems.add("space", f"must map recipe keys (lr, weight_decay, ...) to distributions, got {raw_space!r}")
        else:
            for key, spec in raw_space.items():
                name = str(key).removeprefix("train.")
                if name not in _TRAIN_TYPES:
                    problems.add(f"space.{key}", unknown_choice("recipe key", name, tuple(_TRAIN_TYPES)))
                    continue
                distribution = Distribution.parse(spec, f"space.{key}", problems)
                if distribution is not None and _check_type(name, distribution, f"space.{key}", problems):
                    space[name] = distribution
        if "mode" not in data:
            problems.add("mode", f"is required: {' or '.join(MODES)} (whether the metric is to be maximised)")
        try:
            settings = cls(space=space, mode=data.pop("mode", "max"), **data)
        except TypeError as error:  # a key this class does not have: the schema forbids it; from Python, say so
            raise SettingError([("tune", str(error))], owner="tune") from None
        settings._check(problems)
        for name, recipe in recipes.items():
            settings._check_values(recipe, name, problems)
        problems.raise_if_any()
        return settings

    def _check(self, problems: Problems) -> None:
        if self.metric not in METRICS:
            problems.add("metric", f"{unknown_choice('metric', self.metric, METRICS)} (what each trial reports)")
        if self.mode not in MODES:
            problems.add("mode", unknown_choice("mode", self.mode, MODES))
        elif self.metric in METRICS and (self.mode == "max") != self.metric.endswith("acc"):
            want = "max" if self.metric.endswith("acc") else "min"
            problems.add("mode", f"{self.metric} is better {'higher' if want == 'max' else 'lower'}: mode {want}")
        if self.scheduler not in SCHEDULERS:
            problems.add("scheduler", unknown_choice("scheduler", self.scheduler, SCHEDULERS))
        for name in ("num_samples", "seeds", "grace_period", "val_samples"):
            value = getattr(self, name)
            if not (is_int(value) and value >= 1):
                problems.add(name, f"must be a positive integer, got {value!r}")
        for name in ("max_concurrent", "max_epochs"):
            value = getattr(self, name)
            if value is not None and not (is_int(value) and value >= 1):
                problems.add(name, f"must be a positive integer or null, got {value!r}")
        if not (is_int(self.reduction_factor) and self.reduction_factor >= 2):
            problems.add("reduction_factor", f"must be an integer >= 2, got {self.reduction_factor!r}")
        if not (is_int(self.val_seed) and self.val_seed >= 0):
            problems.add("val_seed", f"must be a non-negative integer, got {self.val_seed!r}")

    def _check_values(self, recipe: TrainConfig, name: str, problems: Problems) -> None:
        """Every value of the space (a range: both bounds) merged over ``recipe`` must be a TrainConfig."""
        for key, distribution in self.space.items():
            for value in distribution.values:
                try:
                    dataclasses.replace(recipe, **{key: value})
                except SettingError as error:
                    for _, message in error.problems:
                        problems.add(f"space.{key}.{distribution.kind}", f"{value!r} over {name}'s recipe: {message}")
        if self.max_epochs is not None and self.max_epochs > self.epochs_of(recipe):
            problems.add("max_epochs", f"must be at most the recipe's epochs ({self.epochs_of(recipe)}) of {name}")

    def epochs_of(self, recipe: TrainConfig) -> int:
        """The most epochs a sample of ``recipe`` may train: its ``epochs``, or the largest in the space."""
        epochs = self.space.get("epochs")
        return max(int(v) for v in epochs.values) if epochs is not None and not epochs.is_range else recipe.epochs

    def max_t(self, recipe: TrainConfig) -> int:
        """The epochs a sample that is never stopped trains (ASHA's ``max_t``)."""
        return self.max_epochs or self.epochs_of(recipe)

    def key(self, recipe: TrainConfig) -> str:
        """A stable hash of these settings and the recipe they tune: a tune of other settings is
        another experiment, with rows of its own (``tune_key``)."""
        described = {
            "space": {k: d.as_data() for k, d in sorted(self.space.items())},
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "space"},
            "recipe": dataclasses.asdict(recipe),
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _check_type(name: str, distribution: Distribution, where: str, problems: Problems) -> bool:
    """A range samples floats: only for float keys (``lr``, ``weight_decay``, ...)."""
    kind = _TRAIN_TYPES[name]
    if distribution.is_range and kind is not float:
        problems.add(
            f"{where}.{distribution.kind}",
            f"samples floats, but {name} takes {getattr(kind, '__name__', kind)} values: list them with choice or grid",
        )
        return False
    return True


def sampled_recipe(recipe: TrainConfig, sampled: Mapping[str, Any]) -> TrainConfig:
    """``recipe`` with a sample's values; a float of a range rounded to 6 significant digits (what
    a YAML snippet shows is what trained)."""
    values: dict[str, Any] = {k: _rounded(v) if isinstance(v, float) else v for k, v in sampled.items()}
    return dataclasses.replace(recipe, **values)


def _rounded(value: float) -> float:
    return float(f"{value:.6g}") if math.isfinite(value) else value
