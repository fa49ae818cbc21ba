"""Sweep configs: YAML → validated, typed config → the expanded plan of models and pairs.

Everything a user can get wrong fails here, before Ray starts, with a message naming the file
and the key path (``models[1].width``) and what was expected. This module imports no Ray.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import re
import types
import typing
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .. import storage
from ..data import dataset_options
from ..models import ARCHS
from ..pair import ALIGNS, CORRECTIONS, PairSettings, sample_forwards
from ..training import ModelConfig, TrainConfig


class ConfigError(ValueError):
    """A sweep config is invalid; the message names the file and every offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


Number = int | float


class ModelGrid(_Strict):
    """One entry of ``models``: every combination of the listed values is a model config."""

    arch: str
    width: Number | list[Number]
    depth: int | list[int] | None = None
    norm: str | list[str] = "none"


# ``train``: the core's TrainConfig fields (derived from it, so the two never drift apart) plus
# how often a trial checkpoints.
TrainSection = create_model(
    "TrainSection",
    __base__=_Strict,
    checkpoint_every=(int, 5),
    **{f.name: (typing.get_type_hints(TrainConfig)[f.name], f.default) for f in dataclasses.fields(TrainConfig)},
)


class EvalSection(_Strict):
    """``eval``: how many training samples the train curve and the statistics use."""

    train_samples: int | None = 10000
    stat_samples: int = 5000
    stat_batch_size: int = 1000
    eval_batch_size: int = 1000


class ResourceSpec(_Strict):
    cpu: float = 1.0
    gpu: float = 0.0


class Resources(_Strict):
    train: ResourceSpec = Field(default_factory=ResourceSpec)
    pair: ResourceSpec = Field(default_factory=ResourceSpec)


class FirstPairs(_Strict):
    first: int


class DatasetSection(BaseModel):
    """``dataset`` as a mapping: a name plus the dataset's options (e.g. synthetic's shape)."""

    model_config = ConfigDict(extra="allow")
    name: str


class SweepSection(_Strict):
    """The whole YAML document."""

    name: str
    storage: str = "./runs"
    dataset: str | DatasetSection = "mnist"
    models: list[ModelGrid]
    seeds: int | list[int] = 4
    train: TrainSection = Field(default_factory=TrainSection)
    pairs: Literal["all", "disjoint"] | FirstPairs = "all"
    align: list[str] = Field(default_factory=lambda: ["none", "weight", "activation"])
    correction: list[str] = Field(default_factory=lambda: ["none", "repair"])
    alphas: int | list[float] = 21
    eval: EvalSection = Field(default_factory=EvalSection)
    resources: Resources = Field(default_factory=Resources)
    max_pairs_in_flight: int | None = None
    pair_retries: int = 3
    train_retries: int = 1


# ---------------------------------------------------------------------------------------------
# The validated, expanded result
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    options: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options)}


@dataclass(frozen=True)
class ModelPlan:
    """One model config of the grid and the seeds it is trained with."""

    model_key: str
    model: ModelConfig
    seeds: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class SweepConfig:
    """A validated sweep: everything the stages need, nothing they must re-check."""

    name: str
    storage: str
    source: str  # the file it came from, for messages
    dataset: DatasetSpec
    train: TrainConfig
    checkpoint_every: int
    models: tuple[ModelPlan, ...]
    pair_settings: PairSettings
    resources: Resources
    max_pairs_in_flight: int | None
    pair_retries: int
    train_retries: int
    raw: dict[str, Any]

    @property
    def root(self) -> str:
        """``<storage>/<name>``: where everything of this sweep lives."""
        return storage.join(self.storage, self.name)

    @property
    def n_trials(self) -> int:
        return sum(len(m.seeds) for m in self.models)

    @property
    def n_pairs(self) -> int:
        return sum(len(m.pairs) for m in self.models)

    def with_storage(self, uri: str) -> SweepConfig:
        return _replace(self, storage=storage.normalize(uri))


def _replace(config: SweepConfig, **changes: Any) -> SweepConfig:
    return dataclasses.replace(config, **changes)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_config(path: str | Path, *, storage_override: str | None = None) -> SweepConfig:
    """Read, validate and expand a sweep config file; raises :class:`ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config ({error.strerror or error})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_config(data, source=str(path), storage_override=storage_override)


def parse_config(data: Any, *, source: str = "<config>", storage_override: str | None = None) -> SweepConfig:
    """Validate and expand an already-parsed config mapping; raises :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the config must be a mapping of keys (name, models, ...), got {type(data).__name__}"
        )
    try:
        section = SweepSection.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None
    problems: list[str] = []
    config = _expand(section, data, source, problems, storage_override)
    if problems:
        raise ConfigError(f"{source}: invalid sweep config:\n" + "\n".join(f"  - {p}" for p in problems))
    return config


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    seen = set()
    for item in error.errors():
        loc = _clean_loc(item["loc"])
        key = _path(loc)
        if item["type"] == "extra_forbidden":
            known = _known_keys(loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(known)}"
            message = f"{key}: unknown key{suggestion}"
        elif item["type"] == "missing":
            message = f"{key}: required key is missing"
        else:
            message = f"{key}: {item['msg'].lower()}, got {item.get('input')!r}"
        if key in seen and item["type"] != "extra_forbidden":
            continue  # a union reports one error per alternative: keep the first
        seen.add(key)
        lines.append(message)
    return f"{source}: invalid sweep config:\n" + "\n".join(f"  - {line}" for line in lines)


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic adds the tried alternative of a union to the path (e.g. "list[int]", "FirstPairs")
    out = []
    for part in loc:
        if isinstance(part, str) and (
            part in ("int", "float", "str", "bool", "none")
            or "[" in part
            or part[:1].isupper()
            or part.startswith("literal")
        ):
            continue
        out.append(part)
    return tuple(out)


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = SweepSection
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        model = _model_in(annotation)
        if model is None:
            return []
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) in (Union, list):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _expand(
    s: SweepSection, raw: dict[str, Any], source: str, problems: list[str], storage_override: str | None
) -> SweepConfig | None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", s.name):
        problems.append(f"name: must be letters, digits, '_', '.', '-' (it names a folder), got {s.name!r}")

    dataset = _dataset(s.dataset, problems)
    train = _train(s.train, problems)
    seeds = _seeds(s.seeds, problems)
    alphas = _alphas(s.alphas, problems)
    for key, values, known in (("align", s.align, ALIGNS), ("correction", s.correction, CORRECTIONS)):
        if not values:
            problems.append(f"{key}: must list at least one of {', '.join(known)}")
        for i, v in enumerate(values):
            if v not in known:
                hint = difflib.get_close_matches(v, known, n=1)
                problems.append(
                    f"{key}[{i}]: unknown {key} {v!r}"
                    + (f"; did you mean {hint[0]!r}?" if hint else f"; expected one of {', '.join(known)}")
                )
        if len(set(values)) != len(values):
            problems.append(f"{key}: lists a value twice: {values}")
    _check_eval(s.eval, problems)
    for stage in ("train", "pair"):
        spec: ResourceSpec = getattr(s.resources, stage)
        if not spec.cpu > 0:
            problems.append(f"resources.{stage}.cpu: must be positive, got {spec.cpu}")
        if spec.gpu < 0 or (spec.gpu > 1 and spec.gpu != int(spec.gpu)):
            problems.append(f"resources.{stage}.gpu: must be a fraction in [0, 1] or a whole number, got {spec.gpu}")
    if s.max_pairs_in_flight is not None and s.max_pairs_in_flight < 1:
        problems.append(f"max_pairs_in_flight: must be a positive integer, got {s.max_pairs_in_flight}")
    for key in ("pair_retries", "train_retries"):
        if getattr(s, key) < 0:
            problems.append(f"{key}: must be 0 or more, got {getattr(s, key)}")
    if isinstance(s.pairs, FirstPairs) and s.pairs.first < 1:
        problems.append(f"pairs.first: must be a positive integer, got {s.pairs.first}")

    if not s.models:
        problems.append("models: must list at least one model grid")
    model_configs = _model_grid(s.models, problems)
    if problems or dataset is None or train is None or seeds is None or alphas is None:
        return None

    pair_list = _pairing(seeds, s.pairs)
    plans = []
    seen: dict[str, int] = {}
    for i, mc in model_configs:
        key = model_key(mc, train, dataset)
        if key in seen:
            problems.append(f"models[{i}]: repeats a model config of models[{seen[key]}] ({key})")
            continue
        seen[key] = i
        plans.append(ModelPlan(key, mc, tuple(seeds), tuple(pair_list)))
    if "reset" in s.correction:
        without_bn = [p.model_key for p in plans if p.model.norm != "batch"]
        if without_bn:
            warnings.warn(
                f"{source}: correction 'reset' applies only to BatchNorm nets; it is skipped for "
                f"{len(without_bn)} model config(s) without BatchNorm ({', '.join(without_bn[:3])}"
                f"{', ...' if len(without_bn) > 3 else ''})",
                stacklevel=2,
            )
    settings = PairSettings(
        aligns=tuple(s.align),
        corrections=tuple(s.correction),
        alphas=tuple(alphas),
        train_samples=s.eval.train_samples,
        stat_samples=s.eval.stat_samples,
        stat_batch_size=s.eval.stat_batch_size,
        eval_batch_size=s.eval.eval_batch_size,
    )
    return SweepConfig(
        name=s.name,
        storage=storage.normalize(storage_override or s.storage),
        source=source,
        dataset=dataset,
        train=train,
        checkpoint_every=s.train.checkpoint_every,
        models=tuple(plans),
        pair_settings=settings,
        resources=s.resources,
        max_pairs_in_flight=s.max_pairs_in_flight,
        pair_retries=s.pair_retries,
        train_retries=s.train_retries,
        raw=raw,
    )


def _dataset(value: str | DatasetSection, problems: list[str]) -> DatasetSpec | None:
    name, options = (value, {}) if isinstance(value, str) else (value.name, dict(value.model_extra or {}))
    key = "dataset" if isinstance(value, str) else "dataset.name"
    try:
        allowed = dataset_options(name)
    except ValueError as error:
        problems.append(f"{key}: {error}")
        return None
    for option in options:
        if option not in allowed:
            accepted = ", ".join(allowed) if allowed else "no options"
            problems.append(f"dataset.{option}: dataset {name} takes {accepted}")
            return None
    return DatasetSpec(name, options)


def _train(t: TrainSection, problems: list[str]) -> TrainConfig | None:
    fields = t.model_dump()
    checkpoint_every = fields.pop("checkpoint_every")
    if checkpoint_every < 1:
        problems.append(f"train.checkpoint_every: must be a positive integer, got {checkpoint_every}")
    if t.epochs < 1:
        problems.append(f"train.epochs: must be a positive integer, got {t.epochs}")
        return None
    try:
        return TrainConfig(**fields)
    except ValueError as error:
        # TrainConfig's messages name "TrainConfig.<field>"
        problems.append(re.sub(r"^TrainConfig\.(\w+) ", r"train.\1: ", str(error)))
        return None


def _seeds(value: int | list[int], problems: list[str]) -> list[int] | None:
    if isinstance(value, int):
        if value < 2:
            problems.append(f"seeds: need at least 2 seeds to form a pair, got {value}")
            return None
        return list(range(value))
    if len(value) < 2:
        problems.append(f"seeds: need at least 2 seeds to form a pair, got {value}")
        return None
    if len(set(value)) != len(value):
        problems.append(f"seeds: lists a seed twice: {value}")
        return None
    if any(v < 0 for v in value):
        problems.append(f"seeds: must be non-negative integers, got {value}")
        return None
    return list(value)


def _alphas(value: int | list[float], problems: list[str]) -> list[float] | None:
    if isinstance(value, int):
        if value < 3:
            problems.append(f"alphas: need at least 3 points (0, 0.5, 1), got {value}")
            return None
        grid = [i / (value - 1) for i in range(value)]
    else:
        bad = [a for a in value if not (isinstance(a, (int, float)) and 0.0 <= a <= 1.0 and math.isfinite(a))]
        if bad:
            problems.append(f"alphas: every alpha must lie in [0, 1], got {bad}")
            return None
        grid = [float(a) for a in value]
    # the barrier needs both endpoints and the midpoint definitions need 0.5
    for must in (0.0, 0.5, 1.0):
        if not any(abs(a - must) < 1e-9 for a in grid):
            grid.append(must)
    return sorted(set(round(a, 12) for a in grid))


def _check_eval(e: EvalSection, problems: list[str]) -> None:
    if e.train_samples is not None and e.train_samples < 1:
        problems.append(f"eval.train_samples: must be positive (or null for the whole split), got {e.train_samples}")
    for key in ("stat_samples", "stat_batch_size", "eval_batch_size"):
        if getattr(e, key) < 1:
            problems.append(f"eval.{key}: must be a positive integer, got {getattr(e, key)}")
    if e.train_samples is not None and e.stat_samples > e.train_samples:
        problems.append(
            f"eval.stat_samples: the statistics samples are taken from the train-curve samples, so "
            f"stat_samples ({e.stat_samples}) must not exceed eval.train_samples ({e.train_samples})"
        )


def _model_grid(grids: list[ModelGrid], problems: list[str]) -> list[tuple[int, ModelConfig]]:
    out = []
    for i, g in enumerate(grids):
        where = f"models[{i}]"
        if g.arch not in ARCHS:
            hint = difflib.get_close_matches(g.arch, list(ARCHS), n=1)
            problems.append(
                f"{where}.arch: unknown arch {g.arch!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else f"; expected one of {', '.join(ARCHS)}")
            )
            continue
        arch = ARCHS[g.arch]
        widths, depths, norms = _as_list(g.width), _as_list(g.depth), _as_list(g.norm)
        ok = True
        for w in widths:
            if isinstance(w, bool) or not w > 0:
                problems.append(
                    f"{where}.width: must be a positive {'integer' if arch.integer_width else 'number'}, got {w}"
                )
                ok = False
            elif arch.integer_width and int(w) != w:
                problems.append(f"{where}.width: {g.arch} width counts hidden units and must be an integer, got {w}")
                ok = False
        for d in depths:
            if d is not None and not arch.depths(d):
                problems.append(f"{where}.depth: {g.arch} depth must be {arch.depth_hint}, got {d}")
                ok = False
        for n in norms:
            if n not in arch.norms:
                problems.append(f"{where}.norm: {g.arch} supports norm {', '.join(arch.norms)}; got {n!r}")
                ok = False
        if not (widths and norms):
            problems.append(f"{where}: width and norm must not be empty lists")
            ok = False
        if ok:
            for w, d, n in itertools.product(widths, depths, norms):
                width = int(w) if arch.integer_width else float(w)
                out.append((i, ModelConfig(g.arch, width, arch.default_depth if d is None else d, n)))
    return out


def _pairing(seeds: list[int], rule: str | FirstPairs) -> list[tuple[int, int]]:
    every = list(itertools.combinations(seeds, 2))
    if rule == "all":
        return every
    if rule == "disjoint":  # (s0, s1), (s2, s3), ...: pairs that share no network
        return [(seeds[i], seeds[i + 1]) for i in range(0, len(seeds) - 1, 2)]
    return every[: rule.first]


def model_key(model: ModelConfig, train: TrainConfig, dataset: DatasetSpec) -> str:
    """A readable, stable key: the model's shape plus a hash of model, training and dataset config."""
    payload = json.dumps(
        {"model": asdict(model), "train": asdict(train), "dataset": dataset.as_dict()},
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:10]
    return f"{model.arch}-w{model.width:g}-d{model.depth}-{model.norm}-{digest}"


def sample_forward_passes(config: SweepConfig, n_train: int, n_test: int) -> int:
    """Samples the pair stage pushes through a network, over all pairs (see :func:`sample_forwards`)."""
    s = config.pair_settings
    train_eval = n_train if s.train_samples is None else min(n_train, s.train_samples)
    return sum(
        len(plan.pairs) * sample_forwards(s, train_eval, n_test, batchnorm=plan.model.norm == "batch")
        for plan in config.models
    )
