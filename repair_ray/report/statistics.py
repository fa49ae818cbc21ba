"""Statistics of a sweep's result tables: summaries per model config and method, 95% intervals.

Plain pandas (and scipy's t quantile) on the DataFrames of :func:`repair_ray.load_tables`: no
matplotlib, no torch, no Ray, so a script that only needs numbers (``analysis/``) imports this
module alone. The rules shared with the plots and the page are in :mod:`repair_ray.report`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

LINEAGE = ("trunk_seed", "branch_epoch", "imp_round", "sparsity")
"""Which trunk and epoch the children of a stability study branched at, and which round of IMP
(with its sparsity) they are (null for independent seeds)."""
OPTIONAL_KEYS = ("layer_widths", *LINEAGE)
"""Description columns that most sweeps leave null: shown only where they have values."""
GROUP_KEYS = (
    "arch",
    "dataset",
    "norm",
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
ALIGN_ORDER = ("none", "weight", "activation")
CORRECTION_ORDER = ("none", "reset", "repair")


# ----------------------------------------------------------------------------- statistics


def ci95(std: pd.Series | float, n: pd.Series | int) -> pd.Series | float:
    """Half-width of the 95% t-interval of a mean: ``t.ppf(0.975, n-1) * std / sqrt(n)``; NaN for n < 2."""
    from scipy import stats

    n_arr = np.asarray(n, dtype=float)
    std_arr = np.asarray(std, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = stats.t.ppf(0.975, np.where(n_arr >= 2, n_arr - 1, np.nan))
        half = np.where(n_arr >= 2, t * std_arr / np.sqrt(n_arr), np.nan)
    if isinstance(std, pd.Series):
        return pd.Series(half, index=std.index, dtype=float)
    return float(half)


def barrier_columns(pairs: pd.DataFrame) -> list[str]:
    """The barrier columns of a ``pairs`` table: ``barrier_*``, ``max_barrier_*`` and ``midpoint_barrier_*``."""
    return [c for c in pairs.columns if c.startswith(("barrier_", "max_barrier_", "midpoint_barrier_"))]


def _pairs_of(data: pd.DataFrame | Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    frame = _with_analysis_key(data["pairs"] if isinstance(data, Mapping) else data)
    missing = {
        k: pd.Series(pd.NA, index=frame.index, dtype="string" if k == "layer_widths" else "Int64")
        for k in OPTIONAL_KEYS
        if k not in frame.columns
    }
    return frame.assign(**missing) if missing else frame  # frames of older tables or built by hand


def _with_analysis_key(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with an ``analysis_key`` column without nulls: rows of tables written before analysis
    keys existed, or a frame built by hand, are one analysis with the empty key (groups and joins
    treat a null as no value, so it would drop them)."""
    if "analysis_key" not in frame.columns:
        return frame.assign(analysis_key="")
    if frame["analysis_key"].isna().any():
        return frame.assign(analysis_key=frame["analysis_key"].fillna(""))
    return frame


def _is_ok(frame: pd.DataFrame) -> pd.Series:
    return (frame["status"] == "ok").fillna(False).astype(bool)


def _order_key(column: pd.Series) -> pd.Series:
    """Sort key that puts known align / correction names in their natural order, others after."""
    order = {"align": ALIGN_ORDER, "correction": CORRECTION_ORDER}.get(column.name)
    if order is None:
        return column
    rank = {name: i for i, name in enumerate(order)}
    return column.map(lambda v: (rank.get(v, len(order)), str(v)))


def _sort(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    keys = [k for k in keys if k in frame.columns]
    if frame.empty or not keys:
        return frame.reset_index(drop=True)
    return frame.sort_values(keys, key=_order_key, na_position="last").reset_index(drop=True)


def _aggregate(frame: pd.DataFrame, keys: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """``<col>_mean/_std/_ci95`` of each column per group (nulls left out of each column)."""
    grouped = frame.groupby(list(keys), dropna=False, sort=False)[list(columns)]
    mean, std, count = grouped.mean(), grouped.std(ddof=1), grouped.count()
    out = pd.DataFrame(index=mean.index)
    for column in columns:
        out[f"{column}_mean"] = mean[column]
        out[f"{column}_std"] = std[column]
        out[f"{column}_ci95"] = ci95(std[column], count[column])
    return out


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
    pairs = _pairs_of(data)
    columns = [c for c in columns if c in pairs.columns]
    reductions = [f"rel_reduction_{c}" for c in columns]
    out_columns = [*MODEL_KEYS, *OPTIONAL_KEYS, *PAIR_ID, "align", "correction", *reductions]
    ok = pairs[_is_ok(pairs)]
    base = ok[ok["correction"] == "none"]
    corrected = ok[ok["correction"] != "none"]
    if base.empty or corrected.empty:
        return pd.DataFrame({c: pd.Series(dtype=_dtype_of(pairs, c)) for c in out_columns})
    join = [*PAIR_ID, "align"]
    base = base.drop_duplicates(join, keep="last")[[*join, *columns]]
    merged = corrected.merge(base, on=join, how="inner", suffixes=("", "__base"))
    out = merged[[*MODEL_KEYS, *OPTIONAL_KEYS, *PAIR_ID, "align", "correction"]].copy()
    for column in columns:
        b0 = merged[f"{column}__base"].astype(float)
        b1 = merged[column].astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"rel_reduction_{column}"] = ((b0 - b1) / b0).where(b0 > 0)
    return _sort(out, [*MODEL_KEYS, "align", "correction", *PAIR_ID])


def _dtype_of(frame: pd.DataFrame, column: str):
    return frame[column].dtype if column in frame.columns else float


def summarise(
    data: pd.DataFrame | Mapping[str, pd.DataFrame], reduction_columns: Sequence[str] = REDUCTION_COLUMNS
) -> pd.DataFrame:
    """Barrier statistics per (arch, dataset, norm, width, depth, align, correction).

    Args:
        data: a ``pairs`` DataFrame, or the dict of :func:`repair_ray.load_tables`.
        reduction_columns: barriers whose relative reduction is reported (see :func:`relative_reduction`).

    Returns:
        One row per group, sorted, with:

        - ``pairs``: pairs with ``status == 'ok'``; ``failed``: pairs whose rows are not ``ok`` (a
          group whose every pair failed has ``pairs = 0`` and NaN statistics);
          ``model_keys``: distinct model keys pooled in the group (more than 1 only when a sweep's
          training config changed between runs and both generations are in the tables);
        - for every barrier column (``barrier_*``, ``midpoint_barrier_*``): ``<col>_mean``,
          ``<col>_std`` (ddof 1) and ``<col>_ci95`` (half-width of the 95% t-interval, NaN for n < 2);
        - ``rel_reduction_<col>_mean/_std/_ci95`` for ``reduction_columns``: per-pair relative
          reductions averaged (NaN on ``correction == 'none'`` rows, the baseline);
        - endpoint accuracies, so an undertrained config is visible next to its barrier:
          ``endpoint_test_acc_mean`` (mean over pairs of the mean of both endpoints),
          ``endpoint_test_acc_min`` (worst endpoint), and ``midpoint_test_acc_mean``.
    """
    pairs = _pairs_of(data)
    keys = list(GROUP_KEYS)
    barriers = barrier_columns(pairs)
    reductions = [c for c in reduction_columns if c in pairs.columns]
    stat_columns = [f"{c}_{s}" for c in barriers for s in ("mean", "std", "ci95")]
    red_columns = [f"rel_reduction_{c}_{s}" for c in reductions for s in ("mean", "std", "ci95")]
    acc_columns = ["endpoint_test_acc_mean", "endpoint_test_acc_min", "midpoint_test_acc_mean"]
    columns = [*keys, "pairs", "failed", "model_keys", *stat_columns, *red_columns, *acc_columns]
    if pairs.empty:
        return pd.DataFrame({c: pd.Series(dtype=_dtype_of(pairs, c) if c in keys else float) for c in columns})

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
    pairs = pairs.assign(_pid=pid, _ok=_is_ok(pairs))
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
        out = out.join(_aggregate(ok, keys, barriers))
        reduction = relative_reduction(ok, reductions)
        if not reduction.empty:
            red = _aggregate(reduction, keys, [f"rel_reduction_{c}" for c in reductions])
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


def _finish(out: pd.DataFrame, columns: Sequence[str], keys: Sequence[str]) -> pd.DataFrame:
    """A grouped summary as a sorted table with every column, absent statistics as NaN."""
    out = out.reset_index()
    for column in columns:
        if column not in out.columns:
            out[column] = np.nan
    return _sort(out[list(columns)], keys)


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
        return pd.DataFrame({c: pd.Series(dtype=_dtype_of(models, c) if c in keys else float) for c in columns})
    ok_mask = _is_ok(models)
    grouped = models.assign(_ok=ok_mask, _failed=~ok_mask).groupby(keys, dropna=False, sort=False)
    out = pd.DataFrame({"models": grouped["_ok"].sum(), "failed": grouped["_failed"].sum()}).astype(int)
    ok = models[ok_mask]
    if not ok.empty:
        out = out.join(_aggregate(ok, keys, ["test_acc"]))
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
    pairs = _pairs_of(data)
    columns = [*PAIR_ID, *MODEL_KEYS, "rows", "error"]
    bad = pairs[~_is_ok(pairs)] if not pairs.empty else pairs
    if bad.empty:
        return pd.DataFrame({c: pd.Series(dtype=_dtype_of(pairs, c) if c != "rows" else int) for c in columns})
    out = (
        bad.groupby(list(PAIR_ID), dropna=False, sort=False)
        .agg(
            **{k: (k, "first") for k in MODEL_KEYS},
            rows=("align", "size"),
            error=("error", lambda s: next((str(v) for v in s if isinstance(v, str) and v), "")),
        )
        .reset_index()
    )
    return _sort(out[columns], list(PAIR_ID))


def ok_tables(tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """``tables`` restricted to what is finished and ``ok``.

    ``models`` and ``pairs`` keep their ``ok`` rows; ``curves`` and ``layers`` keep the rows of the
    (pair, align, correction) whose ``pairs`` row is ``ok`` (rows of a pair still in flight, whose
    ``pairs`` file is not written yet, are left out).
    """
    out = {name: _with_analysis_key(frame) if name != "models" else frame for name, frame in tables.items()}
    pairs = out.get("pairs")
    if pairs is None:
        return out
    ok = pairs[_is_ok(pairs)]
    out["pairs"] = ok.reset_index(drop=True)
    if "models" in tables and not tables["models"].empty:
        out["models"] = tables["models"][_is_ok(tables["models"])].reset_index(drop=True)
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
    ok = pairs[_is_ok(pairs)] if not pairs.empty else pairs
    if candidates is not None:
        ok = ok[ok["model_key"].isin(list(candidates))]
    if ok.empty:
        return None
    configs = ok[["model_key", "depth", "width"]].drop_duplicates("model_key")
    configs = configs.sort_values(["depth", "width", "model_key"], ascending=[False, False, True], na_position="last")
    return str(configs["model_key"].iloc[0])


# ----------------------------------------------------------------------------- text cells


def _fmt(value) -> str:
    """A value as short text for tables and plot labels (``16.0`` -> ``16``, null -> ``?``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "?"
    return f"{value:g}" if isinstance(value, (int, float, np.integer, np.floating)) else str(value)


def _cell(mean, ci, digits: int = 4) -> str:
    """``mean ± ci`` as text; only the mean when ``ci`` is null, empty when ``mean`` is."""
    if mean is None or pd.isna(mean):
        return ""
    text = f"{mean:.{digits}f}"
    if ci is not None and not pd.isna(ci):
        text += f" ± {ci:.{digits}f}"
    return text


def compact_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary's key columns as text for reading: ``mean ± 95% CI`` cells, reductions in percent."""
    rows = []
    for r in summary.to_dict("records"):
        row = {
            k: _fmt(r[k]) if k in ("width", "depth", *LINEAGE) else (r[k] if not pd.isna(r[k]) else "")
            for k in GROUP_KEYS
        }
        row.update(pairs=int(r["pairs"]), failed=int(r["failed"]))
        for metric in PLOT_METRICS:
            row[metric] = _cell(r.get(f"{metric}_mean"), r.get(f"{metric}_ci95"))
        for metric in PLOT_METRICS:
            mean, ci = r.get(f"rel_reduction_{metric}_mean"), r.get(f"rel_reduction_{metric}_ci95")
            scaled = (
                None if mean is None or pd.isna(mean) else 100 * mean,
                None if ci is None or pd.isna(ci) else 100 * ci,
            )
            row[f"reduction_{metric.removeprefix('barrier_')} %"] = _cell(*scaled, digits=1)
        row["endpoint_test_acc"] = _cell(r.get("endpoint_test_acc_mean"), None)
        row["midpoint_test_acc"] = _cell(r.get("midpoint_test_acc_mean"), None)
        rows.append(row)
    # the keys are shown only where a description has rows of several (they stay separate groups)
    described = [
        k
        for k in GROUP_KEYS
        if k not in ("model_key", "analysis_key")
        and (k not in OPTIONAL_KEYS or (k in summary and summary[k].notna().any()))
    ]
    shown = [
        k
        for k in ("model_key", "analysis_key")
        if not summary.empty and summary.groupby(described, dropna=False)[k].nunique(dropna=False).max() > 1
    ]
    columns = [*described, *shown, "pairs", "failed", *PLOT_METRICS]
    columns += [f"reduction_{m.removeprefix('barrier_')} %" for m in PLOT_METRICS]
    columns += ["endpoint_test_acc", "midpoint_test_acc"]
    return pd.DataFrame(rows, columns=columns)
