"""What the report's tuning page shows, from the ``recipes`` table of ``repair-ray tune``: one
experiment per model config and tune key, its trials ranked best first, the axis each tuned key
needs, and each trial's learning curve.

Plain pandas: no matplotlib. The figures are :func:`.tuning_plots.plot_tuning_values` and
:func:`.tuning_plots.plot_tuning_curves`; the page is :mod:`.tuning_page`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .cells import format_value
from .plot_data import describe_config

OUTCOMES = ("complete", "stopped early", "diverged", "error")
"""What became of a trial, in the order the page ranks them: trained every epoch ok; stopped by the
scheduler (ASHA) at a rung; a NaN or infinite loss; an exception."""
LOG_SPAN = 10.0
"""A numeric key whose positive values span more than this factor (a decade) gets a log axis."""


@dataclass(frozen=True)
class TunedKey:
    """One recipe key of the search space and the x-axis its sampled values need."""

    name: str
    scale: str  # "log", "linear" or "categorical" (strings, booleans, nulls: one tick per value)
    categories: tuple[str, ...] = ()  # a categorical key's values as text, in order


@dataclass
class Experiment:
    """The trials of one model config's tune (one model key and tune key).

    ``trials`` has a row per trial, best first (see :func:`rank_trials`): its ``recipes`` columns,
    ``outcome`` (:data:`OUTCOMES`), ``sampled`` (a dict) and ``history`` (a list of per-epoch dicts).
    """

    model_key: str
    tune_key: str
    description: str
    grid: int | None
    metric: str
    mode: str
    scheduler: str
    keys: list[TunedKey]
    trials: pd.DataFrame
    older_tunes: int  # tunes of this model config with other settings, not shown

    @property
    def name(self) -> str:
        """A file-name-safe name: ``<model_key>-<tune_key>``."""
        return f"{self.model_key}-{self.tune_key}"

    @property
    def best(self) -> pd.Series | None:
        """The trial ``repair-ray tune`` chose (the best complete ok trial), or None."""
        chosen = self.trials[self.trials["best"]]
        return None if chosen.empty else chosen.iloc[0]

    def count(self, outcome: str) -> int:
        return int((self.trials["outcome"] == outcome).sum())


def outcome_of(status: Any, stopped_early: Any) -> str:
    """A trial's outcome (:data:`OUTCOMES`) from its ``status`` and ``stopped_early``."""
    if status == "error":
        return "error"
    if status == "diverged":
        return "diverged"
    return "stopped early" if bool(stopped_early) else "complete"


def key_scale(name: str, values: Sequence[Any]) -> TunedKey:
    """The axis of a tuned key: categorical when a value is text, a boolean or null; log when its
    values are positive and span more than :data:`LOG_SPAN`; else linear."""
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        return TunedKey(name, "categorical", tuple(sorted({category_of(v) for v in values})))
    numbers = [float(v) for v in values if math.isfinite(v)]
    if numbers and min(numbers) > 0 and max(numbers) / min(numbers) > LOG_SPAN:
        return TunedKey(name, "log")
    return TunedKey(name, "linear")


def category_of(value: Any) -> str:
    """A categorical key's value as its tick's text."""
    return "null" if value is None else format_value(value)


def rank_trials(trials: pd.DataFrame, mode: str) -> pd.DataFrame:
    """``trials`` best first: the trials that trained every epoch ok, by their metric (``mode``: max
    or min); then those stopped early, by the metric at their last epoch; then the diverged, then
    those that failed. The chosen trial (``best``) is the first row when there is one."""
    if trials.empty:
        return trials
    sign = -1.0 if mode == "max" else 1.0
    order = trials.assign(
        _rank=trials["outcome"].map({o: i for i, o in enumerate(OUTCOMES)}),
        _value=sign * trials["value"].astype(float),
        _best=~trials["best"].astype(bool),
    )
    order = order.sort_values(["_best", "_rank", "_value", "trial_id"], na_position="last", kind="stable")
    return order.drop(columns=["_rank", "_value", "_best"]).reset_index(drop=True)


def _parse(text: Any, default: Any) -> Any:
    if not isinstance(text, str) or not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def tuning_experiments(recipes: pd.DataFrame, *, every: bool = False) -> list[Experiment]:
    """The experiments in ``recipes``: per model config its newest tune (the tune key whose trials
    finished last), or with ``every`` each tune key of it; ordered as the config's ``models`` entries,
    then width and depth, the newest tune first. Empty when the table has no rows."""
    if recipes.empty:
        return []
    frame = recipes.assign(
        outcome=[outcome_of(s, e) for s, e in zip(recipes["status"], recipes["stopped_early"], strict=True)],
        sampled=[_parse(text, {}) for text in recipes["sampled_json"]],
        history=[_parse(text, []) for text in recipes["history_json"]],
        best=recipes["best"].fillna(False).astype(bool),
    )
    ends = frame.groupby(["model_key", "tune_key"], dropna=False)["finished_at"].max().reset_index()
    ends = ends.sort_values(["model_key", "finished_at", "tune_key"], ascending=[True, False, True], na_position="last")
    shown = ends if every else ends.drop_duplicates("model_key")
    tunes = ends["model_key"].value_counts()
    ranked = []
    for i, (model_key, tune_key) in enumerate(shown[["model_key", "tune_key"]].itertuples(index=False)):
        trials = frame[(frame["model_key"] == model_key) & (frame["tune_key"] == tune_key)]
        first = trials.iloc[0]
        mode = str(first["mode"]) if isinstance(first["mode"], str) else "max"
        names = sorted({k for sampled in trials["sampled"] for k in sampled})
        experiment = Experiment(
            model_key=str(model_key),
            tune_key=str(tune_key),
            description=describe_config(trials, str(model_key)),
            grid=None if pd.isna(first["grid"]) else int(first["grid"]),
            metric=str(first["metric"]),
            mode=mode,
            scheduler=str(first["scheduler"] or ""),
            keys=[key_scale(k, [s.get(k) for s in trials["sampled"]]) for k in names],
            trials=rank_trials(trials.reset_index(drop=True), mode),
            older_tunes=0 if every else int(tunes[model_key]) - 1,
        )
        # the config's models entries in order, then width and depth; a config's newest tune first (i)
        ranked.append(((_number(first["grid"]), _number(first["width"]), _number(first["depth"]), i), experiment))
    return [experiment for _, experiment in sorted(ranked, key=lambda pair: pair[0])]


def _number(value: Any) -> float:
    return math.inf if value is None or pd.isna(value) else float(value)


def sampled_text(sampled: dict[str, Any]) -> str:
    """A trial's sampled values in one line: ``lr=0.159, optimizer=adam``."""
    return ", ".join(f"{k}={category_of(v)}" for k, v in sorted(sampled.items()))


def trials_table(experiment: Experiment) -> pd.DataFrame:
    """The trials as text for the page, best first: the trial, each tuned key, the metric after its
    last epoch, epochs trained (``1 of 4``), whether the scheduler stopped it, its status, the chosen
    one marked ``best``, and a failure's first line."""
    rows = []
    for r in experiment.trials.to_dict("records"):
        value = r["value"]
        row: dict[str, Any] = {"trial": r["trial_id"]}
        row.update({key.name: category_of(r["sampled"].get(key.name)) for key in experiment.keys})
        row[experiment.metric] = "" if value is None or not np.isfinite(value) else f"{value:.4f}"
        row["epochs"] = f"{int(r['epochs'])} of {int(r['max_epochs'])}" if pd.notna(r["max_epochs"]) else r["epochs"]
        row["stopped early"] = "yes" if r["outcome"] == "stopped early" else ""
        row["status"] = r["status"]
        row["best"] = "best" if r["best"] else ""
        error = r.get("error")
        row["error"] = error.splitlines()[0][:200] if isinstance(error, str) and error else ""
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.drop(columns=["error"]) if not table.empty and not table["error"].any() else table


@dataclass(frozen=True)
class Curve:
    """One trial's metric per epoch (finite values only), and how it ended."""

    trial_id: str
    epochs: np.ndarray
    values: np.ndarray
    outcome: str
    best: bool


def learning_curves(experiment: Experiment) -> list[Curve]:
    """Each trial's ``history`` of the experiment's metric, in rank order (the best first)."""
    curves = []
    for r in experiment.trials.to_dict("records"):
        points = [
            (float(h["epoch"]), float(h[experiment.metric]))
            for h in r["history"]
            if isinstance(h, dict) and "epoch" in h and isinstance(h.get(experiment.metric), (int, float))
        ]
        points = [(e, v) for e, v in points if math.isfinite(v)]
        if points:
            epochs, values = (np.array(column) for column in zip(*points, strict=True))
            curves.append(Curve(str(r["trial_id"]), epochs, values, str(r["outcome"]), bool(r["best"])))
    return curves
