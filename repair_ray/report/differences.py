"""Two methods compared on the same pairs: paired differences with their interval and tests, and
every method against its baseline (the report's table); the tests' p values adjusted for the false
discovery rate over the tests of one table (:func:`adjust_p_values`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .frames import (
    DESCRIPTION_KEYS,
    PAIR_ID,
    PLOT_METRICS,
    better_direction,
    dtype_of,
    is_ok,
    pairs_of,
    sort_rows,
)
from .intervals import INTERVAL_METHODS, interval

FDR_LEVEL = 0.05
"""The false discovery rate at which a table's verdicts call a paired difference real (``q <= FDR_LEVEL``)."""

P_TESTS = ("t", "sign")
"""The tests of a paired difference: ``<col>_p_<test>`` is its p value, ``<col>_q_<test>`` the adjusted one."""


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


def adjust_p_values(differences: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """``differences`` with its q values: ``<col>_q_t`` and ``<col>_q_sign``, the p values
    ``<col>_p_t`` and ``<col>_p_sign`` adjusted for the false discovery rate (Benjamini-Hochberg,
    :func:`scipy.stats.false_discovery_control`).

    The family is one test over the whole table: every row (comparison and model description) and
    every column's t-test p values together, and apart from them the sign tests'. A NaN p value (a
    t-test over fewer than 2 pairs, a column without values) keeps a NaN q and is not counted in the
    family. A table of several :func:`paired_differences` put together (``pd.concat``) is one
    family only once adjusted again, as :func:`baseline_differences` does.

    Args:
        differences: a :func:`paired_differences` or :func:`baseline_differences` table.
        columns: the columns whose tests make the family; default every column of the table
            (those with a ``<col>_diff_mean``).
    """
    from scipy import stats

    if columns is None:
        columns = [c.removesuffix("_diff_mean") for c in differences.columns if c.endswith("_diff_mean")]
    out = differences.copy()
    for test in P_TESTS:
        names = [f"{c}_p_{test}" for c in columns if f"{c}_p_{test}" in out.columns]
        p = out[names].to_numpy(dtype=float) if names else np.empty((len(out), 0))
        q = np.full_like(p, np.nan)
        tested = ~np.isnan(p)
        if tested.any():
            q[tested] = stats.false_discovery_control(p[tested], method="bh")
        for j, name in enumerate(names):
            out[name.replace(f"_p_{test}", f"_q_{test}")] = q[:, j]
    return out


def paired_differences(
    data: pd.DataFrame | Mapping[str, pd.DataFrame],
    a: tuple[str, str] | str,
    b: tuple[str, str] | str,
    columns: Sequence[str] = PLOT_METRICS,
    *,
    method: str = "t",
    confidence: float = 0.95,
    better: Mapping[str, str] | None = None,
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
        columns: columns of the pairs table.
        method, confidence: the interval of the mean difference (see :func:`interval`).
        better: ``{column: "lower" | "higher"}``, which values of a column are better, where its
            name does not say (see :func:`better_direction`: barriers, losses, errors and times
            lower, accuracies higher).

    Returns:
        One row per description with at least one shared pair: the description, ``a`` and ``b``
        (``align/correction``), ``n`` (pairs in both), and for each column ``<col>_diff_mean``,
        ``<col>_diff_low``, ``<col>_diff_high`` (the interval of the mean of ``a - b``),
        ``<col>_a_better`` (pairs where ``a`` is better: ``a < b`` on a lower-is-better column,
        ``a > b`` on a higher-is-better one; NaN where the column's direction is unknown),
        ``<col>_a_lower`` (pairs where ``a < b``, whatever the direction), ``<col>_p_t``
        (two-sided paired t-test, NaN for n < 2; 0 where every pair differs by the same non-zero
        amount, 1 where none differs),
        ``<col>_p_sign`` (two-sided exact sign test over the pairs that differ; 1 where none does),
        and ``<col>_q_t``, ``<col>_q_sign``: those p values adjusted for the false discovery rate
        over this table's tests (:func:`adjust_p_values`; NaN where the p value is).
        A pair with a null in a column is left out of that column's statistics.
    """
    (align_a, correction_a), (align_b, correction_b) = _method(a), _method(b)
    pairs = pairs_of(data)
    columns = [c for c in columns if c in pairs.columns]
    stats_of = ("diff_mean", "diff_low", "diff_high", "a_better", "a_lower", "p_t", "q_t", "p_sign", "q_sign")
    directions = {c: (better or {}).get(c) or better_direction(c) for c in columns}
    for column, direction in directions.items():
        if direction not in (None, "lower", "higher"):
            raise ValueError(f"better[{column!r}] must be 'lower' or 'higher', got {direction!r}")
    keys = list(DESCRIPTION_KEYS)
    out_columns = [*keys, "a", "b", "n", *(f"{c}_{s}" for c in columns for s in stats_of)]
    empty = pd.DataFrame({c: pd.Series(dtype=dtype_of(pairs, c) if c in keys else float) for c in out_columns})
    if method not in INTERVAL_METHODS:
        raise ValueError(f"interval method must be one of {', '.join(INTERVAL_METHODS)}, got {method!r}")
    if pairs.empty:
        return empty
    ok = pairs[is_ok(pairs)]

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
            lower, higher = int((d < 0).sum()), int((d > 0).sum())
            a_better = {"lower": lower, "higher": higher}.get(directions[column] or "", math.nan)
            record.update(
                {
                    f"{column}_diff_mean": found.mean,
                    f"{column}_diff_low": found.low,
                    f"{column}_diff_high": found.high,
                    f"{column}_a_better": a_better,
                    f"{column}_a_lower": lower,
                    f"{column}_p_t": p_t,
                    f"{column}_p_sign": p_sign,
                }
            )
        records.append(record)
    return adjust_p_values(sort_rows(pd.DataFrame(records, columns=out_columns), keys), columns)


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
    that order. Its q values are adjusted over the whole table (:func:`adjust_p_values`): every
    comparison, model description and column is in the family of its test.
    """
    pairs = pairs_of(data)
    if pairs.empty:
        return paired_differences(pairs, ("none", "none"), ("none", "none"), columns)
    ok = pairs[is_ok(pairs)]
    methods = set(map(tuple, ok[["align", "correction"]].drop_duplicates().itertuples(index=False)))
    aligns = sort_rows(pd.DataFrame({"align": sorted({m[0] for m in methods})}), ["align"])["align"]
    corrections = sort_rows(pd.DataFrame({"correction": sorted({m[1] for m in methods})}), ["correction"])["correction"]
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
    table = sort_rows(pd.concat(found, ignore_index=True), [*DESCRIPTION_KEYS, "_order"]).drop(columns="_order")
    return adjust_p_values(table, [c for c in columns if f"{c}_diff_mean" in table.columns])
