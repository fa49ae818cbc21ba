"""The columns that every row of a model or a pair carries to say which network it is about."""

from __future__ import annotations

import json
from typing import Any

from ..names import LINEAGE


def _widths(width: Any) -> dict[str, Any]:
    """``width`` (one width, or null) and ``layer_widths`` (per-layer widths as JSON, or null)."""
    if isinstance(width, (list, tuple)):
        return {"width": None, "layer_widths": json.dumps([int(w) for w in width])}
    return {"width": None if width is None else float(width), "layer_widths": None}


def model_columns(
    model: dict[str, Any], dataset: dict[str, Any], lineage: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``arch, dataset, width, layer_widths, depth, norm, model_kwargs`` and the lineage columns of a
    row, from a job's model config, dataset and lineage (:meth:`ModelPlan.lineage`, as dicts).

    An mlp with one width per layer has a null ``width`` and its widths in ``layer_widths`` (JSON,
    ``"[300, 100]"``; null otherwise). Knobs a network outside the zoo is not given are null;
    ``model_kwargs`` is its keyword arguments as canonical JSON (null when there are none);
    ``trunk_seed`` and ``branch_epoch`` are null for independent seeds; ``imp_round`` and ``sparsity``
    (the fraction of prunable weights the round's mask removes) are null outside IMP.
    """
    lineage = lineage or {}
    return {
        **{name: lineage.get(name) for name in LINEAGE},
        "arch": model["arch"],
        "dataset": dataset["name"],
        **_widths(model["width"]),
        "depth": model["depth"],
        "norm": model["norm"],
        "model_kwargs": model.get("kwargs") or None,
    }
