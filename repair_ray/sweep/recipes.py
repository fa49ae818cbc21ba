"""The recipes of a sweep: its ``train`` section as the core's :class:`TrainConfig`, and each grid's
``models[i].train`` merged over it (the recipe that grid's model configs train with and their keys hash).

Like :mod:`.config`, which calls it, this module imports no Ray; its problems name the YAML key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import SettingError
from ..training import TrainConfig
from ..tuning.space import TuneSettings
from .schema import SweepSection


def built(make: Callable[[], Any], key_of: Callable[[str], str], problems: list[str]) -> Any:
    """``make()``, or None with its :class:`SettingError` problems recorded under their YAML keys."""
    try:
        return make()
    except SettingError as error:
        problems.extend(f"{key_of(setting)}: {message}" for setting, message in error.problems)
        return None


def sweep_train(s: SweepSection, problems: list[str]) -> TrainConfig | None:
    fields = s.train.model_dump()
    fields.pop("compile")  # the sweep's: how trials run, not what they train
    for key in ("checkpoint_every", "seeds_per_trial", "workers_per_trial"):  # the sweep's, not the core's
        value = fields.pop(key)
        if value != "auto" and value < 1:
            expected = "a positive integer" + (" or auto" if key == "seeds_per_trial" else "")
            problems.append(f"train.{key}: must be {expected}, got {value}")
    if isinstance(fields["epochs"], int) and fields["epochs"] < 1:  # a sweep trains; the core allows 0 epochs
        problems.append(f"train.epochs: must be a positive integer, got {fields['epochs']}")
        return None
    return built(lambda: TrainConfig(**fields), lambda setting: f"train.{setting}", problems)


def train_overrides(s: SweepSection) -> dict[int, dict[str, Any]]:
    """``models[i].train`` of every grid that has one: the keys it sets (an explicit null included,
    e.g. ``augment: null``, the automatic augmentation), as written."""
    return {i: g.train.model_dump(exclude_unset=True) for i, g in enumerate(s.models) if g.train is not None}


def merged_train(i: int, base: TrainConfig, override: dict[str, Any], problems: list[str]) -> TrainConfig | None:
    """The sweep's ``train`` with ``models[i].train``'s keys replaced: the recipe of that grid's model configs."""
    epochs = override.get("epochs")
    if isinstance(epochs, int) and epochs < 1:
        problems.append(f"models[{i}].train.epochs: must be a positive integer, got {epochs}")
        return None

    def key_of(setting: str) -> str:  # a rule two keys break together is named where the grid's key is
        name = setting.partition("[")[0]
        return f"models[{i}].train.{setting}" if name in override else f"train.{setting} (with models[{i}].train)"

    return built(lambda: dataclasses.replace(base, **override), key_of, problems)


def grid_trains(
    s: SweepSection, train: TrainConfig | None, imports: Mapping[int, Any], problems: list[str]
) -> dict[int, TrainConfig]:
    """The recipe of every grid with a ``models[i].train``: the sweep's ``train`` with its keys replaced."""
    out: dict[int, TrainConfig] = {}
    for i, override in train_overrides(s).items():
        if i in imports:
            problems.append(f"models[{i}].train: the networks in checkpoints are trained already; leave train out")
        elif (s.branch is not None or s.imp is not None) and "epochs" in override:
            design = "branch" if s.branch is not None else "imp"
            problems.append(
                f"models[{i}].train.epochs: {design}'s epochs count in the sweep's train.epochs, which every model "
                "config of a stability or IMP study shares; set epochs there"
            )
        elif train is not None and (merged := merged_train(i, train, override, problems)) is not None:
            out[i] = merged
    return out


def tune_settings(
    s: SweepSection, recipes: Mapping[int, TrainConfig], problems: list[str], sizes: tuple[int, int] | None
) -> TuneSettings | None:
    """The ``tune`` section, its space checked against the recipe of every grid the sweep trains
    (``recipes``: grid index -> recipe) and its validation split against the dataset's (train, test)
    ``sizes`` (None: unknown here); None without one (or with problems, recorded under ``tune.``)."""
    if s.tune is None:
        return None
    if not recipes:
        problems.append("tune: every model config imports its networks (models[i].checkpoints): no recipe to tune")
        return None
    data = {k: v for k, v in s.tune.model_dump().items() if v is not None}
    named = {f"models[{i}]": recipe for i, recipe in recipes.items()}
    settings = built(lambda: TuneSettings.parse(data, named), lambda setting: f"tune.{setting}", problems)
    if settings is not None and sizes is not None and settings.val_samples >= sizes[0]:
        problems.append(
            f"tune.val_samples: the validation split is carved from the {sizes[0]:,} training samples and must "
            f"leave some to train on, got {settings.val_samples:,}"
        )
    return settings
