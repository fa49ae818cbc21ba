"""Sweep configs: YAML -> validated, typed :class:`SweepConfig`, with the grid expanded.

Everything a user can get wrong fails here, before Ray starts, with a message naming the file
and the key path (``models[1].width``) and what was expected. The rules themselves live with the
core objects the values become (``ModelConfig``, ``TrainConfig``, ``PairSettings``, the dataset
registry): this module builds those objects and puts the YAML key path in front of their
:class:`~repair_ray.SettingError` problems. The rules of a sweep alone (resources, retries) are
in :mod:`.rules`, those of its seeds and pair design in :mod:`.pair_designs`, those of its study
designs (branch, imp) in :mod:`.designs`, the grid it expands to in :mod:`.plans`. This module
imports no Ray.

A network named ``package.module:factory`` is imported only when the caller allows its module
(``allow_import``); a config read back from a sweep folder (``stored=True``) imports nothing.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..datasets import check_dataset, dataset_files, dataset_loading, split_sizes
from ..errors import unknown_choice
from ..io import storage
from ..models import ModelConfig
from ..models.external import allowed_modules, refusal
from ..pair import METHOD_FIELDS, PRESETS, PairSettings
from ..pruning import imp_sparsity
from ..training import TrainConfig
from ..tuning.space import TuneSettings
from .designs import branch_points, imp_branch, prunable_weights
from .imports import Checking, imported_networks, known_files, recorded_networks, training_only_keys
from .messages import ImportedNetwork
from .pair_designs import design_label, design_pairs, sweep_seeds
from .plans import Branch, DatasetSpec, ModelPlan, imported_model_key, model_key
from .recipes import built, grid_trains, sweep_train, train_overrides, tune_settings
from .rules import (
    check_specs,
    check_stat_augment,
    check_streamed,
    check_sweep_settings,
    check_workers,
    mlflow_installed,
    warn_skipped_corrections,
)
from .schema import DatasetSection, ModelGrid, Resources, SweepSection, follows_from, validate_section
from .stacking import stack_size

__all__ = ["ConfigError", "DatasetSpec", "SweepConfig", "load_config", "mlflow_installed", "parse_config"]


class ConfigError(ValueError):
    """A sweep config is invalid; the message names the file and every offending key."""


@dataclass(frozen=True)
class SweepConfig:
    """A validated sweep: everything the stages need, nothing they must re-check."""

    name: str
    storage: str
    source: str  # the file it came from, for messages
    dataset: DatasetSpec
    train: TrainConfig
    checkpoint_every: int
    seeds_per_trial: int | None  # None: auto (see stack_size)
    compile: bool  # train.compile: trials train through torch.compile (not part of a model key)
    # train.workers_per_trial: workers that train each network data-parallel (Ray Train; not part of a model key)
    workers_per_trial: int
    data_path: str | None  # memory | stream: how the dataset is read (None: only its files, not here, tell)
    models: tuple[ModelPlan, ...]
    pair_settings: PairSettings
    alphas_per_pass: int | None  # eval.alphas_per_pass; None: automatic (see repair_ray.analyse_pair)
    resources: Resources
    max_pairs_in_flight: int | None
    max_trials_in_flight: int | None
    flush_pairs: int
    flush_seconds: float
    pair_retries: int
    train_retries: int
    raw: dict[str, Any]
    # the modules the networks may import (--allow-import): they travel with the trials and pair tasks
    allow_import: tuple[str, ...] = ()
    # model key -> whether its network has BatchNorm (which corrections apply): read off the network where it
    # may be built, else from what the sweep folder recorded (a stored config whose code is not imported)
    batchnorm: Mapping[str, bool] = field(default_factory=dict)
    mlflow_uri: str | None = None  # tracking.mlflow: one MLflow run per trained network
    tune: TuneSettings | None = None  # the tune section: how `repair-ray tune` tunes each model config's recipe
    pair_design: str = "all"  # `pairs` as the rows' pair_design column writes it (all, sample:K:seed=S, star:i, ...)
    # stack_size's estimates, once per model config (init=False: a copy made by dataclasses.replace starts empty)
    _stack_sizes: dict[tuple[str, float, int | None], int] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    @property
    def root(self) -> str:
        """``<storage>/<name>``: where everything of this sweep lives."""
        return storage.join(self.storage, self.name)

    def stack_size(self, plan: ModelPlan, gpu: float, per_slot: int | None = None) -> int:
        """How many seeds of ``plan`` a trial trains together, vectorised, when trials get ``gpu``
        GPUs and each slot of the cluster has ``per_slot`` seeds to train (``train.seeds_per_trial``;
        ``auto``: :func:`~repair_ray.sweep.stacking.stack_size`). New networks of ``plan`` train
        together exactly when it is more than 1 (never for imported networks, which are not trained, for
        networks trained across several workers, or on a dataset streamed from disk)."""
        if plan.is_imported or self.workers_per_trial > 1 or self.data_path == "stream":
            return 1
        key = (plan.model_key, gpu, per_slot)
        if key not in self._stack_sizes:  # estimated on the meta device: once per model config
            self._stack_sizes[key] = stack_size(
                plan,
                plan.recipe(self.train),
                self.dataset.as_dict(),
                seeds_per_trial=self.seeds_per_trial,
                gpu=gpu,
                gpu_memory_gib=self.resources.train.gpu_memory,
                per_slot=per_slot,
            )
        return self._stack_sizes[key]

    @property
    def n_trials(self) -> int:
        return sum(len(m.seeds) for m in self.models)

    @property
    def n_pairs(self) -> int:
        return sum(len(m.pairs) for m in self.models)


def load_config(
    path: str | Path,
    *,
    storage_override: str | None = None,
    allow_import: Iterable[str] | str | None = (),
    check_files: bool = True,
) -> SweepConfig:
    """Read, validate and expand a sweep config file; raises :class:`ConfigError` (see :func:`parse_config`)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config ({error.strerror or error})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_config(
        data, source=str(path), storage_override=storage_override, allow_import=allow_import, check_files=check_files
    )


def parse_config(
    data: Any,
    *,
    source: str = "<config>",
    storage_override: str | None = None,
    allow_import: Iterable[str] | str | None = (),
    check_files: bool = True,
    stored: bool = False,
    imported: Mapping[str, tuple[ImportedNetwork, ...]] | None = None,
) -> SweepConfig:
    """Validate and expand an already-parsed config mapping; raises :class:`ConfigError` listing every problem.

    Args:
        allow_import: the modules (or packages above them) that ``arch: package.module:factory``
            may import. Naming a module runs its code, so a network whose module is not allowed is
            a problem of ``models[i].arch`` and nothing is imported. torchvision's builders need
            no allowance.
        check_files: check that the dataset's files are on this machine (an image folder must be;
            a torchvision dataset missing here is a warning, since the workers download it), and
            every network file ``models[i].checkpoints`` names; without it, only the network files
            in buckets are checked (``submit``: local paths are the cluster's).
        stored: a config read back from a sweep folder (``status``, ``report``): networks named
            by a module are kept as plain data, never imported, and the checks that need their code
            are skipped; no file is checked, and imported networks are the ones its run recorded
            (``imported``: model key -> networks).
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the config must be a mapping of keys (name, models, ...), got {type(data).__name__}"
        )
    try:
        allowed = () if stored else allowed_modules(allow_import)
    except ValueError as error:
        raise ConfigError(f"{source}: {error}") from None
    section, problems, removed = validate_section(data)
    if section is None:
        raise ConfigError(_invalid(source, problems))
    found = len(problems)
    checking: Checking = "skip" if stored else "check" if check_files else "remote"
    config = _expand(
        section, data, source, problems, storage_override, allowed, check_files and not stored, checking, imported
    )
    # a key pydantic rejected was left out to check the rest: what follows from its absence is not news
    problems[found:] = [p for p in problems[found:] if not follows_from(p, removed)]
    if problems or config is None:
        raise ConfigError(_invalid(source, problems))
    return config


def _invalid(source: str, problems: list[str]) -> str:
    return f"{source}: invalid sweep config:\n" + "\n".join(f"  - {p}" for p in dict.fromkeys(problems))


# PairSettings field -> the YAML key that sets it
_PAIR_KEYS = {
    "aligns": "align",
    "corrections": "correction",
    "alphas": "alphas",
    "train_samples": "eval.train_samples",
    "stat_samples": "eval.stat_samples",
    "stat_augment": "eval.stat_augment",
    "test_samples": "eval.test_samples",
    "test_flip": "eval.test_flip",
    "stat_batch_size": "eval.stat_batch_size",
    "eval_batch_size": "eval.eval_batch_size",
    "precision": "eval.precision",
    "fold_batchnorm": "eval.fold_batchnorm",
    "weight_matching_start": "weight.start",
    "weight_matching_restarts": "weight.restarts",
    "weight_matching_max_iter": "weight.max_iter",
    **{f: f.replace("_", ".", 1) for fields in METHOD_FIELDS.values() for f in fields},
}


def _learned(method: str, section: Any, problems: list[str]) -> dict[str, Any]:
    """PairSettings' fields of a learned matching from its YAML section: the preset's values, then
    the keys given beside it (``steps`` given alone replaces the preset's ``epochs``)."""
    given = {k: v for k, v in section.model_dump().items() if k != "preset" and v is not None}
    values: dict[str, Any] = {}
    if section.preset is not None:
        known = PRESETS[method]
        if section.preset not in known:
            problems.append(f"{method}.preset: {unknown_choice('preset', section.preset, tuple(known))}")
        else:
            values.update(known[section.preset])
            if "steps" in given and "epochs" not in given:
                values.pop("epochs", None)
    values.update(given)
    if "temperatures" in values:
        values["temperatures"] = tuple(values["temperatures"])
    return {f"{method}_{k}": v for k, v in values.items()}


def _pair_key(setting: str) -> str:
    field, bracket, rest = setting.partition("[")
    return _PAIR_KEYS.get(field, field) + bracket + rest


def _expand(
    s: SweepSection,
    raw: dict[str, Any],
    source: str,
    problems: list[str],
    storage_override: str | None,
    allowed: tuple[str, ...],
    check_files: bool,
    checking: Checking,
    recorded: Mapping[str, tuple[ImportedNetwork, ...]] | None,
) -> SweepConfig | None:
    where = storage_override or s.storage
    if (reason := storage.unsupported(where)) is not None:
        problems.append(f"{'--storage' if storage_override else 'storage'}: {reason}, got {storage.redact(where)!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", s.name):
        problems.append(f"name: must be letters, digits, '_', '.', '-' (it names a folder), got {s.name!r}")

    dataset = _dataset(s.dataset, problems, check_files, source)
    loading = dataset_loading(dataset.name, dataset.options) if dataset is not None else None
    check_streamed(s, loading, problems)
    train = sweep_train(s, problems)
    seeds = sweep_seeds(s.seeds, problems)
    settings = built(
        lambda: PairSettings(
            aligns=s.align,
            corrections=s.correction,
            alphas=s.alphas,
            train_samples=s.eval.train_samples,
            stat_samples=s.eval.stat_samples,
            stat_augment=s.eval.stat_augment,
            test_samples=s.eval.test_samples,
            test_flip=s.eval.test_flip,
            stat_batch_size=s.eval.stat_batch_size,
            eval_batch_size=s.eval.eval_batch_size,
            precision=s.eval.precision,
            fold_batchnorm=s.eval.fold_batchnorm,
            weight_matching_start=s.weight.start,
            weight_matching_restarts=s.weight.restarts,
            weight_matching_max_iter=s.weight.max_iter,
            **_learned("ste", s.ste, problems),
            **_learned("sinkhorn", s.sinkhorn, problems),
        ),
        _pair_key,
        problems,
    )
    check_sweep_settings(s, problems)
    check_workers(s, problems)
    if not s.models:
        problems.append("models: must list at least one model grid")
    stored = checking == "skip"
    model_configs = _model_grid(s.models, problems, allowed, refuse=not stored)
    imports = {i: g.checkpoints for i, g in enumerate(s.models) if g.checkpoints is not None}
    training_only_keys(s, raw, imports, problems)
    trains = grid_trains(s, train, imports, problems)
    if problems or dataset is None or train is None or seeds is None or settings is None:
        return None
    check_specs([(i, mc) for i, mc in model_configs if mc.importable], dataset, settings, problems)
    recipes = {i: trains.get(i, train) for i in range(len(s.models)) if i not in imports}
    check_stat_augment(s, recipes, dataset, imports, problems)
    tune = tune_settings(s, recipes, problems, split_sizes(dataset.name, dataset.options) if s.tune else None)
    if problems:
        return None

    pair_list = design_pairs(seeds, s.pairs, problems) if len(imports) < len(s.models) else []  # seeds trained
    branches = branch_points(s, train, seeds, problems)
    if problems:
        return None
    plans = []
    seen: dict[str, int] = {}
    overrides_json = {i: json.dumps(o, sort_keys=True) for i, o in train_overrides(s).items()}
    if recorded is None and imports and checking != "skip":
        recorded = _recorded(storage.join(storage_override or s.storage, s.name))
    for i, mc in model_configs:
        if i in imports:  # networks trained elsewhere: one per file, numbered by its content
            key = imported_model_key(mc, dataset.as_dict())
            if key in seen:
                problems.append(f"models[{i}]: repeats a model config of models[{seen[key]}] ({key})")
                continue
            seen[key] = i
            known = known_files(recorded or {})
            networks = (recorded or {}).get(key, ()) if stored else None
            if networks is None:
                networks = imported_networks(i, imports[i], mc, dataset, problems, checking=checking, known=known)
            numbers = [n.seed for n in networks]
            pairs = design_pairs(numbers, s.pairs, problems, f"models[{i}] (its networks' numbers)")
            plans.append(ModelPlan(key, mc, tuple(numbers), tuple(pairs), imported=networks, grid=i))
            continue
        recipe = trains.get(i, train)  # the sweep's train, or the grid's merged over it
        key = model_key(mc, recipe, dataset.as_dict())
        if key in seen:
            problems.append(f"models[{i}]: repeats a model config of models[{seen[key]}] ({key})")
            continue
        seen[key] = i
        override = overrides_json.get(i)
        if branches is None:
            plans.append(
                ModelPlan(key, mc, tuple(seeds), tuple(pair_list), train=recipe, train_override=override, grid=i)
            )
        prunable = prunable_weights(mc, dataset) if s.imp is not None and mc.importable else None
        keys: dict[Branch, str] = {}
        for branch in branches or ():
            child_key = keys[branch] = model_key(mc, recipe, dataset.as_dict(), branch)
            extra: dict[str, Any] = {}
            if branch.imp_round is not None and s.imp is not None:  # a round of IMP
                rate = s.imp.rate
                extra["sparsity"] = None if prunable is None else imp_sparsity(prunable, branch.imp_round, rate)
                if branch.imp_round > 0:
                    before = imp_branch(branch.trunk_seed, branch.epoch, branch.imp_round - 1, rate, seeds[0])
                    extra["prune_from"] = keys[before]
            plans.append(
                ModelPlan(
                    child_key,
                    mc,
                    tuple(seeds),
                    tuple(pair_list),
                    branch,
                    key,
                    train=recipe,
                    train_override=override,
                    grid=i,
                    **extra,
                )
            )
    batchnorm = {plan.model_key: plan.model.has_batchnorm for plan in plans if plan.model.importable}
    warn_skipped_corrections(plans, batchnorm, settings, source)
    return SweepConfig(
        name=s.name,
        storage=storage.normalize(storage_override or s.storage),
        source=source,
        dataset=dataset,
        train=train,
        checkpoint_every=s.train.checkpoint_every,
        seeds_per_trial=None if s.train.seeds_per_trial == "auto" else s.train.seeds_per_trial,
        compile=s.train.compile,
        workers_per_trial=s.train.workers_per_trial,
        data_path=loading,
        models=tuple(plans),
        pair_settings=settings,
        alphas_per_pass=None if s.eval.alphas_per_pass == "auto" else s.eval.alphas_per_pass,
        resources=s.resources,
        max_pairs_in_flight=s.max_pairs_in_flight,
        max_trials_in_flight=s.max_trials_in_flight,
        flush_pairs=s.flush.pairs,
        flush_seconds=s.flush.seconds,
        pair_retries=s.pair_retries,
        train_retries=s.train_retries,
        raw=raw,
        allow_import=allowed,
        batchnorm=batchnorm,
        mlflow_uri=s.tracking.mlflow,
        tune=tune,
        pair_design=design_label(s.pairs),
    )


def _recorded(root: str) -> dict[str, tuple[ImportedNetwork, ...]]:
    """The networks a sweep's last run recorded (their hashes are reused for files that did not
    change); nothing when its storage cannot be read."""
    try:
        return recorded_networks(root)
    except (OSError, ValueError):
        return {}


class DatasetDownload(UserWarning):
    """The sweep's dataset is not on this machine, and its loader downloads it."""


def _dataset(value: str | DatasetSection, problems: list[str], check_files: bool, source: str) -> DatasetSpec | None:
    name, options = (value, {}) if isinstance(value, str) else (value.name, dict(value.model_extra or {}))
    prefix = "dataset" if isinstance(value, str) else "dataset.name"

    def key_of(setting: str) -> str:
        return prefix if setting == "name" else f"dataset.{setting}"

    def check() -> bool:
        check_dataset(name, options)
        return True

    ok = built(check, key_of, problems)
    if ok and check_files:
        missing, downloads = dataset_files(name, options)
        if missing is not None and downloads:
            warnings.warn(
                f"{source}: {missing}; a run downloads it "
                "(here, before a local cluster starts; on the workers of a joined one)",
                DatasetDownload,
                stacklevel=4,
            )
        elif missing is not None:
            problems.append(f"{prefix}: {missing} (on this machine)")
    return DatasetSpec(name, options) if ok else None


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _grid_key(i: int) -> Callable[[str], str]:
    """The YAML key of a setting of the grid ``models[i]``."""
    return lambda setting: f"models[{i}].{setting}"


def _model_grid(
    grids: list[ModelGrid], problems: list[str], allowed: tuple[str, ...], *, refuse: bool
) -> list[tuple[int, ModelConfig]]:
    """Every model config of the grids. A network whose module is not allowed is a problem of its
    ``arch`` (nothing is imported) when ``refuse``; otherwise (a stored config) it is kept as data."""
    out = []
    for i, g in enumerate(grids):
        widths, depths, norms = _as_list(g.width), _as_list(g.depth), _as_list(g.norm)  # None: not set
        inits = _as_list(g.init)
        if not (widths and depths and norms and inits):
            problems.append(f"models[{i}]: width, depth, norm and init must not be empty lists")
            continue
        found = len(problems)
        if g.checkpoints is not None and len(widths) * len(depths) * len(norms) > 1:
            problems.append(
                f"models[{i}]: with checkpoints, width, depth and norm take one value each (the files are the "
                "networks of one model config; give each model config its own entry)"
            )
            continue
        if g.checkpoints is not None and g.init is not None:
            problems.append(f"models[{i}].init: the networks in checkpoints are trained already; leave init out")
            continue
        for w, d, n, init in itertools.product(widths, depths, norms, inits):
            build = functools.partial(ModelConfig, g.arch, w, d, n, g.kwargs, init, allowed)
            config = built(build, _grid_key(i), problems)
            if config is not None and refuse and not config.importable:
                problems.append(f"models[{i}].arch: {refusal(g.arch)}")
            elif config is not None:
                out.append((i, config))
        if len(problems) > found:  # one bad value spoils its whole grid; report each problem once
            problems[found:] = list(dict.fromkeys(problems[found:]))
            out = [(j, c) for j, c in out if j != i]
    return out
