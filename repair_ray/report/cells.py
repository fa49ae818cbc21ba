"""Tables as text for reading: values as short cells (``16.0`` -> ``16``), ``mean ± ci (n=N)``,
p values, and the compact forms of the summary and of the paired differences.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .differences import FDR_LEVEL, P_TESTS, adjust_p_values
from .frames import DESCRIPTION_KEYS, GROUP_KEYS, LINEAGE, OPTIONAL_KEYS, PLOT_METRICS, better_direction


def format_value(value) -> str:
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
        k: format_value(record[k])
        if k in ("width", "depth", *LINEAGE)
        else (record[k] if not pd.isna(record[k]) else "")
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


def compact_differences(
    differences: pd.DataFrame,
    columns: Sequence[str] = PLOT_METRICS,
    *,
    level: float = FDR_LEVEL,
    better: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """A :func:`paired_differences` (or :func:`baseline_differences`) table as text for reading:
    ``a − b`` and ``n``, then per column the mean difference with its interval ``[low, high]``,
    the p values of the t and sign tests each beside its q value (adjusted for the false discovery
    rate over the table: :func:`.differences.adjust_p_values`; computed here when the table has
    none), the pairs where ``a`` is better (lower on barriers, losses, errors; higher on
    accuracies: :func:`.frames.better_direction`), as ``k/n`` (``?/n`` where the column's
    direction is unknown), and the verdict: ``a better`` or ``b better`` where the t-test's q
    value is at most ``level`` (``a lower`` or ``a higher`` where the direction is unknown),
    ``n.s.`` where it is above, empty where there is no test. ``better``: as in
    :func:`paired_differences`, which values of a column are better where its name does not say."""
    columns = [c for c in columns if f"{c}_diff_mean" in differences.columns]
    if any(f"{c}_q_{test}" not in differences.columns for c in columns for test in P_TESTS):
        differences = adjust_p_values(differences)
    directions = {c: (better or {}).get(c) or better_direction(c) for c in columns}
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
            for test in P_TESTS:
                row[f"{name} p ({test})"] = _p(r[f"{column}_p_{test}"])
                row[f"{name} q ({test})"] = _p(r[f"{column}_q_{test}"])
            row[f"{name} a better"] = f"{format_value(r[f'{column}_a_better'])}/{int(r['n'])}"
            row[f"{name} verdict"] = _verdict(mean, r[f"{column}_q_t"], directions[column], level)
        rows.append(row)
    names = [f"{c.removeprefix('barrier_')} {s}" for c in columns for s in _DIFFERENCE_CELLS]
    return pd.DataFrame(rows, columns=[*keys, "a − b", "n", *names])


_DIFFERENCE_CELLS = ("a − b", "p (t)", "q (t)", "p (sign)", "q (sign)", "a better", "verdict")


def _verdict(mean, q, direction: str | None, level: float) -> str:
    """Which method the t-test's q value at ``level`` finds better, ``n.s.`` above it, empty with no test."""
    if q is None or pd.isna(q) or mean is None or pd.isna(mean):
        return ""
    if q > level or mean == 0:
        return "n.s."
    if direction is None:
        return "a lower" if mean < 0 else "a higher"
    return "a better" if (mean < 0) == (direction == "lower") else "b better"
