"""The columns that every row of a model or a pair carries to say which network it is about."""

from __future__ import annotations

from typing import Any


def model_columns(
    model: dict[str, Any], dataset: dict[str, Any], lineage: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``arch, dataset, width, depth, norm, model_kwargs, trunk_seed, branch_epoch`` of a row, from a
    job's model config, dataset and lineage (:meth:`ModelPlan.lineage`, as dicts).

    Knobs a network outside the zoo is not given are null; ``model_kwargs`` is its keyword
    arguments as canonical JSON (null when there are none); ``trunk_seed`` and ``branch_epoch``
    are null for independent seeds.
    """
    lineage = lineage or {}
    return {
        "trunk_seed": lineage.get("trunk_seed"),
        "branch_epoch": lineage.get("branch_epoch"),
        "arch": model["arch"],
        "dataset": dataset["name"],
        "width": None if model["width"] is None else float(model["width"]),
        "depth": model["depth"],
        "norm": model["norm"],
        "model_kwargs": model.get("kwargs") or None,
    }
