"""The columns that every row of a model or a pair carries to say which network it is about."""

from __future__ import annotations

from typing import Any


def model_columns(model: dict[str, Any], dataset: dict[str, Any]) -> dict[str, Any]:
    """``arch, dataset, width, depth, norm`` of a row, from a job's model config and dataset (as dicts)."""
    return {
        "arch": model["arch"],
        "dataset": dataset["name"],
        "width": float(model["width"]),
        "depth": model["depth"],
        "norm": model["norm"],
    }
