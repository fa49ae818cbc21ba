"""The vocabulary of the result tables as the report reads them: the columns that describe a
model, a pair and a method, and the filters every statistic applies (``ok`` rows, one analysis
key, the natural order of methods, the finished rows of :func:`ok_tables`).

Plain pandas: no matplotlib, no scipy, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from ..names import ALIGNS, CORRECTIONS, LINEAGE

OPTIONAL_KEYS = ("init", "layer_widths", *LINEAGE)
"""Description columns that most sweeps leave null: shown only where they have values."""
GROUP_KEYS = (
    "arch",
    "dataset",
    "norm",
    "init",
    "width",
    "layer_widths",
    "depth",
    *LINEAGE,
    "align",
    "correction",
    "model_key",
    "analysis_key",
)
"""The summary's groups: one model description x method, never pooling two model or analysis keys
(networks trained, or pairs analysed, with other settings are other facts)."""
MODEL_KEYS = ("arch", "dataset", "norm", "width", "depth")
PAIR_ID = ("model_key", "analysis_key", "seed_a", "seed_b")
REDUCTION_COLUMNS = ("barrier_train_loss", "barrier_train_error", "barrier_test_loss", "barrier_test_error")
"""The max-over-alpha barriers (never negative) whose relative reduction the summary reports."""
PLOT_METRICS = ("barrier_test_loss", "barrier_test_error")
ALIGN_ORDER = ALIGNS
CORRECTION_ORDER = CORRECTIONS
DESCRIPTION_KEYS = tuple(k for k in GROUP_KEYS if k not in ("align", "correction"))
"""A summary's groups without the method: the pairs two methods are compared on (never two keys)."""
LOWER_IS_BETTER = ("barrier", "loss", "error", "seconds")
"""Words of a column name that make lower values better (barriers, losses, errors, times)."""
HIGHER_IS_BETTER = ("acc",)
"""Words of a column name that make higher values better (accuracies)."""
MIN_PAIRS = 5
"""Cells with fewer ok pairs than this get a warning in the report: their intervals say little."""


def barrier_columns(pairs: pd.DataFrame) -> list[str]:
    """The barrier columns of a ``pairs`` table: ``barrier_*``, ``max_barrier_*`` and ``midpoint_barrier_*``."""
    return [c for c in pairs.columns if c.startswith(("barrier_", "max_barrier_", "midpoint_barrier_"))]


def better_direction(column: str) -> str | None:
    """``"lower"`` or ``"higher"``: which values of ``column`` are better, from the words of its name
    (:data:`LOWER_IS_BETTER` first: ``midpoint_barrier_test_error``, ``barrier_test_loss``,
    ``align_seconds`` are lower-is-better; ``midpoint_test_acc``, ``endpoint_test_acc_a`` higher);
    None for a column whose name says neither."""
    words = set(column.split("_"))
    if words & set(LOWER_IS_BETTER):
        return "lower"
    if words & set(HIGHER_IS_BETTER):
        return "higher"
    return None


def pairs_of(data: pd.DataFrame | Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    frame = with_analysis_key(data["pairs"] if isinstance(data, Mapping) else data)
    missing = {
        k: pd.Series(pd.NA, index=frame.index, dtype="string" if k in ("init", "layer_widths") else "Int64")
        for k in OPTIONAL_KEYS
        if k not in frame.columns
    }
    return frame.assign(**missing) if missing else frame  # frames of older tables or built by hand


def with_analysis_key(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with an ``analysis_key`` column without nulls: rows of tables written before analysis
    keys existed, or a frame built by hand, are one analysis with the empty key (groups and joins
    treat a null as no value, so it would drop them)."""
    if "analysis_key" not in frame.columns:
        return frame.assign(analysis_key="")
    if frame["analysis_key"].isna().any():
        return frame.assign(analysis_key=frame["analysis_key"].fillna(""))
    return frame


def is_ok(frame: pd.DataFrame) -> pd.Series:
    return (frame["status"] == "ok").fillna(False).astype(bool)


def _order_key(column: pd.Series) -> pd.Series:
    """Sort key that puts known align / correction names in their natural order, others after."""
    order = {"align": ALIGN_ORDER, "correction": CORRECTION_ORDER}.get(column.name)
    if order is None:
        return column
    rank = {name: i for i, name in enumerate(order)}
    return column.map(lambda v: (rank.get(v, len(order)), str(v)))


def sort_rows(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    keys = [k for k in keys if k in frame.columns]
    if frame.empty or not keys:
        return frame.reset_index(drop=True)
    return frame.sort_values(keys, key=_order_key, na_position="last").reset_index(drop=True)


def dtype_of(frame: pd.DataFrame, column: str):
    return frame[column].dtype if column in frame.columns else float


def ok_tables(tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """``tables`` restricted to what is finished and ``ok``.

    ``models`` and ``pairs`` keep their ``ok`` rows; ``curves`` and ``layers`` keep the rows of the
    (pair, align, correction) whose ``pairs`` row is ``ok`` (rows of a pair still in flight, whose
    ``pairs`` file is not written yet, are left out).
    """
    out = {name: with_analysis_key(frame) if name != "models" else frame for name, frame in tables.items()}
    pairs = out.get("pairs")
    if pairs is None:
        return out
    ok = pairs[is_ok(pairs)]
    out["pairs"] = ok.reset_index(drop=True)
    if "models" in tables and not tables["models"].empty:
        out["models"] = tables["models"][is_ok(tables["models"])].reset_index(drop=True)
    ids = [*PAIR_ID, "align", "correction"]
    done = ok[ids].drop_duplicates()
    for name in ("curves", "layers"):
        frame = out.get(name)
        if frame is None:
            continue
        if frame.empty or done.empty:
            out[name] = frame.iloc[0:0]
        else:
            out[name] = frame.merge(done, on=ids, how="inner")
    return out


def default_model_key(pairs: pd.DataFrame, candidates: Sequence[str] | None = None) -> str | None:
    """The deepest model config of the ``ok`` pairs (the widest among equally deep ones), or None.

    ``candidates`` restricts the choice (e.g. to the model keys that have curves).
    """
    ok = pairs[is_ok(pairs)] if not pairs.empty else pairs
    if candidates is not None:
        ok = ok[ok["model_key"].isin(list(candidates))]
    if ok.empty:
        return None
    configs = ok[["model_key", "depth", "width"]].drop_duplicates("model_key")
    configs = configs.sort_values(["depth", "width", "model_key"], ascending=[False, False, True], na_position="last")
    return str(configs["model_key"].iloc[0])
