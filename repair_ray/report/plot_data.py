"""What each plot draws, computed from the tables: the panels, the lines of each method with their
means and intervals, the axis values, the titles' descriptions. :mod:`.plots` only draws these.

Every function here raises ``ValueError`` when there is nothing to draw (the plot's message).
Plain pandas and numpy: no matplotlib.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .cells import format_value
from .frames import PAIR_ID, default_model_key, is_ok, sort_rows
from .intervals import aggregate, clustered_aggregate
from .statistics import summarise, summarise_over_trunks

Method = tuple[str, str]  # (align, correction)


# ----------------------------------------------------------------------------- descriptions


def methods_of(frame: pd.DataFrame) -> list[Method]:
    """The (align, correction) pairs of ``frame``, in the natural order of methods."""
    methods = sort_rows(frame[["align", "correction"]].drop_duplicates(), ["align", "correction"])
    return [(str(a), str(c)) for a, c in methods.itertuples(index=False)]


def method_rows(frame: pd.DataFrame, method: Method) -> pd.DataFrame:
    align, correction = method
    return frame[(frame["align"] == align) & (frame["correction"] == correction)]


def panel_title(row: Mapping, keys: Sequence[str]) -> str:
    """The values of ``keys`` in ``row`` as a title, e.g. ``width 16, depth 2``."""
    names = {"width": "width ", "layer_widths": "widths ", "depth": "depth ", "norm": "norm "}
    return ", ".join(f"{names.get(k, '')}{format_value(row[k])}" for k in keys)


def shared_context(frame: pd.DataFrame, keys: Sequence[str] = ("arch", "dataset", "norm")) -> str:
    """The description values shared by every row (for a figure title), e.g. ``mlp, mnist, norm none``."""
    constant = [k for k in keys if frame[k].nunique(dropna=False) == 1]
    return panel_title(frame.iloc[0], constant) if constant and not frame.empty else ""


def describe_config(pairs: pd.DataFrame | None, model_key: str) -> str:
    """A model config in words (``mlp, width 16, depth 2, norm none, mnist``), from a row of ``pairs``."""
    if pairs is not None and not pairs.empty:
        rows = pairs[pairs["model_key"] == model_key]
        if not rows.empty:
            r = rows.iloc[0]
            layered = r.get("layer_widths")
            width = f"widths {layered}" if isinstance(layered, str) else f"width {format_value(r['width'])}"
            return f"{r['arch']}, {width}, depth {format_value(r['depth'])}, norm {r['norm']}, {r['dataset']}"
    return model_key


def _select(frame: pd.DataFrame, keys: Sequence[str], panel: Mapping) -> pd.DataFrame:
    """The rows of ``frame`` whose ``keys`` equal the panel's (a null matching a null)."""
    sel = np.ones(len(frame), dtype=bool)
    for k in keys:
        v = panel[k]
        sel &= frame[k].isna().to_numpy() if pd.isna(v) else (frame[k] == v).to_numpy()
    return frame[sel]


# ----------------------------------------------------------------------------- barrier vs x


@dataclass
class Panel:
    """One row of panels: its title and, per method (in the figure's order), the rows of its line."""

    title: str
    lines: list[pd.DataFrame]


@dataclass
class BarrierPanels:
    """Barrier vs ``x``: a row of panels per description, a column per metric, a line per method."""

    x: str
    metrics: list[str]
    methods: list[Method]
    panels: list[Panel]
    xs: np.ndarray  # every x value, sorted
    context: str


def barrier_panels(pairs: pd.DataFrame, x: str, metrics: Sequence[str]) -> BarrierPanels:
    """The summary of ``pairs`` (:func:`.statistics.summarise`) against ``x``, in panels (see
    :func:`.plots.plot_barrier_vs`)."""
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
        # pool the trunks: one point per branch epoch, its interval over the trunks (their pairs are
        # not independent), or over the pairs of the only trunk
        summary = summarise_over_trunks(pairs[branched])
    else:
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
    records = sort_rows(summary[panel_keys].drop_duplicates(), panel_keys).to_dict("records")
    methods = methods_of(summary)
    panels = []
    for record in records:
        part = _select(summary, panel_keys, record)
        lines = [method_rows(part, method).sort_values(x) for method in methods]
        panels.append(Panel(panel_title(record, panel_keys), lines))
    xs = np.sort(summary[x].astype(float).unique())
    return BarrierPanels(x, metrics, methods, panels, xs, shared_context(summary))


# ----------------------------------------------------------------------------- lottery tickets


@dataclass
class SparsityPanel:
    """One network's row: the children's test accuracy per round, the dense round's, and the barriers."""

    title: str
    accuracy: pd.DataFrame  # remaining, test_acc_mean, test_acc_ci95; densest first
    dense_accuracy: float | None
    lines: list[pd.DataFrame]  # per method: remaining and the barrier statistics


@dataclass
class SparsityPanels:
    metrics: list[str]
    methods: list[Method]
    panels: list[SparsityPanel]
    remaining: np.ndarray  # every percentage of weights remaining, densest first
    context: str


def sparsity_panels(models: pd.DataFrame, pairs: pd.DataFrame, metrics: Sequence[str]) -> SparsityPanels:
    """The rounds of IMP in ``models`` and ``pairs``, a row of panels per network (see :func:`.plots.plot_sparsity`)."""

    def rounds(frame: pd.DataFrame) -> pd.DataFrame:
        if frame.empty or "sparsity" not in frame.columns:
            return frame.iloc[0:0]
        frame = frame[is_ok(frame) & frame["sparsity"].notna()]
        return frame.assign(remaining=100.0 * (1.0 - frame["sparsity"].astype(float)))

    nets, pairs = rounds(models), rounds(pairs)
    if nets.empty:
        raise ValueError("no trained rounds of IMP (this sweep has no imp section)")
    keys = [k for k in ("arch", "dataset", "norm", "width", "layer_widths", "depth", "branch_epoch") if k in nets]
    keys = [k for k in keys if nets[k].notna().any()]
    if "trunk_seed" in nets and nets["trunk_seed"].notna().all():  # the children of a trunk: one observation
        accuracy = clustered_aggregate(nets, [*keys, "remaining"], ["test_acc"], "trunk_seed").reset_index()
    else:
        accuracy = aggregate(nets, [*keys, "remaining"], ["test_acc"]).reset_index()
    barriers = pd.DataFrame()
    if not pairs.empty:
        summary = summarise_over_trunks(pairs.assign(imp_round=pd.NA))  # trunks as the unit, as above
        summary = summary.assign(remaining=100.0 * (1.0 - summary["sparsity"].astype(float)))
        barriers = summary[summary["pairs"] > 0]
    metrics = [m for m in metrics if f"{m}_mean" in barriers.columns]
    records = sort_rows(accuracy[keys].drop_duplicates(), keys)
    methods = methods_of(barriers) if not barriers.empty else []

    def select(frame: pd.DataFrame, panel: Mapping) -> pd.DataFrame:
        return _select(frame, keys, panel).sort_values("remaining", ascending=False)

    shown = [k for k in keys if k in ("width", "layer_widths", "depth") or records[k].nunique(dropna=False) > 1]
    panels = []
    for record in records.to_dict("records"):
        title = panel_title(record, [k for k in shown if k != "branch_epoch"])
        title += f", rewind to epoch {format_value(record['branch_epoch'])}" if "branch_epoch" in record else ""
        acc = select(accuracy, record)
        dense = acc[acc["remaining"] == acc["remaining"].max()]["test_acc_mean"]
        part = select(barriers, record) if metrics else barriers
        lines = [method_rows(part, method) for method in methods] if metrics else []
        panels.append(SparsityPanel(title, acc, None if dense.empty else float(dense.iloc[0]), lines))
    remaining = np.sort(accuracy["remaining"].unique())[::-1]
    return SparsityPanels(metrics, methods, panels, remaining, shared_context(nets))


# ----------------------------------------------------------------------------- one model config


@dataclass
class Curves:
    """Loss and accuracy along alpha, mean over one config's pairs: per split, per method a line."""

    splits: list[str]
    methods: list[Method]
    lines: dict[tuple[str, Method], pd.DataFrame]  # (split, method) -> alpha, loss, acc
    n_pairs: int
    description: str


def curves_data(curves: pd.DataFrame, model_key: str | None, pairs: pd.DataFrame | None) -> Curves:
    """The mean curves of ``model_key`` (see :func:`.plots.plot_curves`)."""
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
    methods = methods_of(mean)
    lines = {
        (split, method): method_rows(mean[mean["split"] == split], method).sort_values("alpha")
        for split in splits
        for method in methods
    }
    n_pairs = data[list(PAIR_ID)].drop_duplicates().shape[0]
    return Curves(splits, methods, lines, n_pairs, describe_config(pairs, model_key))


@dataclass
class VarianceCollapse:
    """The std ratio per layer at alpha = 0.5, per method (mean and 95% CI over one config's pairs)."""

    methods: list[Method]
    lines: list[pd.DataFrame]  # per method: layer_index, std_ratio_mean, std_ratio_ci95
    layer_index: list  # every layer index, sorted
    n_pairs: int
    description: str


def variance_collapse_data(layers: pd.DataFrame, model_key: str | None, pairs: pd.DataFrame | None) -> VarianceCollapse:
    """The std ratios of ``model_key`` (see :func:`.plots.plot_variance_collapse`)."""
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
    stats = aggregate(data, ["align", "correction", "layer_index"], ["std_ratio"]).reset_index()
    methods = methods_of(stats)
    lines = [method_rows(stats, method).sort_values("layer_index") for method in methods]
    index = sorted(data["layer_index"].dropna().unique())
    n_pairs = data[list(PAIR_ID)].drop_duplicates().shape[0]
    return VarianceCollapse(methods, lines, index, n_pairs, describe_config(pairs, model_key))


# ----------------------------------------------------------------------------- trained networks


@dataclass
class EndpointAccuracy:
    """Accuracy vs width of the trained networks: a labelled line per description."""

    lines: list[tuple[str, pd.DataFrame]]  # (label, width and train/test accuracy statistics)
    widths: np.ndarray  # every width, sorted
    context: str


def endpoint_accuracy_data(models: pd.DataFrame) -> EndpointAccuracy:
    """Mean train and test accuracy per width (see :func:`.plots.plot_endpoint_accuracy`)."""
    ok = models[is_ok(models)] if not models.empty else models
    ok = ok[ok["width"].notna()] if not ok.empty else ok
    if ok.empty:
        raise ValueError("no trained networks to plot")
    keys = ["arch", "dataset", "norm", "depth"]
    stats = aggregate(ok, [*keys, "width"], ["test_acc", "train_acc"]).reset_index()
    stats = sort_rows(stats, [*keys, "width"])
    varying = [k for k in keys if stats[k].nunique(dropna=False) > 1] or ["depth"]
    lines = [(panel_title(line.iloc[0], varying), line) for _, line in stats.groupby(keys, dropna=False, sort=False)]
    widths = np.sort(stats["width"].astype(float).unique())
    return EndpointAccuracy(lines, widths, shared_context(ok))


@dataclass
class LearningCurve:
    name: str
    curve: pd.DataFrame  # per epoch: mean, std, count over the config's seeds
    seeds: int


@dataclass
class TrainingCurves:
    """Learning curves per metric: a line per model config (mean over its seeds)."""

    panels: list[tuple[str, str, list[LearningCurve]]]  # (metric, label, its curves)
    left_out: int  # configs not drawn
    positive_loss: bool  # every epoch's training loss is above 0 (a log scale fits)
    context: str


def training_curves_data(models: pd.DataFrame, max_lines: int) -> TrainingCurves:
    """The ``history_json`` of the ``ok`` rows as curves (see :func:`.plots.plot_training_curves`)."""
    ok = models[is_ok(models)] if not models.empty else models
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
    metrics = [
        (m, label) for m, label in (("test_acc", "test accuracy"), ("epoch_train_loss", "training loss (epoch mean)"))
    ]
    panels = []
    for metric, label in [(m, label) for m, label in metrics if m in frame.columns]:
        curves = []
        for key in keys:
            curve = frame[frame["model_key"] == key].groupby("epoch")[metric].agg(["mean", "std", "count"])
            row = described.loc[key]
            name = describe_config(described.reset_index(), key) if len(keys) > 1 else key
            name = name.split(", norm")[0] if isinstance(name, str) else key
            for column, what in (("branch_epoch", "branched at epoch"), ("imp_round", "IMP round")):
                if column in row and not pd.isna(row[column]):
                    name += f", {what} {int(row[column])}"
            curves.append(LearningCurve(name, curve, int(seeds[key])))
        panels.append((metric, label, curves))
    positive = "epoch_train_loss" in frame.columns and bool((frame["epoch_train_loss"] > 0).all())
    return TrainingCurves(panels, len(seeds) - len(keys), positive, shared_context(ok))


# ----------------------------------------------------------------------------- the cluster's time


@dataclass
class Timeline:
    """Every trial and pair task as a bar, a band of lanes per node (first lane free at its start)."""

    bars: list[tuple[float, float, float, str]]  # (row, start, length, kind), in the unit
    ticks: list[float]  # the middle row of each node's band
    nodes: list[str]
    unit: str  # "minutes" or "seconds"
    n_tasks: int
    n_train: int


def timeline_data(models: pd.DataFrame, pairs: pd.DataFrame) -> Timeline:
    """The tasks' bars from ``started_at``/``finished_at`` (see :func:`.plots.plot_timeline`)."""
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
    bars: list[tuple[float, float, float, str]] = []
    ticks: list[float] = []
    base = 0
    for node in nodes:
        lanes: list[float] = []  # the time each lane of this node is free again
        for kind, _, start, end in sorted((t for t in tasks if t[1] == node), key=lambda t: t[2]):
            s, e = (start - origin).total_seconds() / per, (end - origin).total_seconds() / per
            lane = next((i for i, free in enumerate(lanes) if free <= s), len(lanes))
            if lane < len(lanes):
                lanes[lane] = e
            else:
                lanes.append(e)
            bars.append((base + lane, s, max(e - s, 1e-3), kind))
        ticks.append(base + (len(lanes) - 1) / 2)
        base += len(lanes) + 1
    n_train = sum(t[0] == "train" for t in tasks)
    return Timeline(bars, ticks, nodes, unit, len(tasks), n_train)
