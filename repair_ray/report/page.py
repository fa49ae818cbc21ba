"""The report of a sweep: summary tables (CSV, Markdown), the plots, and an ``index.html`` page.

:func:`write_report` reads a sweep's tables, computes the statistics (:mod:`.statistics`), draws
the plots (:mod:`.plots`) and writes them into one local folder with a page that shows them all;
a sweep's tunes get a page of their own (:mod:`.tuning_page`), linked from it.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import storage
from ..io.tables import load_tables
from .cells import compact_differences, compact_summary, format_value
from .differences import FDR_LEVEL, baseline_differences
from .frames import LINEAGE, MIN_PAIRS, PAIR_ID, is_ok, ok_tables
from .markup import head, html_table
from .plots import (
    PLOT_FORMATS,
    plot_barrier_vs_branch_epoch,
    plot_barrier_vs_depth,
    plot_barrier_vs_width,
    plot_curves,
    plot_endpoint_accuracy,
    plot_sparsity,
    plot_timeline,
    plot_training_curves,
    plot_variance_collapse,
)
from .statistics import failed_pairs, small_cells, summarise, summarise_models
from .tuning_page import PAGE, index_section, overview, write_tuning_page


@dataclass
class _Plot:
    """One plot of the report: file stem, heading, caption, the files written, and why it was not drawn."""

    name: str
    title: str
    caption: str
    written: list[Path] = field(default_factory=list)
    note: str = ""


# ----------------------------------------------------------------------------- tables


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


def _round(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.round(4) if not frame.empty else frame


def _small_cell_lines(summary: pd.DataFrame) -> list[str]:
    """The cells of ``summary`` with fewer than :data:`MIN_PAIRS` pairs, one line per model config
    and pair count: its description (its keys too where two would otherwise read the same), the
    pairs, and its methods with that count ("every method" when it is all of the table's)."""
    small = small_cells(summary)
    every = {(r["align"], r["correction"]) for r in summary.to_dict("records")}
    described: list[tuple[str, str, int, tuple[str, str]]] = []
    for r in small.to_dict("records"):
        width, depth = format_value(r["width"]), format_value(r["depth"])
        text = f"{r['arch']} on {r['dataset']}, norm {r['norm']}, width {width}, depth {depth}"
        for key in ("layer_widths", *LINEAGE):
            if key in r and not pd.isna(r[key]):
                text += f", {key.replace('_', ' ')} {format_value(r[key])}"
        keys = f"model key {r['model_key']}" + (f", analysis key {r['analysis_key']}" if r["analysis_key"] else "")
        described.append((text, keys, int(r["pairs"]), (r["align"], r["correction"])))
    keys_of: dict[str, set[str]] = {}
    for text, keys, _, _ in described:
        keys_of.setdefault(text, set()).add(keys)
    groups: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for text, keys, pairs, method in described:
        name = f"{text} ({keys})" if len(keys_of[text]) > 1 else text
        groups.setdefault((name, pairs), []).append(method)
    lines = []
    for (name, pairs), methods in groups.items():
        which = "every method" if set(methods) == every else ", ".join(f"{a} + {c}" for a, c in methods)
        lines.append(f"{name}: {pairs} pair{'s' * (pairs != 1)} ({which})")
    return lines


def _small_cell_warning(small: int, cells: int) -> str:
    return (
        f"{small} of {cells} cells have fewer than {MIN_PAIRS} pairs: intervals over fewer than "
        f"{MIN_PAIRS} pairs say little (more seeds give more pairs)."
    )


DIFFERENCES_TEXT = (
    "Method a minus method b on the same pairs (the same two networks), per model config: the mean "
    "difference with its 95% t-interval [low, high], the two-sided p values of the paired t-test and of "
    "the exact sign test, each beside its q value, and the pairs where a's barrier is lower (better). Each "
    "correction against no correction with the same alignment, and each alignment against none with the same "
    "correction; the spread between pairs cancels, so a steady difference shows even where the methods' "
    "intervals overlap. This table runs many tests, so its p values are adjusted for the false discovery rate "
    "(Benjamini-Hochberg, scipy.stats.false_discovery_control): the family of a test is every row and column "
    "of this table (the t-tests together, the sign tests together); a test without a p value (a t-test over "
    "fewer than 2 pairs) has no q value and is not counted. The verdict says which method is better where "
    f"the t-test's q value is at most {FDR_LEVEL:g} (a false discovery rate of {FDR_LEVEL:.0%}), n.s. "
    "otherwise; read the raw p values, and the 95% intervals (not adjusted), as one test each, never as a "
    "verdict: an interval that excludes 0 can stand beside n.s. "
    "In a stability or IMP study each trunk is its own model config: these intervals and tests are over "
    "the pairs of one trunk (not independent of each other) and hold for that trunk alone."
)


# ----------------------------------------------------------------------------- report


def write_report(
    sweep_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    model_key: str | None = None,
    notes: Sequence[str] = (),
    keys: str = "current",
) -> Path:
    """Write the report of a sweep: ``summary.csv``, ``summary.md``, ``paired_differences.csv``, plots, ``index.html``,
    and, when it has trials of ``repair-ray tune``, ``tuning.html`` (:mod:`.tuning_page`).

    Works on a sweep that is still running (empty or partial tables: it writes what it can and
    says what is missing), on one with failed pairs (counted and listed, never plotted), and on one
    that is only tuned so far (the tuning page, and notes that the rest is to come).

    Args:
        sweep_path: the sweep's folder ``<storage>/<name>`` (local, ``s3://`` or ``gs://``).
        out_dir: a local folder; default ``<sweep>/report`` for a local sweep, required for a remote one.
        model_key: the model config of the curves and variance-collapse plots (default: the
            deepest, then widest, config with finished pairs).
        notes: extra lines for the top of ``index.html`` (e.g. the sweep's progress).
        keys: ``current`` (the config the sweep last ran with) or ``all`` (see
            :func:`repair_ray.load_tables`); the summary never pools two model or analysis keys.
            The tuning page shows each model config's newest tune, or with ``all`` every tune.

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

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tables = load_tables(sweep, keys=keys)
    notes = [*notes, *(str(w.message) for w in caught)]  # damaged files and rows of other keys
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
    failed_models = tables["models"][~is_ok(tables["models"])] if not tables["models"].empty else tables["models"]
    compact = compact_summary(summary)
    small, n_small = _small_cell_lines(summary), len(small_cells(summary))
    cells = int((summary["pairs"] > 0).sum()) if not summary.empty else 0
    differences = baseline_differences(tables["pairs"])
    compact_diff = compact_differences(differences)

    summary.to_csv(out / "summary.csv", index=False)
    differences.to_csv(out / "paired_differences.csv", index=False)
    models_summary.to_csv(out / "models.csv", index=False)
    failures.to_csv(out / "failed_pairs.csv", index=False)

    tuning = write_tuning_page(tables["recipes"], out, sweep, every=keys == "all")
    missing: list[str] = []
    for name, frame in tables.items():
        if frame.empty and name != "recipes":  # a sweep need not be tuned
            missing.append(f"the {name} table has no rows yet")
    if tuning.path is not None and tables["models"].empty:
        missing.append(
            f"tuned but not run yet: {tuning.path.name} shows the tunes; `repair-ray run` trains the networks "
            "this page reports on (`repair-ray tune --write` gives a config with the chosen recipes)"
        )
    if not tables["pairs"].empty and ok["pairs"].empty:
        missing.append("no pair has finished successfully yet")
    n_ok = int(ok["pairs"][list(PAIR_ID)].drop_duplicates().shape[0]) if not ok["pairs"].empty else 0
    plots = [
        _Plot("barrier_vs_width", "Barrier vs width", "Max-over-α barrier, mean over pairs with 95% CI."),
        _Plot("barrier_vs_depth", "Barrier vs depth", "Max-over-α barrier, mean over pairs with 95% CI."),
        _Plot(
            "barrier_vs_branch_epoch",
            "Barrier vs branch epoch (instability)",
            "Children of one trunk, branched after k epochs of shared training: max-over-α barrier, "
            "mean over trunks (each trunk's pairs averaged first: the pairs of one trunk are not independent) "
            "with the 95% CI over the trunks, or over the pairs where there is one trunk (an interval for that "
            "trunk alone). Stable once the barrier is ~0 (Frankle et al.).",
        ),
        _Plot(
            "sparsity",
            "Lottery tickets: accuracy and barrier vs sparsity",
            "Rounds of IMP with rewinding: the children's test accuracy (dotted: the dense round's) and the "
            "max-over-α barrier between two children of a round, vs the weights that remain; mean over trunks "
            "(each trunk's children and pairs averaged first) with the 95% CI over the trunks, or over the "
            "children and pairs of the only trunk. A round is a matching ticket while it reaches the dense "
            "accuracy, and stable while its barrier is ~0 (Frankle et al.).",
        ),
        _Plot("curves", "Loss and accuracy along the linear path", "Mean over the pairs of one model config."),
        _Plot(
            "variance_collapse",
            "Variance collapse",
            "Std ratio of the interpolated net at α = 0.5 per layer (1 = no collapse; "
            "repaired lines often coincide at 1).",
        ),
        _Plot("endpoint_accuracy", "Endpoint accuracy vs width", "Accuracy of the trained networks (test and train)."),
        _Plot(
            "training_curves",
            "Learning curves",
            "Test accuracy and training loss per epoch (the models table's history_json), mean over the seeds "
            "of each model config with a band of ±1 standard deviation.",
        ),
        _Plot(
            "timeline",
            "Timeline of the cluster's work",
            "Every trial and pair task over time, a band per node and a lane per task running at once.",
        ),
    ]
    makers = {
        "barrier_vs_width": lambda stem: plot_barrier_vs_width(ok["pairs"], stem),
        "barrier_vs_depth": lambda stem: plot_barrier_vs_depth(ok["pairs"], stem),
        "barrier_vs_branch_epoch": lambda stem: plot_barrier_vs_branch_epoch(ok["pairs"], stem),
        "sparsity": lambda stem: plot_sparsity(tables["models"], ok["pairs"], stem),
        "curves": lambda stem: plot_curves(ok["curves"], stem, model_key=model_key, pairs=ok["pairs"]),
        "variance_collapse": lambda stem: plot_variance_collapse(
            ok["layers"], stem, model_key=model_key, pairs=ok["pairs"]
        ),
        "endpoint_accuracy": lambda stem: plot_endpoint_accuracy(tables["models"], stem),
        "training_curves": lambda stem: plot_training_curves(tables["models"], stem),
        "timeline": lambda stem: plot_timeline(tables["models"], tables["pairs"], stem),
    }
    single = {  # an axis with one value: a plot against it would be a category axis of one point
        name: (axis, values[0])
        for name, axis in (("barrier_vs_width", "width"), ("barrier_vs_depth", "depth"))
        if len(values := ok["pairs"][axis].dropna().unique() if not ok["pairs"].empty else []) == 1
    }
    for plot in plots:
        for fmt in PLOT_FORMATS:  # never leave a stale plot of an earlier report beside this one
            (out / f"{plot.name}.{fmt}").unlink(missing_ok=True)
        if plot.name in single:
            axis, value = single[plot.name]
            plot.note = f"not drawn: this sweep has a single {axis} ({format_value(value)}); the table has its barriers"
            continue
        try:
            plot.written = makers[plot.name](out / plot.name)
        except ValueError as error:
            plot.note = f"not drawn: {error}"
        except Exception as error:  # noqa: BLE001 - a broken plot must not lose the rest of the report
            plot.note = f"not drawn: {type(error).__name__}: {error}"

    # summary.md
    md = [f"# Sweep report: {storage.basename(sweep)}", "", f"Sweep: `{sweep}`", ""]
    md += [f"- {line}" for line in [*notes, *missing]] + ([""] if notes or missing else [])
    md += [f"Finished pairs: {n_ok}; failed pairs: {len(failures)}.", ""]
    if tuning.path is not None:
        md += ["## Tuning", "", f"{tuning.trials} trials of `repair-ray tune`; plots and every trial: {PAGE}.", ""]
        md += [to_markdown(overview(tuning))]
    md += ["## Barriers per model config and method", "", "Mean ± 95% CI over n pairs (t-interval); "]
    md[-1] += "reductions are per pair against the same alignment without correction, then averaged.\n"
    if small:
        md += [f"> **Warning:** {_small_cell_warning(n_small, cells)}", ">"]
        md += [f"> - {line}" for line in small] + [""]
    md += [to_markdown(compact), "## Paired differences", "", DIFFERENCES_TEXT, "", to_markdown(compact_diff)]
    md += ["## Trained networks", "", to_markdown(_round(models_summary)), "## Failed pairs", ""]
    md += [to_markdown(failures)]
    (out / "summary.md").write_text("\n".join(md), encoding="utf-8")

    index = out / "index.html"
    index.write_text(
        _html(
            sweep,
            notes,
            missing,
            n_ok,
            compact,
            models_summary,
            failures,
            failed_models,
            plots,
            small=small,
            n_small=n_small,
            cells=cells,
            compact_diff=compact_diff,
            tuning=index_section(tuning),
        ),
        encoding="utf-8",
    )
    return index


def _html(
    sweep,
    notes,
    missing,
    n_ok,
    compact,
    models_summary,
    failures,
    failed_models,
    plots,
    *,
    small,
    n_small,
    cells,
    compact_diff,
    tuning,
) -> str:
    e = html.escape
    now = _dt.datetime.now().isoformat(timespec="seconds")
    parts = [
        *head(f"repair-ray report: {storage.basename(sweep)}"),
        f"<h1>Sweep report: {e(storage.basename(sweep))}</h1>",
        f"<p>Sweep <code>{e(sweep)}</code>, report written {e(now)}. Finished pairs: {n_ok}; "
        f"failed pairs: {len(failures)}; failed networks: {len(failed_models)}.</p>",
    ]
    if notes or missing:
        parts.append("<ul>" + "".join(f'<li class="note">{e(line)}</li>' for line in [*notes, *missing]) + "</ul>")
    parts += tuning  # the search before the study: first
    parts += [
        "<h2>Barriers per model config and method</h2>",
        "<p>Mean ± 95% confidence interval over n pairs (Student t; empty for fewer than 2 pairs). "
        "Reductions: <code>(B_aligned − B_corrected) / B_aligned</code> per pair, then averaged, in percent. "
        "Endpoint accuracy: the mean accuracy of the two trained networks of each pair. "
        'Every column (the intervals\' bounds too): <a href="summary.csv">summary.csv</a>; Markdown: '
        '<a href="summary.md">summary.md</a>.</p>',
    ]
    if small:
        items = "".join(f"<li>{e(line)}</li>" for line in small)
        listed = (
            f"<ul>{items}</ul>"
            if len(small) <= 12
            else f"<details><summary>the cells</summary><ul>{items}</ul></details>"
        )
        parts.append(
            f'<div class="warning"><strong>Warning:</strong> {e(_small_cell_warning(n_small, cells))}{listed}</div>'
        )
    parts += [
        html_table(compact),
        "<h2>Paired differences</h2>",
        f'<p>{e(DIFFERENCES_TEXT)} Every column: <a href="paired_differences.csv">paired_differences.csv</a>.</p>',
        html_table(compact_diff),
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
    parts += ["<h2>Trained networks</h2>", html_table(_round(models_summary))]
    parts += ["<h2>Failed pairs</h2>", "<p>Counted in the summary's <code>failed</code> column, never plotted.</p>"]
    parts += [html_table(failures)]
    if not failed_models.empty:
        cols = [c for c in ("model_key", "seed", "status", "error") if c in failed_models.columns]
        parts += ["<h2>Failed networks</h2>", html_table(failed_models[cols])]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
