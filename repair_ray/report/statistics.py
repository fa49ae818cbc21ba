"""Statistics of a sweep's result tables: summaries per model config and method, intervals that
state their n, and paired differences between methods on the same pairs.

Plain pandas, numpy and scipy on the DataFrames of :func:`repair_ray.load_tables`: no
matplotlib, no torch, no Ray, so a script that only needs numbers (``analysis/``) imports this
module alone. The rules shared with the plots and the page are in :mod:`repair_ray.report`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..names import ALIGNS, CORRECTIONS, LINEAGE

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
ALIGN_ORDER = ALIGNS
CORRECTION_ORDER = CORRECTIONS
DESCRIPTION_KEYS = tuple(k for k in GROUP_KEYS if k not in ("align", "correction"))
"""A summary's groups without the method: the pairs two methods are compared on (never two keys)."""
MIN_PAIRS = 5
"""Cells with fewer ok pairs than this get a warning in the report: their intervals say little."""
INTERVAL_METHODS = ("t", "bootstrap")


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


@dataclass(frozen=True)
class Interval:
    """A confidence interval of a mean: over ``n`` values, with the ``method`` that made it."""

    n: int
    mean: float
    low: float
    high: float
    method: str


def interval(
    values,
    *,
    method: str = "t",
    confidence: float = 0.95,
    resamples: int = 10000,
    seed: int = 0,
) -> Interval:
    """The ``confidence`` interval of the mean of ``values`` (nulls left out), stating its ``n``.

    ``method="t"``: Student's t, ``mean ± t.ppf((1 + confidence) / 2, n - 1) * std / sqrt(n)`` (at 0.95
    the summary's ``ci95``). ``method="bootstrap"``: the percentile bootstrap of the mean,
    ``resamples`` resamples drawn by ``numpy.random.default_rng(seed)`` (the same interval every
    time). Bounds are NaN for ``n < 2``; a sample of one repeated value has ``low == high == mean``.
    """
    if method not in INTERVAL_METHODS:
        raise ValueError(f"interval method must be one of {', '.join(INTERVAL_METHODS)}, got {method!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    x = np.asarray(pd.Series(values, dtype=float).dropna(), dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return Interval(n, mean, math.nan, math.nan, method)
    if np.ptp(x) == 0:  # no spread: the t and bootstrap formulas degenerate (0/0, warnings)
        return Interval(n, mean, mean, mean, method)
    from scipy import stats

    if method == "t":
        half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
        return Interval(n, mean, mean - half, mean + half, method)
    result = stats.bootstrap(
        (x,),
        np.mean,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return Interval(n, mean, float(low), float(high), method)


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


def _aggregate(
    frame: pd.DataFrame, keys: Sequence[str], columns: Sequence[str], bounds: str | None = None
) -> pd.DataFrame:
    """``<col>_mean/_std/_ci95`` of each column per group (nulls left out of each column), and with
    ``bounds`` (an :func:`interval` method) the 95% interval's ``<col>_low/_high``."""
    by = frame.groupby(list(keys), dropna=False, sort=False)
    grouped = by[list(columns)]
    mean, std, count = grouped.mean(), grouped.std(ddof=1), grouped.count()
    out = pd.DataFrame(index=mean.index)
    for column in columns:
        out[f"{column}_mean"] = mean[column]
        out[f"{column}_std"] = std[column]
        out[f"{column}_ci95"] = ci95(std[column], count[column])
        if bounds == "t":
            out[f"{column}_low"] = out[f"{column}_mean"] - out[f"{column}_ci95"]
            out[f"{column}_high"] = out[f"{column}_mean"] + out[f"{column}_ci95"]
        elif bounds is not None:
            found = by[column].agg(lambda v: interval(v, method=bounds))  # indexed as ``mean``
            out[f"{column}_low"] = found.map(lambda i: i.low).astype(float)
            out[f"{column}_high"] = found.map(lambda i: i.high).astype(float)
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
    bounds, pairs = interval, _pairs_of(data)
    keys = list(GROUP_KEYS)
    barriers = barrier_columns(pairs)
    reductions = [c for c in reduction_columns if c in pairs.columns]
    stat_columns = [f"{c}_{s}" for c in barriers for s in ("mean", "std", "ci95", "low", "high")]
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
        out = out.join(_aggregate(ok, keys, barriers, bounds))
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


def small_cells(summary: pd.DataFrame, minimum: int = MIN_PAIRS) -> pd.DataFrame:
    """The rows of a :func:`summarise` table with ``0 < pairs < minimum``: cells whose intervals say little."""
    return summary[(summary["pairs"] > 0) & (summary["pairs"] < minimum)].reset_index(drop=True)


def _method(method: tuple[str, str] | Sequence[str] | str) -> tuple[str, str]:
    """``(align, correction)`` from a tuple or an ``"align/correction"`` string."""
    parts = method.split("/") if isinstance(method, str) else list(method)
    if len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
        raise ValueError(f"a method is (align, correction) or 'align/correction', got {method!r}")
    return parts[0], parts[1]


def _p_values(differences: np.ndarray) -> tuple[float, float]:
    """Two-sided p of the paired t-test (mean difference 0; NaN for n < 2) and of the exact sign test."""
    from scipy import stats

    n = len(differences)
    if n == 0:
        return math.nan, math.nan
    if n < 2:
        p_t = math.nan
    elif np.ptp(differences) == 0:  # no spread: t is ±inf (p 0), or 0/0 where every difference is 0 (p 1)
        p_t = 1.0 if differences[0] == 0 else 0.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # nearly equal differences: precision warnings
            p_t = float(stats.ttest_1samp(differences, 0.0).pvalue)
    nonzero = differences[differences != 0]
    below = int((nonzero < 0).sum())
    p_sign = float(stats.binomtest(below, len(nonzero), 0.5).pvalue) if len(nonzero) else 1.0
    return p_t, p_sign


def paired_differences(
    data: pd.DataFrame | Mapping[str, pd.DataFrame],
    a: tuple[str, str] | str,
    b: tuple[str, str] | str,
    columns: Sequence[str] = PLOT_METRICS,
    *,
    method: str = "t",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Method ``a`` minus method ``b`` on the same pairs (the same two networks), per model description.

    A method is ``(align, correction)`` or ``"align/correction"``. Per group of
    :data:`DESCRIPTION_KEYS` (one model key and analysis key: never two pooled), the ``ok`` rows of
    ``a`` and of ``b`` are joined on the pair id; a pair missing, or not ``ok``, in either method
    takes no part. Two aligns whose analysis keys differ (a learned matching's settings are in its
    own rows' key) are joined on the networks, and the row's ``analysis_key`` names both
    (``a's | b's``); each method must then have one analysis per model config (ValueError
    otherwise). The spread between pairs cancels, so a small but steady difference shows where the
    two methods' own intervals overlap.

    Args:
        data: a ``pairs`` DataFrame, or the dict of :func:`repair_ray.load_tables`.
        a, b: the methods compared.
        columns: columns of the pairs table (barriers: lower is better).
        method, confidence: the interval of the mean difference (see :func:`interval`).

    Returns:
        One row per description with at least one shared pair: the description, ``a`` and ``b``
        (``align/correction``), ``n`` (pairs in both), and for each column ``<col>_diff_mean``,
        ``<col>_diff_low``, ``<col>_diff_high`` (the interval of the mean of ``a - b``),
        ``<col>_a_better`` (pairs where ``a < b``), ``<col>_p_t`` (two-sided paired t-test, NaN for
        n < 2; 0 where every pair differs by the same non-zero amount, 1 where none differs) and
        ``<col>_p_sign`` (two-sided exact sign test over the pairs that differ; 1 where none does).
        A pair with a null in a column is left out of that column's statistics.
    """
    (align_a, correction_a), (align_b, correction_b) = _method(a), _method(b)
    pairs = _pairs_of(data)
    columns = [c for c in columns if c in pairs.columns]
    stats_of = ("diff_mean", "diff_low", "diff_high", "a_better", "p_t", "p_sign")
    keys = list(DESCRIPTION_KEYS)
    out_columns = [*keys, "a", "b", "n", *(f"{c}_{s}" for c in columns for s in stats_of)]
    empty = pd.DataFrame({c: pd.Series(dtype=_dtype_of(pairs, c) if c in keys else float) for c in out_columns})
    if method not in INTERVAL_METHODS:
        raise ValueError(f"interval method must be one of {', '.join(INTERVAL_METHODS)}, got {method!r}")
    if pairs.empty:
        return empty
    ok = pairs[_is_ok(pairs)]

    def rows_of(align: str, correction: str) -> pd.DataFrame:
        mine = ok[(ok["align"] == align) & (ok["correction"] == correction)]
        return mine.drop_duplicates(list(PAIR_ID), keep="last")

    rows_a = rows_of(align_a, correction_a)
    rows_b = rows_of(align_b, correction_b)
    # Two aligns' rows of one pair carry different analysis keys when a learned matching's own
    # settings are in one of them: they pair on the networks, provided each method has one analysis
    # of each model config (several would be generations of the sweep, not one comparison).
    join = list(PAIR_ID) if align_a == align_b else [k for k in PAIR_ID if k != "analysis_key"]
    if align_a != align_b:
        for name, rows in ((a, rows_a), (b, rows_b)):
            several = rows.groupby("model_key")["analysis_key"].nunique()
            if (several > 1).any():
                raise ValueError(
                    f"method {name!r} has rows of {int(several.max())} analyses of model config "
                    f"{several.idxmax()!r}: compare one analysis (load_tables' default keys, or filter on analysis_key)"
                )
    keep = [*join, *columns] + (["analysis_key"] if align_a != align_b else [])
    merged = rows_a.merge(rows_b[keep], on=join, how="inner", suffixes=("", "__b"))
    if merged.empty:
        return empty
    records = []
    for _, group in merged.groupby(keys, dropna=False, sort=False):
        record = {k: group[k].iloc[0] for k in keys}
        record.update(a=f"{align_a}/{correction_a}", b=f"{align_b}/{correction_b}", n=len(group))
        if align_a != align_b and group["analysis_key__b"].iloc[0] != record["analysis_key"]:  # both named
            record["analysis_key"] = f"{record['analysis_key']} | {group['analysis_key__b'].iloc[0]}"
        for column in columns:
            d = (group[column].astype(float) - group[f"{column}__b"].astype(float)).dropna().to_numpy()
            found = interval(d, method=method, confidence=confidence)
            p_t, p_sign = _p_values(d)
            record.update(
                {
                    f"{column}_diff_mean": found.mean,
                    f"{column}_diff_low": found.low,
                    f"{column}_diff_high": found.high,
                    f"{column}_a_better": int((d < 0).sum()),
                    f"{column}_p_t": p_t,
                    f"{column}_p_sign": p_sign,
                }
            )
        records.append(record)
    return _sort(pd.DataFrame(records, columns=out_columns), keys)


def baseline_differences(
    data: pd.DataFrame | Mapping[str, pd.DataFrame],
    columns: Sequence[str] = PLOT_METRICS,
    *,
    method: str = "t",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """:func:`paired_differences` of every method against its baseline, the report's table.

    For every align, each correction other than ``none`` against ``none`` (what correcting does);
    for every correction, each align other than ``none`` against align ``none`` (what aligning
    does). Only where both methods have a shared ``ok`` pair; sorted by description, then in
    that order.
    """
    pairs = _pairs_of(data)
    if pairs.empty:
        return paired_differences(pairs, ("none", "none"), ("none", "none"), columns)
    ok = pairs[_is_ok(pairs)]
    methods = set(map(tuple, ok[["align", "correction"]].drop_duplicates().itertuples(index=False)))
    aligns = _sort(pd.DataFrame({"align": sorted({m[0] for m in methods})}), ["align"])["align"]
    corrections = _sort(pd.DataFrame({"correction": sorted({m[1] for m in methods})}), ["correction"])["correction"]
    comparisons = [((al, co), (al, "none")) for al in aligns for co in corrections if co != "none"]
    comparisons += [((al, co), ("none", co)) for co in corrections for al in aligns if al != "none"]
    found = [
        paired_differences(ok, a, b, columns, method=method, confidence=confidence).assign(_order=i)
        for i, (a, b) in enumerate(comparisons)
        if a in methods and b in methods
    ]
    found = [f for f in found if not f.empty]
    if not found:
        return paired_differences(pairs.iloc[0:0], ("none", "none"), ("none", "none"), columns)
    return _sort(pd.concat(found, ignore_index=True), [*DESCRIPTION_KEYS, "_order"]).drop(columns="_order")


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


def _cell(mean, ci, digits: int = 4, n: int | None = None) -> str:
    """``mean ± ci (n=N)`` as text; only the mean when ``ci`` is null, empty when ``mean`` is."""
    if mean is None or pd.isna(mean):
        return ""
    text = f"{mean:.{digits}f}"
    if ci is not None and not pd.isna(ci):
        text += f" ± {ci:.{digits}f}"
    return text if n is None else f"{text} (n={n})"


def _p(value) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.2g}" if value >= 0.001 else "<0.001"


def compact_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary's key columns as text for reading: ``mean ± 95% CI (n=pairs)`` barrier cells,
    reductions in percent."""
    rows = []
    for r in summary.to_dict("records"):
        row = _description_cells(r, GROUP_KEYS)
        row.update(pairs=int(r["pairs"]), failed=int(r["failed"]))
        for metric in PLOT_METRICS:
            row[metric] = _cell(r.get(f"{metric}_mean"), r.get(f"{metric}_ci95"), n=int(r["pairs"]))
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
    columns = [*_shown_keys(summary, GROUP_KEYS), "pairs", "failed", *PLOT_METRICS]
    columns += [f"reduction_{m.removeprefix('barrier_')} %" for m in PLOT_METRICS]
    columns += ["endpoint_test_acc", "midpoint_test_acc"]
    return pd.DataFrame(rows, columns=columns)


def _description_cells(record: Mapping, keys: Sequence[str]) -> dict:
    """The description of a row as cells: numbers short (``16.0`` -> ``16``), nulls empty."""
    return {
        k: _fmt(record[k]) if k in ("width", "depth", *LINEAGE) else (record[k] if not pd.isna(record[k]) else "")
        for k in keys
    }


def _shown_keys(frame: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """The description columns of a compact table: optional ones only where they have values, and
    the model and analysis keys only where a description has rows of several (separate groups)."""
    described = [
        k
        for k in keys
        if k not in ("model_key", "analysis_key")
        and (k not in OPTIONAL_KEYS or (k in frame and frame[k].notna().any()))
    ]
    shown = [
        k
        for k in ("model_key", "analysis_key")
        if not frame.empty and frame.groupby(described, dropna=False)[k].nunique(dropna=False).max() > 1
    ]
    return [*described, *shown]


def compact_differences(differences: pd.DataFrame, columns: Sequence[str] = PLOT_METRICS) -> pd.DataFrame:
    """A :func:`paired_differences` (or :func:`baseline_differences`) table as text for reading:
    ``a − b`` and ``n``, then per column the mean difference with its interval ``[low, high]``,
    the p values of the t and sign tests, and the pairs where ``a`` is lower, as ``k/n``."""
    columns = [c for c in columns if f"{c}_diff_mean" in differences.columns]
    keys = _shown_keys(differences, DESCRIPTION_KEYS)
    rows = []
    for r in differences.to_dict("records"):
        row = _description_cells(r, keys)
        row.update({"a − b": f"{r['a']} − {r['b']}", "n": int(r["n"])})
        for column in columns:
            name = column.removeprefix("barrier_")
            mean, low, high = (r[f"{column}_diff_{s}"] for s in ("mean", "low", "high"))
            text = _cell(mean, None)
            if text and not pd.isna(low):
                text += f" [{low:.4f}, {high:.4f}]"
            row[f"{name} a − b"] = text
            row[f"{name} p (t)"] = _p(r[f"{column}_p_t"])
            row[f"{name} p (sign)"] = _p(r[f"{column}_p_sign"])
            row[f"{name} a lower"] = f"{int(r[f'{column}_a_better'])}/{int(r['n'])}"
        rows.append(row)
    names = [f"{c.removeprefix('barrier_')} {s}" for c in columns for s in ("a − b", "p (t)", "p (sign)", "a lower")]
    return pd.DataFrame(rows, columns=[*keys, "a − b", "n", *names])
