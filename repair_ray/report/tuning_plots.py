"""The tuning page's figures: each tuned value against the metric, and the learning curves of a
tune's trials (those ASHA stopped drawn apart). matplotlib, like :mod:`.plots`, whose helpers it uses."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from . import tuning
from .plots import new_figure, save_figure

_OUTCOME_STYLES = {  # how each outcome of a tune trial is marked, on the scatter and on the curves
    "complete": {"color": "tab:blue", "marker": "o", "linestyle": "-"},
    "stopped early": {"color": "0.55", "marker": "o", "linestyle": "--"},
    "diverged": {"color": "tab:red", "marker": "x", "linestyle": ":"},
    "error": {"color": "black", "marker": "x", "linestyle": ":"},
}
_BEST_STYLE: dict[str, Any] = {
    "color": "tab:orange",
    "marker": "*",
    "markersize": 15,
    "markeredgecolor": "black",
    "zorder": 5,
}


def _tuning_title(experiment: tuning.Experiment, what: str) -> str:
    counts = [f"{experiment.count(o)} {o}" for o in tuning.OUTCOMES if experiment.count(o)]
    return (
        f"{experiment.description} (tune {experiment.tune_key}): {what}\n"
        f"{len(experiment.trials)} trials, {', '.join(counts)}; {experiment.scheduler or 'scheduler ?'}"
    )


def _best_label(experiment: tuning.Experiment) -> str:
    best = experiment.best
    return "best: none (no complete ok trial)" if best is None else f"best: {tuning.sampled_text(best['sampled'])}"


def plot_tuning_values(experiment: tuning.Experiment, stem: str | os.PathLike[str]) -> list[Path]:
    """The metric after each trial's last epoch against its sampled value, a panel per tuned key
    (log x for a key spanning more than a decade, a tick per value for text and booleans). Complete
    trials filled, trials stopped early hollow grey (their value is of fewer epochs), the chosen one
    a star; diverged and failed trials have no value and are crosses beyond the worst value.
    Writes ``<stem>.png`` and ``<stem>.svg``.

    Raises:
        ValueError: when the experiment has no tuned key or no trial with a value.
    """
    from matplotlib.lines import Line2D

    trials = experiment.trials
    if not experiment.keys or not np.isfinite(trials["value"].to_numpy(dtype=float)).any():
        raise ValueError(f"no trial of {experiment.model_key} has a {experiment.metric} to plot")
    ncols = min(len(experiment.keys), 3)
    nrows = -(-len(experiment.keys) // ncols)
    fig, axes = new_figure(nrows, ncols, width=4.8, height=3.6)
    scores = trials["value"].to_numpy(dtype=float)
    low, high = np.nanmin(scores), np.nanmax(scores)
    pad = 0.08 * ((high - low) or abs(high) or 1.0)
    no_value = low - pad if experiment.mode == "max" else high + pad  # where a trial without a value is drawn
    for i, key in enumerate(experiment.keys):
        ax = axes[i // ncols][i % ncols]
        values = [s.get(key.name) for s in trials["sampled"]]
        if key.scale == "categorical":
            slot = {c: j for j, c in enumerate(key.categories)}
            per = {c: sum(tuning.category_of(v) == c for v in values) for c in key.categories}
            seen: dict[str, int] = {}
            xs = []
            for v in values:  # trials of one value spread side by side, never on top of each other
                c = tuning.category_of(v)
                k, seen[c] = seen.get(c, 0), seen.get(c, 0) + 1
                xs.append(slot[c] + (0.0 if per[c] == 1 else 0.5 * (k / (per[c] - 1) - 0.5)))
            x = np.array(xs)
        else:
            x = np.array([np.nan if v is None else float(v) for v in values])
        for outcome in tuning.OUTCOMES:
            style = _OUTCOME_STYLES[outcome]
            rows = (trials["outcome"] == outcome).to_numpy()
            if not rows.any():
                continue
            if outcome in ("diverged", "error"):
                ax.scatter(x[rows], np.full(rows.sum(), no_value), color=style["color"], marker="x", s=40)
                continue
            filled = outcome == "complete"
            ax.scatter(
                x[rows],
                scores[rows],
                facecolors=style["color"] if filled else "none",
                edgecolors=style["color"],
                marker="o",
                s=30,
                alpha=0.85,
            )
        if not np.isfinite(scores).all():  # the line of the trials without a value
            ax.axhline(no_value, color="0.75", linestyle=":", linewidth=0.8, zorder=0)
            ax.text(0.01, no_value, " no value", transform=ax.get_yaxis_transform(), va="bottom", fontsize=7)
        best = trials["best"].to_numpy(dtype=bool)
        if best.any():
            ax.plot(x[best], scores[best], linestyle="none", **_BEST_STYLE)
        if key.scale == "log":
            ax.set_xscale("log")
        elif key.scale == "categorical":
            ax.set_xticks(range(len(key.categories)), list(key.categories))
            ax.set_xlim(-0.6, len(key.categories) - 0.4)
        ax.set_xlabel(f"{key.name}{' (log scale)' if key.scale == 'log' else ''}")
        ax.set_ylabel(f"{experiment.metric} after the last epoch")
        ax.grid(alpha=0.3)
    for j in range(len(experiment.keys), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    handles = [
        Line2D([], [], linestyle="none", marker="o", color="tab:blue", label="complete"),
        Line2D([], [], linestyle="none", marker="o", markerfacecolor="none", color="0.55", label="stopped early"),
        Line2D([], [], linestyle="none", marker="x", color="tab:red", label="diverged (no value)"),
        Line2D([], [], linestyle="none", marker="x", color="black", label="error (no value)"),
        Line2D([], [], linestyle="none", label=_best_label(experiment), **{**_BEST_STYLE, "markersize": 11}),
    ]
    shown = [h for h, o in zip(handles, [*tuning.OUTCOMES, "best"], strict=True) if o == "best" or experiment.count(o)]
    fig.legend(handles=shown, loc="outside lower center", ncols=min(len(shown), 5), fontsize=8)
    fig.suptitle(_tuning_title(experiment, f"{experiment.metric} ({experiment.mode}) vs each tuned value"), fontsize=10)
    return save_figure(fig, stem)


def plot_tuning_curves(experiment: tuning.Experiment, stem: str | os.PathLike[str]) -> list[Path]:
    """The metric per epoch of every trial (its ``history``): complete trials blue, trials stopped
    early grey and dashed, ending with a hollow circle at their rung, diverged red dotted to their
    last finite epoch, the chosen one thick orange. Writes ``<stem>.png`` and ``<stem>.svg``.

    Raises:
        ValueError: when no trial has a history of the metric.
    """
    from matplotlib.lines import Line2D

    curves = tuning.learning_curves(experiment)
    if not curves:
        raise ValueError(f"no trial of {experiment.model_key} has a learning curve of {experiment.metric}")
    fig, axes = new_figure(1, 1, width=7.0, height=4.4)
    ax = axes[0][0]
    for curve in reversed(curves):  # the best last: drawn on top
        if curve.best:
            ax.plot(curve.epochs, curve.values, color="tab:orange", linewidth=2.6, marker=".", zorder=4)
            continue
        style = _OUTCOME_STYLES[curve.outcome]
        ax.plot(curve.epochs, curve.values, color=style["color"], linestyle=style["linestyle"], linewidth=1, alpha=0.8)
        if curve.outcome != "complete":  # where it ended: its rung, or its last finite epoch
            filled = curve.outcome != "stopped early"
            ax.plot(
                curve.epochs[-1:],
                curve.values[-1:],
                linestyle="none",
                marker=style["marker"],
                color=style["color"],
                markerfacecolor=style["color"] if filled else "none",
            )
    rungs = sorted({int(c.epochs[-1]) for c in curves if c.outcome == "stopped early"})
    for rung in rungs:
        ax.axvline(rung, color="0.85", linewidth=0.8, zorder=0)
    epochs = sorted({int(e) for c in curves for e in c.epochs})
    if len(epochs) <= 20:
        ax.set_xticks(epochs)
    stops = ", ".join(map(str, rungs))
    ax.set_xlabel("epoch" + (f" (grey lines: the rungs where trials were stopped: {stops})" if rungs else ""))
    ax.set_ylabel(f"{experiment.metric} (validation split, mean over the trial's seeds)")
    ax.grid(alpha=0.3)
    handles = [
        Line2D([], [], color="tab:blue", label="complete"),
        Line2D([], [], color="0.55", linestyle="--", marker="o", markerfacecolor="none", label="stopped early"),
        Line2D([], [], color="tab:red", linestyle=":", marker="x", label="diverged"),
        Line2D([], [], color="black", linestyle=":", marker="x", label="error"),
        Line2D([], [], color="tab:orange", linewidth=2.6, label=_best_label(experiment)),
    ]
    shown = [h for h, o in zip(handles, [*tuning.OUTCOMES, "best"], strict=True) if o == "best" or experiment.count(o)]
    ax.legend(handles=shown, fontsize=8)
    fig.suptitle(_tuning_title(experiment, f"learning curves of {experiment.metric}"), fontsize=10)
    return save_figure(fig, stem)
