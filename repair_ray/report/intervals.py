"""Intervals of a mean that state their n: the t half-width of the summaries (:func:`ci95`), an
:class:`Interval` by t or seeded bootstrap, and per-group means with their intervals (:func:`aggregate`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

INTERVAL_METHODS = ("t", "bootstrap")


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


def aggregate(
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


def clustered_aggregate(
    frame: pd.DataFrame, keys: Sequence[str], columns: Sequence[str], cluster: str, bounds: str | None = None
) -> pd.DataFrame:
    """:func:`aggregate` over clusters, for rows that are not independent: the children of one trunk
    of a stability study share its first epochs, so their pairs are one observation of that trunk.

    Each column is first averaged within every (group, ``cluster``); ``<col>_mean/_std/_ci95`` (and
    ``_low/_high`` with ``bounds``) are then those of the cluster means, the interval's n the
    number of clusters (not of rows). A group of a single cluster cannot say how clusters vary: it
    keeps the statistics over its rows, an interval that holds for that cluster only. ``clusters``
    is each group's number of clusters; rows with a null ``cluster`` are left out.
    """
    frame = frame[frame[cluster].notna()]
    keys = list(keys)
    clusters = frame.groupby(keys, dropna=False, sort=False)[cluster].nunique().rename("clusters")
    over_rows = aggregate(frame, keys, columns, bounds)
    means = frame.groupby([*keys, cluster], dropna=False, sort=False)[list(columns)].mean().reset_index()
    over_clusters = aggregate(means, keys, columns, bounds) if not means.empty else over_rows
    one = clusters.reindex(over_rows.index) < 2
    out = over_clusters.reindex(over_rows.index)
    out[one.to_numpy()] = over_rows[one.to_numpy()]
    return out.join(clusters)
