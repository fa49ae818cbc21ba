"""Statistics of a sweep's result tables: summaries per model config and method (barriers, their
intervals, relative reductions, endpoint accuracies), of the trained networks, and of the failed pairs.

Plain pandas, numpy and scipy on the DataFrames of :func:`repair_ray.load_tables`: no
matplotlib, no torch, no Ray, so a script that only needs numbers (``analysis/``) imports this
module alone. Every number of the report is importable from here, although defined beside it:
the tables' columns and filters (:mod:`.frames`), intervals (:mod:`.intervals`), paired
differences (:mod:`.differences`) and text cells (:mod:`.cells`). The rules shared with the plots
and the page are in :mod:`repair_ray.report`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .cells import compact_differences, compact_summary, format_value
from .differences import FDR_LEVEL, adjust_p_values, baseline_differences, paired_differences
from .frames import (
    ALIGN_ORDER,
    CORRECTION_ORDER,
    DESCRIPTION_KEYS,
    GROUP_KEYS,
    LINEAGE,
    MIN_PAIRS,
    MODEL_KEYS,
    OPTIONAL_KEYS,
    PAIR_ID,
    PLOT_METRICS,
    REDUCTION_COLUMNS,
    barrier_columns,
    better_direction,
    default_model_key,
    dtype_of,
    is_ok,
    ok_tables,
    pairs_of,
    sort_rows,
)
from .intervals import INTERVAL_METHODS, Interval, aggregate, ci95, clustered_aggregate, interval

__all__ = [  # the summaries defined here, and the report's numbers defined beside them
    "ALIGN_ORDER",
    "CORRECTION_ORDER",
    "DESCRIPTION_KEYS",
    "FDR_LEVEL",
    "GROUP_KEYS",
    "INTERVAL_METHODS",
    "LINEAGE",
    "MIN_PAIRS",
    "MODEL_KEYS",
    "OPTIONAL_KEYS",
    "PAIR_ID",
    "PLOT_METRICS",
    "REDUCTION_COLUMNS",
    "Interval",
    "adjust_p_values",
    "aggregate",
    "barrier_columns",
    "baseline_differences",
    "better_direction",
    "ci95",
    "clustered_aggregate",
    "compact_differences",
    "compact_summary",
    "default_model_key",
    "failed_pairs",
    "format_value",
    "interval",
    "is_ok",
    "ok_tables",
    "paired_differences",
    "relative_reduction",
    "small_cells",
    "summarise",
    "summarise_models",
    "summarise_over_trunks",
]


def relative_reduction(
    data: pd.DataFrame | Mapping[str, pd.DataFrame], columns: Sequence[str] = REDUCTION_COLUMNS
) -> pd.DataFrame:
    """Relative barrier reduction of every correction against the same alignment without correction.

    For each pair ``(model_key, seed_a, seed_b)``, alignment and correction other than ``none``:
    ``(B[align, none] - B[align, correction]) / B[align, none]`` for every column of ``columns``
    (1 = the correction removes the barrier, 0 = no change, negative = it makes it worse).
    Only ``ok`` rows take part, and both rows of a pair must be ``ok``.

    Where ``B[align, none]`` is 0 (or negative, or null) the reduction is undefined and is NaN,
    never ``inf``: an aligned pair without a barrier has nothing to reduce. Averages over pairs
    (see :func:`summarise`) leave such NaNs out.

    Args:
        data: a ``pairs`` DataFrame, or the dict of :func:`repair_ray.load_tables`.
        columns: barrier columns to compare (max-over-alpha barriers, which are never negative).

    Returns:
        One row per (pair, align, correction != none): the description columns, the pair id,
        ``align``, ``correction``, and ``rel_reduction_<column>`` for each column.
    """
    pairs = pairs_of(data)
    columns = [c for c in columns if c in pairs.columns]
    reductions = [f"rel_reduction_{c}" for c in columns]
    out_columns = [*MODEL_KEYS, *OPTIONAL_KEYS, *PAIR_ID, "align", "correction", *reductions]
    ok = pairs[is_ok(pairs)]
    base = ok[ok["correction"] == "none"]
    corrected = ok[ok["correction"] != "none"]
    if base.empty or corrected.empty:
        return pd.DataFrame({c: pd.Series(dtype=dtype_of(pairs, c)) for c in out_columns})
    join = [*PAIR_ID, "align"]
    base = base.drop_duplicates(join, keep="last")[[*join, *columns]]
    merged = corrected.merge(base, on=join, how="inner", suffixes=("", "__base"))
    out = merged[[*MODEL_KEYS, *OPTIONAL_KEYS, *PAIR_ID, "align", "correction"]].copy()
    for column in columns:
        b0 = merged[f"{column}__base"].astype(float)
        b1 = merged[column].astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"rel_reduction_{column}"] = ((b0 - b1) / b0).where(b0 > 0)
    return sort_rows(out, [*MODEL_KEYS, "align", "correction", *PAIR_ID])


def summarise(
    data: pd.DataFrame | Mapping[str, pd.DataFrame],
    reduction_columns: Sequence[str] = REDUCTION_COLUMNS,
    *,
    interval: str = "t",
) -> pd.DataFrame:
    """Barrier statistics per (arch, dataset, norm, width, depth, align, correction).

    Args:
        data: a ``pairs`` DataFrame, or the dict of :func:`repair_ray.load_tables`.
        reduction_columns: barriers whose relative reduction is reported (see :func:`relative_reduction`).
        interval: the method of the ``<col>_low/_high`` bounds, ``t`` or ``bootstrap`` (see
            :func:`interval`; the bootstrap's is seeded, so the same tables give the same bounds).

    Returns:
        One row per group, sorted, with:

        - ``pairs``: pairs with ``status == 'ok'``; ``failed``: pairs whose rows are not ``ok`` (a
          group whose every pair failed has ``pairs = 0`` and NaN statistics);
          ``model_keys``: distinct model keys pooled in the group (more than 1 only when a sweep's
          training config changed between runs and both generations are in the tables);
        - for every barrier column (``barrier_*``, ``midpoint_barrier_*``): ``<col>_mean``,
          ``<col>_std`` (ddof 1), ``<col>_ci95`` (half-width of the 95% t-interval, NaN for n < 2),
          and ``<col>_low`` / ``<col>_high``, the bounds of the 95% interval of ``interval`` (NaN for n < 2);
        - ``rel_reduction_<col>_mean/_std/_ci95`` for ``reduction_columns``: per-pair relative
          reductions averaged (NaN on ``correction == 'none'`` rows, the baseline);
        - endpoint accuracies, so an undertrained config is visible next to its barrier:
          ``endpoint_test_acc_mean`` (mean over pairs of the mean of both endpoints),
          ``endpoint_test_acc_min`` (worst endpoint), and ``midpoint_test_acc_mean``.
    """
    if interval not in INTERVAL_METHODS:
        raise ValueError(f"interval must be one of {', '.join(INTERVAL_METHODS)}, got {interval!r}")
    bounds, pairs = interval, pairs_of(data)
    keys = list(GROUP_KEYS)
    barriers = barrier_columns(pairs)
    reductions = [c for c in reduction_columns if c in pairs.columns]
    stat_columns = [f"{c}_{s}" for c in barriers for s in ("mean", "std", "ci95", "low", "high")]
    red_columns = [f"rel_reduction_{c}_{s}" for c in reductions for s in ("mean", "std", "ci95")]
    acc_columns = ["endpoint_test_acc_mean", "endpoint_test_acc_min", "midpoint_test_acc_mean"]
    columns = [*keys, "pairs", "failed", "model_keys", *stat_columns, *red_columns, *acc_columns]
    if pairs.empty:
        return pd.DataFrame({c: pd.Series(dtype=dtype_of(pairs, c) if c in keys else float) for c in columns})

    # pair counts: an ok pair per group; a failed pair per group unless the same pair is also ok there
    pid = (
        pairs["model_key"].astype(str)
        + "/"
        + pairs["analysis_key"].astype(str)
        + "/"
        + pairs["seed_a"].astype(str)
        + "/"
        + pairs["seed_b"].astype(str)
    )
    pairs = pairs.assign(_pid=pid, _ok=is_ok(pairs))
    ok = pairs[pairs["_ok"]]
    bad = pairs[~pairs["_ok"]].merge(
        ok[[*keys, "_pid"]].drop_duplicates(), on=[*keys, "_pid"], how="left", indicator=True
    )
    bad = bad[bad["_merge"] == "left_only"]
    out = pd.DataFrame(
        {
            "pairs": ok.groupby(keys, dropna=False, sort=False)["_pid"].nunique(),
            "failed": bad.groupby(keys, dropna=False, sort=False)["_pid"].nunique(),
            "model_keys": pairs.groupby(keys, dropna=False, sort=False)["model_key"].nunique(),
        }
    )
    out = out.fillna(0).astype(int)
    if not ok.empty:
        ok = ok.assign(
            _endpoint=ok[["endpoint_test_acc_a", "endpoint_test_acc_b"]].mean(axis=1),
            _endpoint_min=ok[["endpoint_test_acc_a", "endpoint_test_acc_b"]].min(axis=1),
        )
        out = out.join(aggregate(ok, keys, barriers, bounds))
        reduction = relative_reduction(ok, reductions)
        if not reduction.empty:
            red = aggregate(reduction, keys, [f"rel_reduction_{c}" for c in reductions])
            out = out.join(red)
        grouped = ok.groupby(keys, dropna=False, sort=False)
        out = out.join(
            pd.DataFrame(
                {
                    "endpoint_test_acc_mean": grouped["_endpoint"].mean(),
                    "endpoint_test_acc_min": grouped["_endpoint_min"].min(),
                    "midpoint_test_acc_mean": grouped["midpoint_test_acc"].mean(),
                }
            )
        )
    return _finish(out, columns, keys)


def summarise_over_trunks(
    data: pd.DataFrame | Mapping[str, pd.DataFrame],
    reduction_columns: Sequence[str] = REDUCTION_COLUMNS,
    *,
    interval: str = "t",
) -> pd.DataFrame:
    """The children of every trunk of a stability study (or IMP) pooled, with trunks as the unit.

    Pairs of children of one trunk are not independent observations: they share its first epochs
    (and, in a round of IMP, its mask), so an interval over all pairs would be too narrow by as much
    as the trunks differ. Here each statistic of :func:`summarise` is first averaged within each
    trunk (each trunk and branch epoch is its own model config), then ``<col>_mean/_std/_ci95`` and
    ``_low/_high`` are over the trunks' means (:func:`clustered_aggregate`), so their n is the number
    of trunks. A group with one trunk keeps the interval over its pairs, which holds for that
    trunk only: ``interval_over`` says which (``trunks`` or ``pairs of one trunk``).

    Rows without a ``trunk_seed`` (independent seeds) are left out. Returns :func:`summarise`'s
    columns without ``trunk_seed`` and ``model_key`` (pooled), with ``trunks`` (trunks with an
    ``ok`` pair), ``pairs`` and ``failed`` summed over them, and ``interval_over``.
    """
    if interval not in INTERVAL_METHODS:
        raise ValueError(f"interval must be one of {', '.join(INTERVAL_METHODS)}, got {interval!r}")
    pairs = pairs_of(data)
    pairs = pairs[pairs["trunk_seed"].notna()]
    per_trunk = summarise(pairs, reduction_columns, interval=interval)
    keys = [k for k in GROUP_KEYS if k not in ("trunk_seed", "model_key")]
    barriers = barrier_columns(pairs)
    reductions = [f"rel_reduction_{c}" for c in reduction_columns if c in pairs.columns]
    stat_columns = [f"{c}_{s}" for c in barriers for s in ("mean", "std", "ci95", "low", "high")]
    red_columns = [f"rel_reduction_{c}_{s}" for c in reductions for s in ("mean", "std", "ci95")]
    acc_columns = ["endpoint_test_acc_mean", "endpoint_test_acc_min", "midpoint_test_acc_mean"]
    columns = [*keys, "trunks", "pairs", "failed", "model_keys", *stat_columns]
    columns += [*red_columns, *acc_columns, "interval_over"]
    if per_trunk.empty:
        return pd.DataFrame({c: pd.Series(dtype=dtype_of(pairs, c) if c in keys else float) for c in columns})
    by = per_trunk.groupby(keys, dropna=False, sort=False)
    out = pd.DataFrame({"pairs": by["pairs"].sum(), "failed": by["failed"].sum(), "model_keys": by["model_key"].size()})
    ok = pairs[is_ok(pairs)]
    if not ok.empty:
        out = out.join(clustered_aggregate(ok, keys, barriers, "trunk_seed", interval))
        reduction = relative_reduction(ok, reduction_columns)
        if not reduction.empty:
            red = clustered_aggregate(reduction, keys, reductions, "trunk_seed").drop(columns="clusters")
            out = out.join(red)
        trunks = per_trunk[per_trunk["pairs"] > 0].groupby(keys, dropna=False, sort=False)
        out = out.join(
            pd.DataFrame(
                {
                    "endpoint_test_acc_mean": trunks["endpoint_test_acc_mean"].mean(),
                    "endpoint_test_acc_min": trunks["endpoint_test_acc_min"].min(),
                    "midpoint_test_acc_mean": trunks["midpoint_test_acc_mean"].mean(),
                }
            )
        )
    out = out.rename(columns={"clusters": "trunks"})
    out["trunks"] = out["trunks"].fillna(0).astype(int) if "trunks" in out else 0
    out["interval_over"] = np.where(
        out["trunks"] >= 2, "trunks", np.where(out["trunks"] == 1, "pairs of one trunk", "")
    )
    return _finish(out, columns, keys)


def _finish(out: pd.DataFrame, columns: Sequence[str], keys: Sequence[str]) -> pd.DataFrame:
    """A grouped summary as a sorted table with every column, absent statistics as NaN."""
    out = out.reset_index()
    for column in columns:
        if column not in out.columns:
            out[column] = np.nan
    return sort_rows(out[list(columns)], keys)


def small_cells(summary: pd.DataFrame, minimum: int = MIN_PAIRS) -> pd.DataFrame:
    """The rows of a :func:`summarise` table with ``0 < pairs < minimum``: cells whose intervals say little."""
    return summary[(summary["pairs"] > 0) & (summary["pairs"] < minimum)].reset_index(drop=True)


def summarise_models(data: pd.DataFrame | Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Trained networks per (arch, dataset, norm, width, depth), and per trunk seed and branch epoch
    in a stability study: counts and accuracies.

    Columns: the description, ``models`` (``ok``), ``failed``, ``epochs`` (max), and
    ``test_acc_mean/_std/_ci95``, ``train_acc_mean``, ``test_loss_mean`` over the ``ok`` networks.
    """
    models = data["models"] if isinstance(data, Mapping) else data
    optional = [k for k in OPTIONAL_KEYS if k in models.columns and models[k].notna().any()]
    keys = [*MODEL_KEYS, *optional]  # the children of each trunk and epoch apart, when there are any
    columns = [*keys, "models", "failed", "epochs", "test_acc_mean", "test_acc_std", "test_acc_ci95"]
    columns += ["train_acc_mean", "test_loss_mean"]
    if models.empty:
        return pd.DataFrame({c: pd.Series(dtype=dtype_of(models, c) if c in keys else float) for c in columns})
    ok_mask = is_ok(models)
    grouped = models.assign(_ok=ok_mask, _failed=~ok_mask).groupby(keys, dropna=False, sort=False)
    out = pd.DataFrame({"models": grouped["_ok"].sum(), "failed": grouped["_failed"].sum()}).astype(int)
    ok = models[ok_mask]
    if not ok.empty:
        out = out.join(aggregate(ok, keys, ["test_acc"]))
        g = ok.groupby(keys, dropna=False, sort=False)
        out = out.join(
            pd.DataFrame(
                {
                    "epochs": g["epochs"].max(),
                    "train_acc_mean": g["train_acc"].mean(),
                    "test_loss_mean": g["test_loss"].mean(),
                }
            )
        )
    return _finish(out, columns, keys)


def failed_pairs(data: pd.DataFrame | Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The pairs that are not ``ok``: one row per pair with its description and first error."""
    pairs = pairs_of(data)
    columns = [*PAIR_ID, *MODEL_KEYS, "rows", "error"]
    bad = pairs[~is_ok(pairs)] if not pairs.empty else pairs
    if bad.empty:
        return pd.DataFrame({c: pd.Series(dtype=dtype_of(pairs, c) if c != "rows" else int) for c in columns})
    out = (
        bad.groupby(list(PAIR_ID), dropna=False, sort=False)
        .agg(
            **{k: (k, "first") for k in MODEL_KEYS},
            rows=("align", "size"),
            error=("error", lambda s: next((str(v) for v in s if isinstance(v, str) and v), "")),
        )
        .reset_index()
    )
    return sort_rows(out[columns], list(PAIR_ID))
