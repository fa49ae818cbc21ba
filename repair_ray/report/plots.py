"""Plots of a sweep's result tables, each written as PNG and SVG.

Drawn with matplotlib's object API (``matplotlib.figure.Figure``, rendered by Agg), so it works
headless and never switches the backend of a notebook that imports it. Every plot takes tables
already restricted to ``ok`` rows or restricts them itself (see :mod:`repair_ray.report`), and
raises ``ValueError`` when there is nothing to draw. What a plot draws (its panels, lines, means
and intervals) is computed by :mod:`.plot_data`; this module only draws it.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from . import plot_data
from .cells import format_value
from .frames import PLOT_METRICS

PLOT_FORMATS = ("png", "svg")
"""Every plot is written in each of these formats: PNG to look at, SVG to search and edit."""

_ALIGN_COLORS = {"none": "0.35", "weight": "tab:blue", "activation": "tab:orange"}
_EXTRA_COLORS = ("tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
_CORRECTION_STYLES = {"none": "-", "repair": "--", "reset": ":"}
_CORRECTION_MARKERS = {"none": "o", "repair": "s", "reset": "^"}


# ----------------------------------------------------------------------------- style helpers


def new_figure(nrows: int, ncols: int, width: float = 4.6, height: float = 3.3):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(fig, stem: str | os.PathLike[str], dpi: int = 100) -> list[Path]:
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


def metric_label(metric: str) -> str:
    return metric.replace("barrier_", "barrier ").replace("_", " ")


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
    instability plot) only children of trunks are drawn, the trunks pooled with the trunk as the unit
    (:func:`.statistics.summarise_over_trunks`: the interval over the trunks' means).
    Writes ``<stem>.png`` and ``<stem>.svg``.

    Returns:
        The paths written.

    Raises:
        ValueError: when there is no ``ok`` pair to plot.
    """
    data = plot_data.barrier_panels(pairs, x, metrics)
    xs_all = data.xs
    log_x = x == "width" and len(xs_all) > 1 and (xs_all > 0).all()
    methods = data.methods
    fig, axes = new_figure(len(data.panels), len(data.metrics))
    for row_i, panel in enumerate(data.panels):
        for col_i, metric in enumerate(data.metrics):
            ax = axes[row_i][col_i]
            for m_i, ((align, correction), line) in enumerate(zip(methods, panel.lines, strict=True)):
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
            ax.set_xticks(xs_all, [format_value(v) for v in xs_all])
            ax.minorticks_off()
            ax.axhline(0.0, color="0.8", linewidth=0.8, zorder=0)
            ax.set_xlabel("branch epoch (shared training before the children split)" if x == "branch_epoch" else x)
            ax.set_ylabel(metric_label(metric))
            ax.set_title(panel.title, fontsize=10)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), fontsize=9)
    context = data.context
    over = "trunks, 95% CI over trunks" if x == "branch_epoch" else "pairs, 95% CI"
    fig.suptitle(f"Barrier vs {x}{': ' + context if context else ''} (mean over {over})", fontsize=11)
    return save_figure(fig, stem)


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
    (log scale, densest on the left, as in Frankle et al.), the children of every trunk pooled with
    the trunk as the unit (means and intervals over the trunks' means; over the only trunk's rows).

    One row of panels per network (and rewind epoch); the first column is the children's test
    accuracy (the dense round's mean as a dotted line: a round "matches" while it reaches it), the
    others each barrier ``metrics``, a line per align + correction. Only ``ok`` rows. Writes
    ``<stem>.png`` and ``<stem>.svg``.

    Raises:
        ValueError: when there is no round of IMP to plot.
    """
    data = plot_data.sparsity_panels(models, pairs, metrics)
    xs_all = data.remaining
    fig, axes = new_figure(len(data.panels), 1 + len(data.metrics))
    for row_i, panel in enumerate(data.panels):
        ax = axes[row_i][0]
        acc = panel.accuracy
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
        if panel.dense_accuracy is not None:
            ax.axhline(panel.dense_accuracy, color="0.5", linestyle=":", linewidth=1, label="dense")
        ax.set_ylabel("test accuracy of the children")
        ax.legend(fontsize=8)
        for col_i, metric in enumerate(data.metrics, start=1):
            ax = axes[row_i][col_i]
            for (align, correction), line in zip(data.methods, panel.lines, strict=True):
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
            ax.set_ylabel(metric_label(metric))
        for ax in axes[row_i]:
            if len(xs_all) > 1:
                ax.set_xscale("log")
            ax.set_xlim(xs_all.max() * 1.15, xs_all.min() / 1.15)  # densest on the left
            ax.set_xticks(xs_all, [f"{v:.3g}" for v in xs_all], rotation=60 if len(xs_all) > 6 else 0)
            ax.minorticks_off()
            ax.set_xlabel("weights remaining (%)")
            ax.set_title(panel.title, fontsize=10)
            ax.grid(alpha=0.3)
    if data.methods:
        handles, labels = axes[0][1].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), fontsize=9)
    context = data.context
    fig.suptitle(
        f"Lottery tickets (IMP with rewinding){': ' + context if context else ''}: accuracy and "
        "instability vs sparsity (mean over trunks, 95% CI over trunks)",
        fontsize=11,
    )
    return save_figure(fig, stem)


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
    data = plot_data.curves_data(curves, model_key, pairs)
    fig, axes = new_figure(len(data.splits), 2)
    for row_i, split in enumerate(data.splits):
        for col_i, (column, label) in enumerate((("loss", "loss"), ("acc", "accuracy"))):
            ax = axes[row_i][col_i]
            for align, correction in data.methods:
                line = data.lines[(split, (align, correction))]
                style = _style(align, correction)
                style.pop("marker")
                ax.plot(line["alpha"], line[column], **style)
            ax.set_xlabel("α (0 = network A, 1 = aligned network B)")
            ax.set_ylabel(f"{split} {label}")
            ax.set_title(f"{split} {label}", fontsize=10)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), fontsize=9)
    title = f"Interpolation curves, {data.description} (mean over {_n_pairs(data.n_pairs)})"
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, stem)


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
    data = plot_data.variance_collapse_data(layers, model_key, pairs)
    fig, axes = new_figure(1, 1, width=6.4, height=4.2)
    ax = axes[0][0]
    for (align, correction), line in zip(data.methods, data.lines, strict=True):
        ax.errorbar(
            line["layer_index"],
            line["std_ratio_mean"],
            yerr=line["std_ratio_ci95"].fillna(0.0).to_numpy(),
            capsize=3,
            markersize=4,
            **_style(align, correction),
        )
    ax.axhline(1.0, color="0.5", linewidth=0.8, linestyle=":")
    ax.set_xticks(data.layer_index, [str(int(i)) for i in data.layer_index])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("layer index (pre-activation, input side first)")
    ax.set_ylabel("std ratio at α = 0.5 (1 = no collapse)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    ax.set_title(f"Variance collapse, {data.description} (mean over {_n_pairs(data.n_pairs)})", fontsize=10)
    return save_figure(fig, stem)


def plot_endpoint_accuracy(models: pd.DataFrame, stem: str | os.PathLike[str]) -> list[Path]:
    """Accuracy of the trained networks vs width: a line per (arch, dataset, norm, depth), 95% CI.

    Test accuracy solid, train accuracy dashed; only ``ok`` networks. A barrier that changes
    with width together with these accuracies may just be under- or overtraining.
    Raises ``ValueError`` when there is no trained network.
    """
    data = plot_data.endpoint_accuracy_data(models)
    fig, axes = new_figure(1, 1, width=6.4, height=4.2)
    ax = axes[0][0]
    xs_all = data.widths
    handles = []
    colors = [f"C{i}" for i in range(10)]
    for i, (label, line) in enumerate(data.lines):
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
    ax.set_xticks(xs_all, [format_value(v) for v in xs_all])
    ax.minorticks_off()
    ax.set_xlabel("width")
    ax.set_ylabel("accuracy of the trained networks")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=9)
    context = data.context
    ax.set_title(f"Accuracy vs width{': ' + context if context else ''} (mean over seeds, 95% CI)", fontsize=10)
    return save_figure(fig, stem)


def plot_training_curves(models: pd.DataFrame, stem: str | os.PathLike[str], *, max_lines: int = 12) -> list[Path]:
    """Learning curves of the trained networks, from each ``models`` row's ``history_json``: test
    accuracy and the epoch's mean training loss vs epoch, a line per model config (mean over its
    seeds, a band of ±1 standard deviation when it has several). The ``max_lines`` configs with the
    most seeds are drawn (the title says when some are left out). Children of trunks count their
    epochs from the branch epoch, IMP rounds are separate configs.

    Raises ``ValueError`` when no ``ok`` row has a history (tables written before it was recorded).
    """
    data = plot_data.training_curves_data(models, max_lines)
    fig, axes = new_figure(1, len(data.panels), width=5.2, height=3.8)
    for ax, (metric, label, curves) in zip(axes[0], data.panels, strict=True):
        for i, line in enumerate(curves):
            curve, color = line.curve, f"C{i % 10}"
            ax.plot(curve.index, curve["mean"], color=color, marker=".", label=f"{line.name} ({line.seeds} seeds)")
            if (curve["count"] > 1).any():
                spread = curve["std"].fillna(0.0)
                ax.fill_between(curve.index, curve["mean"] - spread, curve["mean"] + spread, color=color, alpha=0.15)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if metric == "epoch_train_loss" and data.positive_loss:
            ax.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    context = data.context
    fig.suptitle(
        f"Learning curves{': ' + context if context else ''} (mean over seeds, ±1 sd)"
        + (f"; {data.left_out} more configs not drawn" if data.left_out else ""),
        fontsize=10,
    )
    return save_figure(fig, stem)


def plot_timeline(models: pd.DataFrame, pairs: pd.DataFrame, stem: str | os.PathLike[str]) -> list[Path]:
    """Where the cluster's time went: every trial and pair task as a bar over time, a lane per slot.

    One band per Ray node; within it, each task takes the first lane free at its start, so the
    lanes count how many tasks a node ran at once. Trials and pairs in two colours, so the
    overlap of the stages (pipelining) and idle gaps are visible. Rows without
    ``started_at``/``finished_at`` (older versions) are left out; raises ``ValueError`` when none has them.
    """
    data = plot_data.timeline_data(models, pairs)
    nodes = data.nodes
    fig, axes = new_figure(1, 1, width=9.0, height=max(2.5, 0.9 + 0.35 * data.n_tasks**0.5 * len(nodes)))
    ax = axes[0][0]
    colors = {"train": "tab:blue", "pairs": "tab:orange"}
    for row, start, length, kind in data.bars:
        ax.barh(row, length, left=start, height=0.8, color=colors[kind], alpha=0.85)
    labels = [f"node {node[:8]}" if node != "?" else "node ?" for node in nodes]
    ax.set_yticks(data.ticks, labels)
    ax.set_xlabel(f"{data.unit} since the first task started")
    ax.grid(axis="x", alpha=0.3)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=k) for k, c in colors.items()], fontsize=9, loc="upper right")
    ax.set_title(
        f"Timeline: {data.n_train} trials and {data.n_tasks - data.n_train} pair tasks on {len(nodes)} node(s)",
        fontsize=10,
    )
    return save_figure(fig, stem)


# ----------------------------------------------------------------------------- tuning
