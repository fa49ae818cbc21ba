"""Summaries, plots and an HTML report of a sweep's result tables.

Everything here reads the DataFrames of :func:`repair_ray.load_tables` (plain pandas; no torch,
no Ray) and draws with matplotlib's object API (``matplotlib.figure.Figure``, rendered by Agg), so
it works headless and never switches the backend of a notebook that imports it.

Rules shared by every function:

- Only ``pairs`` rows with ``status == 'ok'`` enter statistics and plots; failed pairs are
  counted (the summary's ``failed`` column) and listed by the report, never plotted.
  :func:`ok_tables` also restricts ``curves`` and ``layers`` to the (pair, align, correction)
  rows whose ``pairs`` row is ``ok`` (a pair's ``pairs`` file is its done marker).
- A 95% confidence interval is the half-width ``t.ppf(0.975, n - 1) * std / sqrt(n)`` (Student's
  t, sample std with ``ddof=1``, ``n`` = values that are not null); it is NaN for ``n < 2``.
- Empty tables (a sweep that has just started) give empty summaries and skipped plots, never
  an exception.

Public API: :func:`summarise`, :func:`relative_reduction`, :func:`summarise_models`,
:func:`failed_pairs`, :func:`ok_tables`, :func:`plot_barrier_vs_width`,
:func:`plot_barrier_vs_depth`, :func:`plot_curves`, :func:`plot_variance_collapse`,
:func:`plot_endpoint_accuracy`, :func:`write_report`.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from . import storage
from .tables import load_tables

GROUP_KEYS = ("arch", "dataset", "norm", "width", "depth", "align", "correction")
"""The summary's groups: one model description (arch, dataset, norm, width, depth) x method."""
MODEL_KEYS = ("arch", "dataset", "norm", "width", "depth")
PAIR_ID = ("model_key", "seed_a", "seed_b")
REDUCTION_COLUMNS = ("barrier_train_loss", "barrier_train_error", "barrier_test_loss", "barrier_test_error")
"""The max-over-alpha barriers (never negative) whose relative reduction the summary reports."""
PLOT_METRICS = ("barrier_test_loss", "barrier_test_error")
ALIGN_ORDER = ("none", "weight", "activation")
CORRECTION_ORDER = ("none", "reset", "repair")
PLOT_FORMATS = ("png", "svg")

_ALIGN_COLORS = {"none": "0.35", "weight": "tab:blue", "activation": "tab:orange"}
_EXTRA_COLORS = ("tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
_CORRECTION_STYLES = {"none": "-", "repair": "--", "reset": ":"}
_CORRECTION_MARKERS = {"none": "o", "repair": "s", "reset": "^"}


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
    """The barrier columns of a ``pairs`` table: ``barrier_*`` (max over alpha) and ``midpoint_barrier_*``."""
    return [c for c in pairs.columns if c.startswith("barrier_") or c.startswith("midpoint_barrier_")]


def _pairs_of(data: pd.DataFrame | Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    return data["pairs"] if isinstance(data, Mapping) else data


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
    out_columns = [*MODEL_KEYS, *PAIR_ID, "align", "correction", *(f"rel_reduction_{c}" for c in columns)]
    ok = pairs[_is_ok(pairs)]
    base = ok[ok["correction"] == "none"]
    corrected = ok[ok["correction"] != "none"]
    if base.empty or corrected.empty:
        return pd.DataFrame({c: pd.Series(dtype=_dtype_of(pairs, c)) for c in out_columns})
    join = [*PAIR_ID, "align"]
    base = base.drop_duplicates(join, keep="last")[[*join, *columns]]
    merged = corrected.merge(base, on=join, how="inner", suffixes=("", "__base"))
    out = merged[[*MODEL_KEYS, *PAIR_ID, "align", "correction"]].copy()
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
    pid = pairs["model_key"].astype(str) + "/" + pairs["seed_a"].astype(str) + "/" + pairs["seed_b"].astype(str)
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
    out = out.reset_index()
    for column in columns:
        if column not in out.columns:
            out[column] = np.nan
    return _sort(out[columns], keys)


def summarise_models(data: pd.DataFrame | Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Trained networks per (arch, dataset, norm, width, depth): counts and accuracies.

    Columns: the description, ``models`` (``ok``), ``failed``, ``epochs`` (max), and
    ``test_acc_mean/_std/_ci95``, ``train_acc_mean``, ``test_loss_mean`` over the ``ok`` networks.
    """
    models = data["models"] if isinstance(data, Mapping) else data
    keys = list(MODEL_KEYS)
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
    out = out.reset_index()
    for column in columns:
        if column not in out.columns:
            out[column] = np.nan
    return _sort(out[columns], keys)


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
    out = dict(tables)
    pairs = tables.get("pairs")
    if pairs is None:
        return out
    ok = pairs[_is_ok(pairs)]
    out["pairs"] = ok.reset_index(drop=True)
    if "models" in tables and not tables["models"].empty:
        out["models"] = tables["models"][_is_ok(tables["models"])].reset_index(drop=True)
    ids = [*PAIR_ID, "align", "correction"]
    done = ok[ids].drop_duplicates()
    for name in ("curves", "layers"):
        frame = tables.get(name)
        if frame is None:
            continue
        if frame.empty or done.empty:
            out[name] = frame.iloc[0:0]
        else:
            out[name] = frame.merge(done, on=ids, how="inner")
    return out


# ----------------------------------------------------------------------------- plots


def _figure(nrows: int, ncols: int, width: float = 4.6, height: float = 3.3):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, stem: str | os.PathLike[str], dpi: int = 100) -> list[Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in PLOT_FORMATS:
        path = stem.with_name(f"{stem.name}.{fmt}")
        with matplotlib.rc_context({"svg.fonttype": "none"}):  # SVG text stays text: searchable, editable
            fig.savefig(path, format=fmt, dpi=dpi)
        paths.append(path)
    return paths


def _n_pairs(n: int) -> str:
    return f"{n} pair" if n == 1 else f"{n} pairs"


def _style(align: str, correction: str) -> dict:
    color = _ALIGN_COLORS.get(align) or _EXTRA_COLORS[zlib.crc32(str(align).encode()) % len(_EXTRA_COLORS)]
    return {
        "color": color,
        "linestyle": _CORRECTION_STYLES.get(correction, "-."),
        "marker": _CORRECTION_MARKERS.get(correction, "D"),
        "label": f"{align} + {correction}" if correction != "none" else f"{align}",
    }


def _methods(frame: pd.DataFrame) -> list[tuple[str, str]]:
    methods = _sort(frame[["align", "correction"]].drop_duplicates(), ["align", "correction"])
    return [(str(a), str(c)) for a, c in methods.itertuples(index=False)]


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "?"
    return f"{value:g}" if isinstance(value, (int, float, np.integer, np.floating)) else str(value)


def _panel_title(row: Mapping, keys: Sequence[str]) -> str:
    names = {"width": "width ", "depth": "depth ", "norm": "norm "}
    return ", ".join(f"{names.get(k, '')}{_fmt(row[k])}" for k in keys)


def _context(frame: pd.DataFrame, keys: Sequence[str] = ("arch", "dataset", "norm")) -> str:
    """The description values shared by every row (for a figure title), e.g. ``mlp, mnist, norm none``."""
    constant = [k for k in keys if frame[k].nunique(dropna=False) == 1]
    return _panel_title(frame.iloc[0], constant) if constant and not frame.empty else ""


def _metric_label(metric: str) -> str:
    return metric.replace("barrier_", "barrier ").replace("_", " ")


def plot_barrier_vs(
    pairs: pd.DataFrame,
    x: str,
    stem: str | os.PathLike[str],
    metrics: Sequence[str] = PLOT_METRICS,
) -> list[Path]:
    """Barrier vs ``x`` (``"width"`` or ``"depth"``): a line per align + correction, 95% CI error bars.

    One row of panels per (arch, dataset, norm, other axis), one column per metric; only ``ok``
    pairs. A single ``x`` value gives single points. Writes ``<stem>.png`` and ``<stem>.svg``.

    Returns:
        The paths written.

    Raises:
        ValueError: when there is no ``ok`` pair to plot.
    """
    if x not in ("width", "depth"):
        raise ValueError(f"x must be 'width' or 'depth', got {x!r}")
    other = "depth" if x == "width" else "width"
    summary = summarise(pairs)
    summary = summary[(summary["pairs"] > 0) & summary[x].notna()]
    if summary.empty:
        raise ValueError(f"no ok pairs with a known {x} to plot")
    metrics = [m for m in metrics if f"{m}_mean" in summary.columns]
    panel_keys = [k for k in ("arch", "dataset", "norm", other) if summary[k].nunique(dropna=False) > 1 or k == other]
    panels = _sort(summary[panel_keys].drop_duplicates(), panel_keys)
    fig, axes = _figure(len(panels), len(metrics))
    xs_all = np.sort(summary[x].astype(float).unique())
    log_x = x == "width" and len(xs_all) > 1 and (xs_all > 0).all()
    methods = _methods(summary)
    for row_i, panel in enumerate(panels.to_dict("records")):
        sel = np.ones(len(summary), dtype=bool)
        for k in panel_keys:
            v = panel[k]
            sel &= summary[k].isna().to_numpy() if pd.isna(v) else (summary[k] == v).to_numpy()
        part = summary[sel]
        for col_i, metric in enumerate(metrics):
            ax = axes[row_i][col_i]
            for m_i, (align, correction) in enumerate(methods):
                line = part[(part["align"] == align) & (part["correction"] == correction)].sort_values(x)
                if line.empty:
                    continue
                xv = line[x].astype(float).to_numpy()
                offset = (m_i - (len(methods) - 1) / 2) * 0.035
                xv = xv * 2**offset if log_x else xv + offset * (np.ptp(xs_all) or 1.0) * 0.5
                ax.errorbar(
                    xv,
                    line[f"{metric}_mean"],
                    yerr=line[f"{metric}_ci95"].fillna(0.0).to_numpy(),
                    capsize=3,
                    markersize=4,
                    **_style(align, correction),
                )
            if log_x:
                ax.set_xscale("log", base=2)
            ax.set_xticks(xs_all, [_fmt(v) for v in xs_all])
            ax.minorticks_off()
            ax.axhline(0.0, color="0.8", linewidth=0.8, zorder=0)
            ax.set_xlabel(x)
            ax.set_ylabel(_metric_label(metric))
            ax.set_title(_panel_title(panel, panel_keys), fontsize=10)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), fontsize=9)
    context = _context(summary)
    fig.suptitle(f"Barrier vs {x}{': ' + context if context else ''} (mean over pairs, 95% CI)", fontsize=11)
    return _save(fig, stem)


def plot_barrier_vs_width(pairs: pd.DataFrame, stem: str | os.PathLike[str], **kwargs) -> list[Path]:
    """:func:`plot_barrier_vs` with ``x="width"`` (one panel row per depth)."""
    return plot_barrier_vs(pairs, "width", stem, **kwargs)


def plot_barrier_vs_depth(pairs: pd.DataFrame, stem: str | os.PathLike[str], **kwargs) -> list[Path]:
    """:func:`plot_barrier_vs` with ``x="depth"`` (one panel row per width)."""
    return plot_barrier_vs(pairs, "depth", stem, **kwargs)


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


def _describe(pairs: pd.DataFrame | None, model_key: str) -> str:
    if pairs is not None and not pairs.empty:
        rows = pairs[pairs["model_key"] == model_key]
        if not rows.empty:
            r = rows.iloc[0]
            return f"{r['arch']}, width {_fmt(r['width'])}, depth {_fmt(r['depth'])}, norm {r['norm']}, {r['dataset']}"
    return model_key


def plot_curves(
    curves: pd.DataFrame,
    stem: str | os.PathLike[str],
    model_key: str | None = None,
    pairs: pd.DataFrame | None = None,
) -> list[Path]:
    """Loss and accuracy along alpha for one model config, mean over its pairs, per align + correction.

    One row of panels per split (test first, then train), columns loss and accuracy.
    ``model_key`` defaults to :func:`default_model_key` of ``pairs`` (or the first key of
    ``curves``); ``pairs`` also names the config in the title. Pass curves already restricted to
    ``ok`` pairs (:func:`ok_tables`). Raises ``ValueError`` when there is nothing to plot.
    """
    if curves.empty:
        raise ValueError("no curves to plot")
    if model_key is None:
        keys = sorted(curves["model_key"].dropna().unique())
        model_key = (default_model_key(pairs, keys) if pairs is not None else None) or keys[0]
    data = curves[curves["model_key"] == model_key]
    if data.empty:
        raise ValueError(f"no curves for model key {model_key!r}")
    splits = [s for s in ("test", "train") if s in set(data["split"])]
    splits += sorted(set(data["split"].dropna()) - set(splits))
    mean = data.groupby(["split", "align", "correction", "alpha"], dropna=False)[["loss", "acc"]].mean().reset_index()
    n_pairs = data[list(PAIR_ID)].drop_duplicates().shape[0]
    fig, axes = _figure(len(splits), 2)
    methods = _methods(mean)
    for row_i, split in enumerate(splits):
        for col_i, (column, label) in enumerate((("loss", "loss"), ("acc", "accuracy"))):
            ax = axes[row_i][col_i]
            for align, correction in methods:
                line = mean[(mean["split"] == split) & (mean["align"] == align) & (mean["correction"] == correction)]
                line = line.sort_values("alpha")
                style = _style(align, correction)
                style.pop("marker")
                ax.plot(line["alpha"], line[column], **style)
            ax.set_xlabel("α (0 = network A, 1 = aligned network B)")
            ax.set_ylabel(f"{split} {label}")
            ax.set_title(f"{split} {label}", fontsize=10)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), fontsize=9)
    fig.suptitle(f"Interpolation curves, {_describe(pairs, model_key)} (mean over {_n_pairs(n_pairs)})", fontsize=11)
    return _save(fig, stem)


def plot_variance_collapse(
    layers: pd.DataFrame,
    stem: str | os.PathLike[str],
    model_key: str | None = None,
    pairs: pd.DataFrame | None = None,
) -> list[Path]:
    """Std ratio per layer at alpha = 0.5 for one model config, per align + correction (mean, 95% CI).

    ``std_ratio`` is the interpolated net's per-channel pre-activation std over the target
    ``(1-α)σA + ασB``: 1 means no variance collapse. Lines: no alignment, each alignment, and
    each with its correction (whatever the table holds). ``model_key`` defaults to the deepest
    config (:func:`default_model_key` of ``pairs``, else the key with most layers). Raises
    ``ValueError`` when there is nothing to plot.
    """
    if layers.empty:
        raise ValueError("no layer statistics to plot")
    if model_key is None:
        keys = sorted(layers["model_key"].dropna().unique())
        model_key = default_model_key(pairs, keys) if pairs is not None else None
        if model_key is None:
            n_layers = layers.groupby("model_key")["layer_index"].nunique()
            model_key = str(n_layers.sort_values(ascending=False, kind="stable").index[0])
    data = layers[layers["model_key"] == model_key]
    if data.empty:
        raise ValueError(f"no layer statistics for model key {model_key!r}")
    stats = _aggregate(data, ["align", "correction", "layer_index"], ["std_ratio"]).reset_index()
    n_pairs = data[list(PAIR_ID)].drop_duplicates().shape[0]
    fig, axes = _figure(1, 1, width=6.4, height=4.2)
    ax = axes[0][0]
    for align, correction in _methods(stats):
        line = stats[(stats["align"] == align) & (stats["correction"] == correction)].sort_values("layer_index")
        ax.errorbar(
            line["layer_index"],
            line["std_ratio_mean"],
            yerr=line["std_ratio_ci95"].fillna(0.0).to_numpy(),
            capsize=3,
            markersize=4,
            **_style(align, correction),
        )
    ax.axhline(1.0, color="0.5", linewidth=0.8, linestyle=":")
    index = sorted(data["layer_index"].dropna().unique())
    ax.set_xticks(index, [str(int(i)) for i in index])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("layer index (pre-activation, input side first)")
    ax.set_ylabel("std ratio at α = 0.5 (1 = no collapse)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    ax.set_title(f"Variance collapse, {_describe(pairs, model_key)} (mean over {_n_pairs(n_pairs)})", fontsize=10)
    return _save(fig, stem)


def plot_endpoint_accuracy(models: pd.DataFrame, stem: str | os.PathLike[str]) -> list[Path]:
    """Accuracy of the trained networks vs width: a line per (arch, dataset, norm, depth), 95% CI.

    Test accuracy solid, train accuracy dashed; only ``ok`` networks. A barrier that changes
    with width together with these accuracies may just be under- or overtraining.
    Raises ``ValueError`` when there is no trained network.
    """
    ok = models[_is_ok(models)] if not models.empty else models
    ok = ok[ok["width"].notna()] if not ok.empty else ok
    if ok.empty:
        raise ValueError("no trained networks to plot")
    keys = ["arch", "dataset", "norm", "depth"]
    stats = _aggregate(ok, [*keys, "width"], ["test_acc", "train_acc"]).reset_index()
    stats = _sort(stats, [*keys, "width"])
    fig, axes = _figure(1, 1, width=6.4, height=4.2)
    ax = axes[0][0]
    xs_all = np.sort(stats["width"].astype(float).unique())
    varying = [k for k in keys if stats[k].nunique(dropna=False) > 1] or ["depth"]
    handles = []
    colors = [f"C{i}" for i in range(10)]
    for i, (_, line) in enumerate(stats.groupby(keys, dropna=False, sort=False)):
        label = _panel_title(line.iloc[0], varying)
        color = colors[i % len(colors)]
        (train,) = ax.plot(
            line["width"], line["train_acc_mean"], color=color, linestyle="--", marker=".", label=f"{label}: train"
        )
        test = ax.errorbar(
            line["width"],
            line["test_acc_mean"],
            yerr=line["test_acc_ci95"].fillna(0.0).to_numpy(),
            color=color,
            marker="o",
            markersize=4,
            capsize=3,
            label=f"{label}: test",
        )
        handles += [test, train]
    if len(xs_all) > 1 and (xs_all > 0).all():
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs_all, [_fmt(v) for v in xs_all])
    ax.minorticks_off()
    ax.set_xlabel("width")
    ax.set_ylabel("accuracy of the trained networks")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=9)
    context = _context(ok)
    ax.set_title(f"Accuracy vs width{': ' + context if context else ''} (mean over seeds, 95% CI)", fontsize=10)
    return _save(fig, stem)


# ----------------------------------------------------------------------------- report


@dataclass
class _Plot:
    name: str
    title: str
    caption: str
    written: list[Path] = field(default_factory=list)
    note: str = ""


def _cell(mean, ci, digits: int = 4) -> str:
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
        row = {k: _fmt(r[k]) if k in ("width", "depth") else (r[k] if not pd.isna(r[k]) else "") for k in GROUP_KEYS}
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
    columns = [*GROUP_KEYS, "pairs", "failed", *PLOT_METRICS]
    columns += [f"reduction_{m.removeprefix('barrier_')} %" for m in PLOT_METRICS]
    columns += ["endpoint_test_acc", "midpoint_test_acc"]
    return pd.DataFrame(rows, columns=columns)


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (no extra dependency)."""
    if frame.empty:
        return "_(no rows)_\n"

    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, (float, np.floating)):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _html_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p><em>(no rows)</em></p>"
    return frame.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0, classes="table")


def write_report(
    sweep_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    model_key: str | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write the report of a sweep: ``summary.csv``, ``summary.md``, plots (PNG + SVG), ``index.html``.

    Works on a sweep that is still running (empty or partial tables: it writes what it can and
    says what is missing) and on one with failed pairs (counted and listed, never plotted).

    Args:
        sweep_path: the sweep's folder ``<storage>/<name>`` (local, ``s3://`` or ``gs://``).
        out_dir: a local folder; default ``<sweep>/report`` for a local sweep, required for a remote one.
        model_key: the model config of the curves and variance-collapse plots (default: the
            deepest, then widest, config with finished pairs).
        notes: extra lines for the top of ``index.html`` (e.g. the sweep's progress).

    Returns:
        The path of ``index.html``.
    """
    sweep = storage.normalize(sweep_path)
    if out_dir is None:
        if not storage.is_local(sweep):
            raise ValueError(f"{sweep} is not a local folder: give an output folder for the report")
        out_dir = Path(sweep.removeprefix("file://")) / "report"
    if not storage.is_local(os.fspath(out_dir)):
        raise ValueError(f"the report's output folder must be local, got {out_dir}")
    out = Path(os.fspath(out_dir).removeprefix("file://"))

    tables = load_tables(sweep)
    ok = ok_tables(tables)
    if model_key is not None and not (ok["pairs"]["model_key"] == model_key).any():
        raise ValueError(
            f"model key {model_key!r} has no finished pair in {sweep}; "
            f"known: {', '.join(sorted(tables['pairs']['model_key'].dropna().unique())) or 'none'}"
        )
    out.mkdir(parents=True, exist_ok=True)

    summary = summarise(tables["pairs"])
    models_summary = summarise_models(tables["models"])
    failures = failed_pairs(tables["pairs"])
    failed_models = tables["models"][~_is_ok(tables["models"])] if not tables["models"].empty else tables["models"]
    compact = compact_summary(summary)

    summary.to_csv(out / "summary.csv", index=False)
    models_summary.to_csv(out / "models.csv", index=False)
    failures.to_csv(out / "failed_pairs.csv", index=False)

    missing: list[str] = []
    for name, frame in tables.items():
        if frame.empty:
            missing.append(f"the {name} table has no rows yet")
    if not tables["pairs"].empty and ok["pairs"].empty:
        missing.append("no pair has finished successfully yet")
    n_ok = int(ok["pairs"][list(PAIR_ID)].drop_duplicates().shape[0]) if not ok["pairs"].empty else 0
    plots = [
        _Plot("barrier_vs_width", "Barrier vs width", "Max-over-α barrier, mean over pairs with 95% CI."),
        _Plot("barrier_vs_depth", "Barrier vs depth", "Max-over-α barrier, mean over pairs with 95% CI."),
        _Plot("curves", "Loss and accuracy along the linear path", "Mean over the pairs of one model config."),
        _Plot(
            "variance_collapse",
            "Variance collapse",
            "Std ratio of the interpolated net at α = 0.5 per layer (1 = no collapse; "
            "repaired lines often coincide at 1).",
        ),
        _Plot("endpoint_accuracy", "Endpoint accuracy vs width", "Accuracy of the trained networks (test and train)."),
    ]
    makers = {
        "barrier_vs_width": lambda stem: plot_barrier_vs_width(ok["pairs"], stem),
        "barrier_vs_depth": lambda stem: plot_barrier_vs_depth(ok["pairs"], stem),
        "curves": lambda stem: plot_curves(ok["curves"], stem, model_key=model_key, pairs=ok["pairs"]),
        "variance_collapse": lambda stem: plot_variance_collapse(
            ok["layers"], stem, model_key=model_key, pairs=ok["pairs"]
        ),
        "endpoint_accuracy": lambda stem: plot_endpoint_accuracy(tables["models"], stem),
    }
    for plot in plots:
        for fmt in PLOT_FORMATS:  # never leave a stale plot of an earlier report beside this one
            (out / f"{plot.name}.{fmt}").unlink(missing_ok=True)
        try:
            plot.written = makers[plot.name](out / plot.name)
        except ValueError as error:
            plot.note = f"not drawn: {error}"
        except Exception as error:  # noqa: BLE001 - a broken plot must not lose the rest of the report
            plot.note = f"not drawn: {type(error).__name__}: {error}"
    if not ok["pairs"].empty:
        for plot, axis in ((plots[0], "width"), (plots[1], "depth")):
            values = ok["pairs"][axis].dropna().unique()
            if plot.written and len(values) == 1:
                plot.note = f"this sweep has a single {axis} ({_fmt(values[0])}): single points"

    # summary.md
    md = [f"# Sweep report: {storage.basename(sweep)}", "", f"Sweep: `{sweep}`", ""]
    md += [f"- {line}" for line in [*notes, *missing]] + ([""] if notes or missing else [])
    md += [f"Finished pairs: {n_ok}; failed pairs: {len(failures)}.", ""]
    md += ["## Barriers per model config and method", "", "Mean ± 95% CI over pairs (t-interval); "]
    md[-1] += "reductions are per pair against the same alignment without correction, then averaged.\n"
    md += [to_markdown(compact), "## Trained networks", "", to_markdown(_round(models_summary)), "## Failed pairs", ""]
    md += [to_markdown(failures)]
    (out / "summary.md").write_text("\n".join(md), encoding="utf-8")

    index = out / "index.html"
    index.write_text(
        _html(sweep, notes, missing, n_ok, compact, models_summary, failures, failed_models, plots), encoding="utf-8"
    )
    return index


def _round(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.round(4) if not frame.empty else frame


def _html(sweep, notes, missing, n_ok, compact, models_summary, failures, failed_models, plots) -> str:
    e = html.escape
    now = _dt.datetime.now().isoformat(timespec="seconds")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>repair-ray report: {e(storage.basename(sweep))}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #ddd;"
        "text-align:right}th{background:#f4f4f4}img{max-width:100%;border:1px solid #eee}"
        ".note{color:#a05a00}figure{margin:1.5em 0}</style></head><body>",
        f"<h1>Sweep report: {e(storage.basename(sweep))}</h1>",
        f"<p>Sweep <code>{e(sweep)}</code>, report written {e(now)}. Finished pairs: {n_ok}; "
        f"failed pairs: {len(failures)}; failed networks: {len(failed_models)}.</p>",
    ]
    if notes or missing:
        parts.append("<ul>" + "".join(f'<li class="note">{e(line)}</li>' for line in [*notes, *missing]) + "</ul>")
    parts += [
        "<h2>Barriers per model config and method</h2>",
        "<p>Mean ± 95% confidence interval over pairs (Student t; empty for fewer than 2 pairs). "
        "Reductions: <code>(B_aligned − B_corrected) / B_aligned</code> per pair, then averaged, in percent. "
        "Endpoint accuracy: the mean accuracy of the two trained networks of each pair. "
        'Every column: <a href="summary.csv">summary.csv</a>; Markdown: '
        '<a href="summary.md">summary.md</a>.</p>',
        _html_table(compact),
    ]
    for plot in plots:
        parts.append(f"<h2>{e(plot.title)}</h2>")
        png = next((p for p in plot.written if p.suffix == ".png"), None)
        if png is not None:
            svg = png.with_suffix(".svg").name
            parts.append(
                f'<figure><img src="{e(png.name)}" alt="{e(plot.title)}"><figcaption>{e(plot.caption)} '
                f'(<a href="{e(svg)}">SVG</a>)</figcaption></figure>'
            )
        if plot.note:
            parts.append(f'<p class="note">{e(plot.note)}</p>')
    parts += ["<h2>Trained networks</h2>", _html_table(_round(models_summary))]
    parts += ["<h2>Failed pairs</h2>", "<p>Counted in the summary's <code>failed</code> column, never plotted.</p>"]
    parts += [_html_table(failures)]
    if not failed_models.empty:
        cols = [c for c in ("model_key", "seed", "status", "error") if c in failed_models.columns]
        parts += ["<h2>Failed networks</h2>", _html_table(failed_models[cols])]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
