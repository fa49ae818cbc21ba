"""Plots of a sweep's result tables, each written as PNG and SVG.

Drawn with matplotlib's object API (``matplotlib.figure.Figure``, rendered by Agg), so it works
headless and never switches the backend of a notebook that imports it. Every plot takes tables
already restricted to ``ok`` rows or restricts them itself (see :mod:`repair_ray.report`), and
raises ``ValueError`` when there is nothing to draw.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from .statistics import PAIR_ID, PLOT_METRICS, _aggregate, _fmt, _is_ok, _sort, default_model_key, summarise

PLOT_FORMATS = ("png", "svg")
"""Every plot is written in each of these formats: PNG to look at, SVG to search and edit."""

_ALIGN_COLORS = {"none": "0.35", "weight": "tab:blue", "activation": "tab:orange"}
_EXTRA_COLORS = ("tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
_CORRECTION_STYLES = {"none": "-", "repair": "--", "reset": ":"}
_CORRECTION_MARKERS = {"none": "o", "repair": "s", "reset": "^"}


# ----------------------------------------------------------------------------- style helpers


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


def _panel_title(row: Mapping, keys: Sequence[str]) -> str:
    names = {"width": "width ", "layer_widths": "widths ", "depth": "depth ", "norm": "norm "}
    return ", ".join(f"{names.get(k, '')}{_fmt(row[k])}" for k in keys)


def _context(frame: pd.DataFrame, keys: Sequence[str] = ("arch", "dataset", "norm")) -> str:
    """The description values shared by every row (for a figure title), e.g. ``mlp, mnist, norm none``."""
    constant = [k for k in keys if frame[k].nunique(dropna=False) == 1]
    return _panel_title(frame.iloc[0], constant) if constant and not frame.empty else ""


def _metric_label(metric: str) -> str:
    return metric.replace("barrier_", "barrier ").replace("_", " ")


def _describe(pairs: pd.DataFrame | None, model_key: str) -> str:
    if pairs is not None and not pairs.empty:
        rows = pairs[pairs["model_key"] == model_key]
        if not rows.empty:
            r = rows.iloc[0]
            layered = r.get("layer_widths")
            width = f"widths {layered}" if isinstance(layered, str) else f"width {_fmt(r['width'])}"
            return f"{r['arch']}, {width}, depth {_fmt(r['depth'])}, norm {r['norm']}, {r['dataset']}"
    return model_key


# ----------------------------------------------------------------------------- plots


def plot_barrier_vs(
    pairs: pd.DataFrame,
    x: str,
    stem: str | os.PathLike[str],
    metrics: Sequence[str] = PLOT_METRICS,
) -> list[Path]:
    """Barrier vs ``x`` (``"width"``, ``"depth"`` or ``"branch_epoch"``): a line per align +
    correction, 95% CI error bars.

    One row of panels per (arch, dataset, norm, other axes), one column per metric; only ``ok``
    pairs. A single ``x`` value gives single points. Against ``branch_epoch`` (Frankle et al.'s
    instability plot) only children of trunks are drawn, the pairs of every trunk pooled.
    Writes ``<stem>.png`` and ``<stem>.svg``.

    Returns:
        The paths written.

    Raises:
        ValueError: when there is no ``ok`` pair to plot.
    """
    if x not in ("width", "depth", "branch_epoch"):
        raise ValueError(f"x must be 'width', 'depth' or 'branch_epoch', got {x!r}")
    others = {
        "width": ["depth"],
        "depth": ["width", "layer_widths"],
        "branch_epoch": ["width", "layer_widths", "depth"],
    }[x]
    if x == "branch_epoch":
        branched = pairs["branch_epoch"].notna() if "branch_epoch" in pairs.columns else pd.Series(False, pairs.index)
        if "imp_round" in pairs.columns:  # the rounds of IMP are their own plot (plot_sparsity)
            branched &= pairs["imp_round"].isna()
        if not branched.any():
            raise ValueError("no pairs of branched children (this sweep has no branch section)")
        # pool the trunks: one point per branch epoch (each trunk and epoch has its own model key)
        pairs = pairs[branched].assign(trunk_seed=pd.NA, model_key="children")
    summary = summarise(pairs)
    summary = summary[(summary["pairs"] > 0) & summary[x].notna()]
    if summary.empty:
        raise ValueError(f"no ok pairs with a known {x} to plot")
    metrics = [m for m in metrics if f"{m}_mean" in summary.columns]
    panel_keys = [  # a key no row sets (the width of per-layer-width mlps) names no panel
        k
        for k in ("arch", "dataset", "norm", *others)
        if (summary[k].nunique(dropna=False) > 1 or k in others) and summary[k].notna().any()
    ]
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
            ax.set_xlabel("branch epoch (shared training before the children split)" if x == "branch_epoch" else x)
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


def plot_barrier_vs_branch_epoch(pairs: pd.DataFrame, stem: str | os.PathLike[str], **kwargs) -> list[Path]:
    """:func:`plot_barrier_vs` with ``x="branch_epoch"``: Frankle et al.'s instability plot."""
    return plot_barrier_vs(pairs, "branch_epoch", stem, **kwargs)


def plot_sparsity(
    models: pd.DataFrame,
    pairs: pd.DataFrame,
    stem: str | os.PathLike[str],
    metrics: Sequence[str] = PLOT_METRICS,
) -> list[Path]:
    """Lottery tickets: test accuracy and barrier vs the weights that remain after each round of IMP
    (log scale, densest on the left, as in Frankle et al.), the children of every trunk pooled.

    One row of panels per network (and rewind epoch); the first column is the children's test
    accuracy (the dense round's mean as a dotted line: a round "matches" while it reaches it), the
    others each barrier ``metrics``, a line per align + correction. Only ``ok`` rows. Writes
    ``<stem>.png`` and ``<stem>.svg``.

    Raises:
        ValueError: when there is no round of IMP to plot.
    """

    def rounds(frame: pd.DataFrame) -> pd.DataFrame:
        if frame.empty or "sparsity" not in frame.columns:
            return frame.iloc[0:0]
        frame = frame[_is_ok(frame) & frame["sparsity"].notna()]
        return frame.assign(remaining=100.0 * (1.0 - frame["sparsity"].astype(float)))

    nets, pairs = rounds(models), rounds(pairs)
    if nets.empty:
        raise ValueError("no trained rounds of IMP (this sweep has no imp section)")
    keys = [k for k in ("arch", "dataset", "norm", "width", "layer_widths", "depth", "branch_epoch") if k in nets]
    keys = [k for k in keys if nets[k].notna().any()]
    accuracy = _aggregate(nets, [*keys, "remaining"], ["test_acc"]).reset_index()
    barriers = pd.DataFrame()
    if not pairs.empty:
        summary = summarise(pairs.assign(trunk_seed=pd.NA, imp_round=pd.NA, model_key="rounds"))
        summary = summary.assign(remaining=100.0 * (1.0 - summary["sparsity"].astype(float)))
        barriers = summary[summary["pairs"] > 0]
    metrics = [m for m in metrics if f"{m}_mean" in barriers.columns]
    panels = _sort(accuracy[keys].drop_duplicates(), keys)
    fig, axes = _figure(len(panels), 1 + len(metrics))
    xs_all = np.sort(accuracy["remaining"].unique())[::-1]
    methods = _methods(barriers) if not barriers.empty else []

    def select(frame: pd.DataFrame, panel: Mapping) -> pd.DataFrame:
        sel = np.ones(len(frame), dtype=bool)
        for k in keys:
            v = panel[k]
            sel &= frame[k].isna().to_numpy() if pd.isna(v) else (frame[k] == v).to_numpy()
        return frame[sel].sort_values("remaining", ascending=False)

    for row_i, panel in enumerate(panels.to_dict("records")):
        shown = [k for k in keys if k in ("width", "layer_widths", "depth") or panels[k].nunique(dropna=False) > 1]
        title = _panel_title(panel, [k for k in shown if k != "branch_epoch"])
        title += f", rewind to epoch {_fmt(panel['branch_epoch'])}" if "branch_epoch" in panel else ""
        ax = axes[row_i][0]
        acc = select(accuracy, panel)
        ax.errorbar(
            acc["remaining"],
            acc["test_acc_mean"],
            yerr=acc["test_acc_ci95"].fillna(0.0).to_numpy(),
            color="tab:green",
            marker="o",
            markersize=4,
            capsize=3,
            label="test accuracy",
        )
        dense = acc[acc["remaining"] == acc["remaining"].max()]["test_acc_mean"]
        if not dense.empty:
            ax.axhline(float(dense.iloc[0]), color="0.5", linestyle=":", linewidth=1, label="dense")
        ax.set_ylabel("test accuracy of the children")
        ax.legend(fontsize=8)
        for col_i, metric in enumerate(metrics, start=1):
            ax = axes[row_i][col_i]
            part = select(barriers, panel)
            for align, correction in methods:
                line = part[(part["align"] == align) & (part["correction"] == correction)]
                if not line.empty:
                    ax.errorbar(
                        line["remaining"],
                        line[f"{metric}_mean"],
                        yerr=line[f"{metric}_ci95"].fillna(0.0).to_numpy(),
                        capsize=3,
                        markersize=4,
                        **_style(align, correction),
                    )
            ax.axhline(0.0, color="0.8", linewidth=0.8, zorder=0)
            ax.set_ylabel(_metric_label(metric))
        for ax in axes[row_i]:
            if len(xs_all) > 1:
                ax.set_xscale("log")
            ax.set_xlim(xs_all.max() * 1.15, xs_all.min() / 1.15)  # densest on the left
            ax.set_xticks(xs_all, [f"{v:.3g}" for v in xs_all], rotation=60 if len(xs_all) > 6 else 0)
            ax.minorticks_off()
            ax.set_xlabel("weights remaining (%)")
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
    if methods:
        handles, labels = axes[0][1].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), fontsize=9)
    context = _context(nets)
    fig.suptitle(
        f"Lottery tickets (IMP with rewinding){': ' + context if context else ''}: accuracy and "
        "instability vs sparsity (mean over children of all trunks, 95% CI)",
        fontsize=11,
    )
    return _save(fig, stem)


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


def plot_training_curves(models: pd.DataFrame, stem: str | os.PathLike[str], *, max_lines: int = 12) -> list[Path]:
    """Learning curves of the trained networks, from each ``models`` row's ``history_json``: test
    accuracy and the epoch's mean training loss vs epoch, a line per model config (mean over its
    seeds, a band of ±1 standard deviation when it has several). The ``max_lines`` configs with the
    most seeds are drawn (the title says when some are left out). Children of trunks count their
    epochs from the branch epoch, IMP rounds are separate configs.

    Raises ``ValueError`` when no ``ok`` row has a history (tables written before it was recorded).
    """
    import json

    ok = models[_is_ok(models)] if not models.empty else models
    if ok.empty or "history_json" not in ok.columns or ok["history_json"].isna().all():
        raise ValueError("no trained network has a learning curve (rows written before history_json)")
    points = []
    for row in ok.dropna(subset=["history_json"]).itertuples(index=False):
        for epoch in json.loads(row.history_json):
            points.append({"model_key": row.model_key, "seed": row.seed, **epoch})
    frame = pd.DataFrame(points)
    seeds = ok.dropna(subset=["history_json"]).groupby("model_key")["seed"].nunique().sort_values(ascending=False)
    keys = list(seeds.index[:max_lines])
    described = ok.drop_duplicates("model_key").set_index("model_key")
    panels = [
        (m, label) for m, label in (("test_acc", "test accuracy"), ("epoch_train_loss", "training loss (epoch mean)"))
    ]
    panels = [(m, label) for m, label in panels if m in frame.columns]
    fig, axes = _figure(1, len(panels), width=5.2, height=3.8)
    for ax, (metric, label) in zip(axes[0], panels, strict=True):
        for i, key in enumerate(keys):
            curve = frame[frame["model_key"] == key].groupby("epoch")[metric].agg(["mean", "std", "count"])
            color = f"C{i % 10}"
            row = described.loc[key]
            name = _describe(described.reset_index(), key) if len(keys) > 1 else key
            name = name.split(", norm")[0] if isinstance(name, str) else key
            for column, what in (("branch_epoch", "branched at epoch"), ("imp_round", "IMP round")):
                if column in row and not pd.isna(row[column]):
                    name += f", {what} {int(row[column])}"
            ax.plot(curve.index, curve["mean"], color=color, marker=".", label=f"{name} ({int(seeds[key])} seeds)")
            if (curve["count"] > 1).any():
                spread = curve["std"].fillna(0.0)
                ax.fill_between(curve.index, curve["mean"] - spread, curve["mean"] + spread, color=color, alpha=0.15)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if metric == "epoch_train_loss" and (frame[metric] > 0).all():
            ax.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    left_out = len(seeds) - len(keys)
    context = _context(ok)
    fig.suptitle(
        f"Learning curves{': ' + context if context else ''} (mean over seeds, ±1 sd)"
        + (f"; {left_out} more configs not drawn" if left_out else ""),
        fontsize=10,
    )
    return _save(fig, stem)


def plot_timeline(models: pd.DataFrame, pairs: pd.DataFrame, stem: str | os.PathLike[str]) -> list[Path]:
    """Where the cluster's time went: every trial and pair task as a bar over time, a lane per slot.

    One band per Ray node; within it, each task takes the first lane free at its start, so the
    lanes count how many tasks a node ran at once. Trials and pairs in two colours, so the
    overlap of the stages (pipelining) and idle gaps are visible. Rows without
    ``started_at``/``finished_at`` (older versions) are left out; raises ``ValueError`` when none has them.
    """
    tasks = []
    for kind, frame, ids in (
        ("train", models, ["model_key"]),  # seeds trained together in one trial share a start: one bar
        ("pairs", pairs, ["model_key", "analysis_key", "seed_a", "seed_b"]),
    ):
        if frame.empty or "started_at" not in frame.columns:
            continue
        timed = frame.dropna(subset=["started_at", "finished_at"])
        # a pair's rows (one per method) share one task, and so do the seeds of one trial: one bar each
        timed = timed.drop_duplicates([c for c in ids if c in timed.columns] + ["started_at"])
        for row in timed.itertuples(index=False):
            tasks.append((kind, str(getattr(row, "node_id", "") or "?"), row.started_at, row.finished_at))
    if not tasks:
        raise ValueError("no rows with started_at / finished_at (tables written by an older version)")
    origin = min(t[2] for t in tasks)
    span = (max(t[3] for t in tasks) - origin).total_seconds()
    unit, per = ("minutes", 60.0) if span >= 120 else ("seconds", 1.0)
    nodes = sorted({t[1] for t in tasks})
    fig, axes = _figure(1, 1, width=9.0, height=max(2.5, 0.9 + 0.35 * len(tasks) ** 0.5 * len(nodes)))
    ax = axes[0][0]
    colors = {"train": "tab:blue", "pairs": "tab:orange"}
    base = 0
    ticks, labels = [], []
    for node in nodes:
        lanes: list[float] = []  # the time each lane of this node is free again
        for kind, _, start, end in sorted((t for t in tasks if t[1] == node), key=lambda t: t[2]):
            s, e = (start - origin).total_seconds() / per, (end - origin).total_seconds() / per
            lane = next((i for i, free in enumerate(lanes) if free <= s), len(lanes))
            if lane < len(lanes):
                lanes[lane] = e
            else:
                lanes.append(e)
            ax.barh(base + lane, max(e - s, 1e-3), left=s, height=0.8, color=colors[kind], alpha=0.85)
        ticks.append(base + (len(lanes) - 1) / 2)
        labels.append(f"node {node[:8]}" if node != "?" else "node ?")
        base += len(lanes) + 1
    ax.set_yticks(ticks, labels)
    ax.set_xlabel(f"{unit} since the first task started")
    ax.grid(axis="x", alpha=0.3)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=k) for k, c in colors.items()], fontsize=9, loc="upper right")
    n_train = sum(t[0] == "train" for t in tasks)
    ax.set_title(
        f"Timeline: {n_train} trials and {len(tasks) - n_train} pair tasks on {len(nodes)} node(s)", fontsize=10
    )
    return _save(fig, stem)
