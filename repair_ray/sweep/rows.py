"""The rows of the tables the sweep writes: the columns that every row of a model or a pair
carries to say which network it is about, and the ``models`` rows of a trial."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from ..io.tables import write_rows
from ..names import LINEAGE
from .layout import checkpoint_path, models_row_uri
from .messages import Trial

METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")  # a trained network's; NaN in a failed row


def _widths(width: Any) -> dict[str, Any]:
    """``width`` (one width, or null) and ``layer_widths`` (per-layer widths as JSON, or null)."""
    if isinstance(width, (list, tuple)):
        return {"width": None, "layer_widths": json.dumps([int(w) for w in width])}
    return {"width": None if width is None else float(width), "layer_widths": None}


def model_columns(
    model: dict[str, Any],
    dataset: dict[str, Any],
    lineage: dict[str, Any] | None = None,
    *,
    train_override: str | None = None,
) -> dict[str, Any]:
    """``arch, dataset, width, layer_widths, depth, norm, init, model_kwargs`` and the lineage columns of a
    row, from a job's model config, dataset and lineage (:meth:`ModelPlan.lineage`, as dicts).

    An mlp with one width per layer has a null ``width`` and its widths in ``layer_widths`` (JSON,
    ``"[300, 100]"``; null otherwise). Knobs a network outside the zoo is not given are null;
    ``model_kwargs`` is its keyword arguments as canonical JSON (null when there are none); ``init``
    is a zoo network's initialisation (null outside the zoo and for imported networks);
    ``trunk_seed`` and ``branch_epoch`` are null for independent seeds; ``imp_round`` and ``sparsity``
    (the fraction of prunable weights the round's mask removes) are null outside IMP;
    ``train_override`` is the grid's ``models[i].train`` as written (canonical JSON; null without one:
    the whole recipe of a trained network is its ``models`` row's ``config_json``).
    """
    lineage = lineage or {}
    return {
        **{name: lineage.get(name) for name in LINEAGE},
        "arch": model["arch"],
        "dataset": dataset["name"],
        **_widths(model["width"]),
        "depth": model["depth"],
        "norm": model["norm"],
        "init": model.get("init"),
        "model_kwargs": model.get("kwargs") or None,
        "train_override": train_override,
    }


def models_row(trial: Trial, seed: int, **values: Any) -> dict[str, Any]:
    """The ``models`` table row of ``seed`` of ``trial`` (metrics and status in ``values``).

    An imported network's row names its file (``checkpoint_uri``, the file where it lies) and the
    SHA-256 of its bytes (``checkpoint_sha256``); it has no init or data seed, and ``imported`` is true.
    """
    if trial.source is not None:
        source = trial.source
        row: dict[str, Any] = {
            "sweep": trial.sweep,
            "model_key": trial.model_key,
            **model_columns(trial.model, trial.dataset, trial.lineage, train_override=trial.train_override),
            "seed": seed,
            "checkpoint_uri": source.uri,
            "checkpoint_sha256": source.sha256,
            "checkpoint_bytes": source.bytes,
            "imported": True,
            "config_json": json.dumps({"model": trial.model, "dataset": trial.dataset}, sort_keys=True),
        }
        return {**row, **values}
    trunk = trial.lineage.get("trunk_seed")
    row = {
        "sweep": trial.sweep,
        "model_key": trial.model_key,
        **model_columns(trial.model, trial.dataset, trial.lineage, train_override=trial.train_override),
        "seed": seed,
        "init_seed": seed if trunk is None else trunk,
        "data_seed": seed,
        "checkpoint_uri": checkpoint_path(trial.model_key, seed),
        "config_json": json.dumps(
            {"model": trial.model, "train": trial.train, "dataset": trial.dataset}, sort_keys=True
        ),
        "seeds_in_trial": len(trial.seeds),
        "trained_together": trial.together,
        "compiled": trial.compile,
        "imported": False,
    }
    row.update(values)
    return row


def write_models_row(trial: Trial, seed: int, **values: Any) -> None:
    """Write one ``models`` row of ``seed`` of ``trial`` as a file of its own (the newest row of a trial wins)."""
    write_rows(models_row_uri(trial.root, trial.model_key, seed), "models", [models_row(trial, seed, **values)])


def write_failed_rows(trial: Trial, error: str, seeds: Iterable[int] | None = None, trace: str | None = None) -> None:
    """Write a ``failed`` row with the reason (and its traceback) for each of ``seeds`` (default: the trial's)."""
    for seed in trial.seeds if seeds is None else seeds:
        write_models_row(
            trial, seed, status="failed", error=error, error_trace=trace, **dict.fromkeys(METRICS, math.nan)
        )
