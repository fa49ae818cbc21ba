"""The shape of a sweep YAML file (pydantic) and the wording of its errors.

This module knows which keys exist and their types; it states no rule of its own about values.
The values are checked by the core objects they become (``ModelConfig``, ``TrainConfig``,
``PairSettings``, the dataset registry) and by :mod:`repair_ray.sweep.config` for the few rules
that belong to a sweep alone (its name, seeds, pairing, resources).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from typing import TYPE_CHECKING, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, create_model

from ..pair import PairSettings
from ..training import TrainConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


Number = int | float


class _TrainExtras(_Strict):
    """The keys of ``train`` that are the sweep's, not the core's TrainConfig's."""

    checkpoint_every: int = 5  # how often a trial checkpoints
    seeds_per_trial: int | Literal["auto"] = "auto"  # how many seeds of a model config one trial trains together
    compile: bool = False  # trials train through torch.compile
    # workers that train one network data-parallel (Ray Train's TorchTrainer, DDP), each with resources.train
    workers_per_trial: int = 1


# ``train``: the core's TrainConfig fields (derived from it, so the two never drift apart) plus the
# sweep's own. Type checkers see the sweep's keys only (the core's are read as a dict: model_dump).
_TRAIN_FIELDS: dict[str, Any] = {
    f.name: (typing.get_type_hints(TrainConfig)[f.name], f.default) for f in dataclasses.fields(TrainConfig)
}
if TYPE_CHECKING:
    TrainSection = _TrainExtras
else:
    TrainSection = create_model("TrainSection", __base__=_TrainExtras, **_TRAIN_FIELDS)


# ``models[i].train``: any of the core's TrainConfig fields, each replacing the sweep's value for that
# grid's model configs (how trials run, the sweep's own keys above, stays the sweep's).
if TYPE_CHECKING:
    TrainOverride = _Strict
else:
    TrainOverride = create_model(
        "TrainOverride", __base__=_Strict, **{name: (kind | None, None) for name, (kind, _) in _TRAIN_FIELDS.items()}
    )


class ModelGrid(_Strict):
    """One entry of ``models``: every combination of the listed values is a model config."""

    arch: str
    width: Number | list[Number | list[int]] | None = None  # a list inside the list: per-layer widths
    depth: int | list[int] | None = None
    norm: str | list[str] | None = None
    init: str | list[str] | None = None  # the zoo's initialisation: torch, he or lecun (a list varies it)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # networks trained elsewhere: a glob or a list of state_dict / safetensors files (local, file://, s3://, gs://)
    checkpoints: str | list[str] | None = None
    # the sweep's ``train`` with these keys replaced, for this grid's model configs (part of their keys)
    train: TrainOverride | None = None


# The defaults of the analysis settings are PairSettings' own (one home).
_PAIR_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(PairSettings)}


class EvalSection(_Strict):
    """``eval``: how many training samples the train curve and the statistics use."""

    train_samples: int | None = 10000
    # the first train_samples for matching and REPAIR statistics, or all (the whole train split)
    stat_samples: int | Literal["all"] = 5000
    # those samples augmented as training augments its inputs
    stat_augment: bool = _PAIR_DEFAULTS["stat_augment"]
    # the test split's samples (null: all of it) and flip test-time augmentation on it
    test_samples: int | None = _PAIR_DEFAULTS["test_samples"]
    test_flip: bool = _PAIR_DEFAULTS["test_flip"]
    stat_batch_size: int = 1000
    eval_batch_size: int = 1000
    # how many α one forward pass evaluates: speed only, not an analysis setting (see analyse_pair)
    alphas_per_pass: int | Literal["auto"] = "auto"
    precision: str = _PAIR_DEFAULTS["precision"]
    # analyse the plain networks the BatchNorm nets compute (each BatchNorm folded into its layer)
    fold_batchnorm: bool = _PAIR_DEFAULTS["fold_batchnorm"]


class WeightSection(_Strict):
    """``weight``: weight matching's start (``forward`` or Git Re-Basin's ``identity``), restarts
    (best of K visiting orders) and cap on sweeps (``align: weight``, and the learned matchings'
    start)."""

    start: str = _PAIR_DEFAULTS["weight_matching_start"]
    restarts: int = _PAIR_DEFAULTS["weight_matching_restarts"]
    max_iter: int = _PAIR_DEFAULTS["weight_matching_max_iter"]


class _LearnedSection(_Strict):
    """A learned matching's settings; unset ones come from ``preset`` (a published method by name,
    see ``repair_ray.pair.PRESETS``), else from PairSettings' defaults."""

    preset: str | None = None
    steps: int | None = None
    epochs: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    batch_size: int | None = None
    samples: int | Literal["all"] | None = None
    init: str | None = None
    select: str | None = None
    batchnorm: str | None = None


class SteSection(_LearnedSection):
    """``ste``: Git Re-Basin's straight-through estimator (``align: ste``)."""

    momentum: float | None = None


class SinkhornSection(_LearnedSection):
    """``sinkhorn``: Sinkhorn re-basin (``align: sinkhorn``)."""

    objective: str | None = None
    temperatures: list[float] | None = None
    order: str | None = None  # rows or columns first in each Sinkhorn iteration
    gradient: str | None = None  # unrolled or implicit


class ResourceSpec(_Strict):
    cpu: float = 1.0
    gpu: float = 0.0
    # GiB of one GPU, for train.seeds_per_trial: auto (the driver may see no GPU); None: 16
    gpu_memory: float | None = None


class Resources(_Strict):
    train: ResourceSpec = Field(default_factory=ResourceSpec)
    pair: ResourceSpec = Field(default_factory=ResourceSpec)


FLUSH_PAIRS = 200  # pairs per part file at most (flush.pairs)
FLUSH_SECONDS = 30.0  # ... and at most this long between flushes (flush.seconds)


class FlushSection(_Strict):
    """``flush``: how often the pair stage writes finished pairs (a crash loses at most this much)."""

    pairs: int = FLUSH_PAIRS
    seconds: float = FLUSH_SECONDS


class TrackingSection(_Strict):
    """``tracking``: where trials are logged besides the tables (``mlflow``: an MLflow tracking URI)."""

    mlflow: str | None = None


class BranchSection(_Strict):
    """``branch``: Frankle et al.'s instability analysis. Each trunk (seed in ``trunks``) trains
    to each epoch of ``at_epochs`` (0: the shared initialisation only); the sweep's ``seeds`` are
    its children there, differing only in data order, and pairs form among them."""

    at_epochs: list[int]
    trunks: int | list[int] = 1


class ImpSection(_Strict):
    """``imp``: iterative magnitude pruning with rewinding (Frankle et al.'s lottery tickets). Each
    trunk (seed in ``trunks``) trains to ``rewind_epoch``; round 0 trains the sweep's ``seeds``
    (children, differing in data order) dense from there; round r >= 1 prunes ``rate`` of the weights
    that survive in round r-1's first child (global magnitude, conv and linear weights), rewinds
    the survivors to the trunk's weights at ``rewind_epoch`` and trains the children again."""

    rounds: int
    rate: float
    rewind_epoch: int = 0
    trunks: int | list[int] = 1


class TuneSection(_Strict):
    """``tune``: how ``repair-ray tune`` tunes each model config's recipe (:class:`~repair_ray.tuning.TuneSettings`
    checks the values; its defaults are there, ``mode`` has none)."""

    # recipe key -> {choice: [...]} | {grid: [...]} | {uniform: [low, high]} | {loguniform: [low, high]}
    space: dict[str, Any]
    mode: str | None = None
    metric: str | None = None
    num_samples: int | None = None
    scheduler: str | None = None
    seeds: int | None = None
    max_concurrent: int | None = None
    max_epochs: int | None = None
    grace_period: int | None = None
    reduction_factor: int | None = None
    val_samples: int | None = None
    val_seed: int | None = None


class PairsSection(_Strict):
    """``pairs`` as a mapping: one design (:mod:`~repair_ray.sweep.pair_designs` states their rules)."""

    first: int | None = None  # the first k pairs of all
    sample: StrictInt | None = None  # K pairs drawn without replacement, stable as seeds and K grow
    seed: StrictInt | None = None  # the seed of the sample's draw (default 0)
    star: StrictInt | None = None  # every seed against this one


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
    branch: BranchSection | None = None
    imp: ImpSection | None = None
    train: TrainSection = Field(default_factory=TrainSection)
    pairs: Literal["all", "disjoint"] | PairsSection = "all"
    align: list[str] = Field(default_factory=lambda: list(_PAIR_DEFAULTS["aligns"]))
    correction: list[str] = Field(default_factory=lambda: list(_PAIR_DEFAULTS["corrections"]))
    alphas: int | list[float] = 21
    eval: EvalSection = Field(default_factory=EvalSection)
    weight: WeightSection = Field(default_factory=WeightSection)
    ste: SteSection = Field(default_factory=SteSection)
    sinkhorn: SinkhornSection = Field(default_factory=SinkhornSection)
    resources: Resources = Field(default_factory=Resources)
    max_pairs_in_flight: int | None = None
    max_trials_in_flight: int | None = None
    flush: FlushSection = Field(default_factory=FlushSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    tune: TuneSection | None = None
    pair_retries: int = 3
    train_retries: int = 1


def key_path(loc: tuple[Any, ...]) -> str:
    """``("models", 1, "width")`` -> ``models[1].width``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def describe_validation_error(error: ValidationError) -> list[str]:
    """One line per problem pydantic found, with the key path and a did-you-mean for unknown keys.

    A mapping given where a word or a mapping may stand (``pairs: {sampel: 3}``) is named by the
    mapping's own problems, not also by "should be 'all' or 'disjoint'"."""
    lines = []
    seen = set()
    items = error.errors()
    inside = {key_path(_clean_loc(item["loc"])[:-1]) for item in items if len(_clean_loc(item["loc"])) > 1}
    for item in items:
        loc = _clean_loc(item["loc"])
        key = key_path(loc)
        if item["type"] == "literal_error" and isinstance(item.get("input"), dict) and key in inside:
            continue
        if item["type"] == "extra_forbidden":
            known = _known_keys(loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(known)}"
            message = f"{key}: unknown key{suggestion}"
        elif item["type"] == "missing":
            message = f"{key}: required key is missing"
        else:
            said = item["msg"].lower()
            # pydantic's own message may say what it got ("got a number with a fractional part"): one "got"
            message = (
                f"{key}: {said} ({item.get('input')!r})"
                if " got " in f" {said}"
                else f"{key}: {said}, got {item.get('input')!r}"
            )
        if key in seen and item["type"] != "extra_forbidden":
            continue  # a union reports one error per alternative: keep the first
        seen.add(key)
        lines.append(message)
    return lines


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic adds the tried alternative of a union to the path (e.g. "list[int]", "PairsSection")
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


# ---------------------------------------------------------------------------------------------
# Validating a document against the shape: every problem at once
# ---------------------------------------------------------------------------------------------


def validate_section(data: dict[str, Any]) -> tuple[SweepSection | None, list[str], tuple[str, ...]]:
    """The config's sections, with pydantic's problems; a key of the wrong type or an unknown key is
    left out (its default taken) so that the problems of every other key are found too.

    Returns the section (None when even without the rejected keys the document has no shape),
    pydantic's problems, and the key paths left out.
    """
    problems: list[str] = []
    removed: list[tuple[Any, ...]] = []
    data = copy.deepcopy(data)
    for _ in range(3):  # each round leaves out what pydantic rejected; a required key missing ends it
        try:
            return SweepSection.model_validate(data), problems, tuple(key_path(p) for p in removed)
        except ValidationError as error:
            problems += [p for p in describe_validation_error(error) if p not in problems]
            located = [key_of(data, item["loc"]) for item in error.errors()]
            if any(item["type"] == "missing" for item in error.errors()) or None in located:
                return None, problems, ()
            for path in sorted({p for p in located if p is not None}, key=len):
                if not any(path[: len(done)] == done for done in removed):
                    pop_key(data, path)
                    removed.append(path)
    return None, problems, ()


def key_of(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The path of the deepest mapping key on ``loc`` that ``data`` holds (None: not even the first);
    pydantic's locations may end in the alternatives of a union, which the data does not hold."""
    node: Any = data
    path: tuple[Any, ...] = ()
    deepest: tuple[Any, ...] | None = None
    for part in loc:
        if isinstance(node, dict) and part in node:
            deepest = (*path, part)
        elif not (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            break
        node, path = node[part], (*path, part)
    return deepest


def pop_key(data: Any, path: tuple[Any, ...]) -> None:
    for part in path[:-1]:
        data = data[part]
    data.pop(path[-1], None)


def follows_from(problem: str, keys: tuple[str, ...]) -> bool:
    """Whether ``problem`` is about one of ``keys`` (or a key inside it)."""
    return any(problem.startswith(key) and problem[len(key) : len(key) + 1] in (":", ".", "[", " ") for key in keys)
