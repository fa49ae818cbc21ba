"""Summaries, plots and an HTML report of a sweep's result tables.

Everything here reads the DataFrames of :func:`repair_ray.load_tables` (plain pandas; no torch,
no Ray) and draws with matplotlib's object API (``matplotlib.figure.Figure``, rendered by Agg), so
it works headless and never switches the backend of a notebook that imports it. One job a module;
the numbers import no matplotlib:

- :mod:`.frames`: the tables' columns and the filters every statistic applies (``ok`` rows, order);
- :mod:`.intervals`: intervals of a mean that state their n, and per-group means with them;
- :mod:`.statistics`: the summaries per model config and method (every number above importable
  from here too);
- :mod:`.differences`: two methods compared on the same pairs;
- :mod:`.cells`: tables as text (``mean ± ci (n=N)`` cells);
- :mod:`.plot_data`: what each plot draws, computed from the tables;
- :mod:`.plots`: the figures, drawn from :mod:`.plot_data` only;
- :mod:`.tuning`: the trials of ``repair-ray tune`` (the ``recipes`` table) as the report shows them;
- :mod:`.page`: the report folder (tables and ``index.html``), and :mod:`.tuning_page` its ``tuning.html``.

Rules shared by every function:

- Only ``pairs`` rows with ``status == 'ok'`` enter statistics and plots; failed pairs are
  counted (the summary's ``failed`` column) and listed by the report, never plotted.
  :func:`ok_tables` also restricts ``curves`` and ``layers`` to the (pair, align, correction)
  rows whose ``pairs`` row is ``ok`` (a pair's ``pairs`` file is its done marker).
- A 95% confidence interval is the half-width ``t.ppf(0.975, n - 1) * std / sqrt(n)`` (Student's
  t, sample std with ``ddof=1``, ``n`` = values that are not null); it is NaN for ``n < 2``.
  :func:`interval` also gives a seeded percentile bootstrap, and states its ``n``; cells with fewer
  than :data:`MIN_PAIRS` pairs are flagged by :func:`small_cells` and by the report.
- Two methods are compared on the same pairs (:func:`paired_differences`): per model and
  analysis key, never pooled, only pairs ``ok`` in both. The p values of one table are adjusted
  for the false discovery rate together (:func:`adjust_p_values`: Benjamini-Hochberg, NaN p
  values left out), and a verdict is read from the adjusted ones at :data:`FDR_LEVEL`.
- Empty tables (a sweep that has just started) give empty summaries and skipped plots, never
  an exception.

Public API: :func:`summarise`, :func:`relative_reduction`, :func:`summarise_models`,
:func:`interval`, :func:`paired_differences`, :func:`baseline_differences`, :func:`adjust_p_values`,
:func:`small_cells`, :func:`failed_pairs`, :func:`ok_tables`, :func:`plot_barrier_vs_width`,
:func:`plot_barrier_vs_depth`, :func:`plot_barrier_vs_branch_epoch`, :func:`plot_sparsity`, :func:`plot_curves`,
:func:`plot_variance_collapse`,
:func:`plot_endpoint_accuracy`, :func:`plot_training_curves`, :func:`plot_tuning_values`,
:func:`plot_tuning_curves`, :func:`tuning_experiments`, :func:`write_report`.

The names are loaded on first use (PEP 562): ``from repair_ray.report.statistics import ci95``
imports neither matplotlib nor the page code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "ALIGN_ORDER": ".frames",
    "CORRECTION_ORDER": ".frames",
    "GROUP_KEYS": ".frames",
    "MODEL_KEYS": ".frames",
    "PAIR_ID": ".frames",
    "PLOT_METRICS": ".frames",
    "REDUCTION_COLUMNS": ".frames",
    "barrier_columns": ".frames",
    "better_direction": ".frames",
    "ci95": ".intervals",
    "compact_summary": ".cells",
    "default_model_key": ".frames",
    "failed_pairs": ".statistics",
    "ok_tables": ".frames",
    "relative_reduction": ".statistics",
    "summarise": ".statistics",
    "summarise_models": ".statistics",
    "summarise_over_trunks": ".statistics",
    "clustered_aggregate": ".intervals",
    "DESCRIPTION_KEYS": ".frames",
    "Interval": ".intervals",
    "MIN_PAIRS": ".frames",
    "FDR_LEVEL": ".differences",
    "adjust_p_values": ".differences",
    "baseline_differences": ".differences",
    "compact_differences": ".cells",
    "interval": ".intervals",
    "paired_differences": ".differences",
    "small_cells": ".statistics",
    "PLOT_FORMATS": ".plots",
    "plot_barrier_vs": ".plots",
    "plot_barrier_vs_depth": ".plots",
    "plot_barrier_vs_branch_epoch": ".plots",
    "plot_sparsity": ".plots",
    "plot_barrier_vs_width": ".plots",
    "plot_curves": ".plots",
    "plot_endpoint_accuracy": ".plots",
    "plot_training_curves": ".plots",
    "plot_variance_collapse": ".plots",
    "plot_timeline": ".plots",
    "plot_tuning_curves": ".tuning_plots",
    "plot_tuning_values": ".tuning_plots",
    "to_markdown": ".page",
    "tuning_experiments": ".tuning",
    "write_report": ".page",
}

__all__ = [  # the keys of _EXPORTS, spelled out for linters and type checkers
    "ALIGN_ORDER",
    "CORRECTION_ORDER",
    "DESCRIPTION_KEYS",
    "FDR_LEVEL",
    "GROUP_KEYS",
    "Interval",
    "MIN_PAIRS",
    "MODEL_KEYS",
    "PAIR_ID",
    "PLOT_FORMATS",
    "PLOT_METRICS",
    "REDUCTION_COLUMNS",
    "adjust_p_values",
    "barrier_columns",
    "baseline_differences",
    "better_direction",
    "ci95",
    "clustered_aggregate",
    "compact_differences",
    "compact_summary",
    "default_model_key",
    "failed_pairs",
    "interval",
    "ok_tables",
    "paired_differences",
    "plot_barrier_vs",
    "plot_barrier_vs_depth",
    "plot_barrier_vs_branch_epoch",
    "plot_sparsity",
    "plot_barrier_vs_width",
    "plot_curves",
    "plot_endpoint_accuracy",
    "plot_training_curves",
    "plot_variance_collapse",
    "plot_timeline",
    "plot_tuning_curves",
    "plot_tuning_values",
    "relative_reduction",
    "small_cells",
    "summarise",
    "summarise_models",
    "summarise_over_trunks",
    "to_markdown",
    "tuning_experiments",
    "write_report",
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .cells import compact_differences, compact_summary
    from .differences import FDR_LEVEL, adjust_p_values, baseline_differences, paired_differences
    from .frames import (
        ALIGN_ORDER,
        CORRECTION_ORDER,
        DESCRIPTION_KEYS,
        GROUP_KEYS,
        MIN_PAIRS,
        MODEL_KEYS,
        PAIR_ID,
        PLOT_METRICS,
        REDUCTION_COLUMNS,
        barrier_columns,
        better_direction,
        default_model_key,
        ok_tables,
    )
    from .intervals import Interval, ci95, clustered_aggregate, interval
    from .page import to_markdown, write_report
    from .plots import (
        PLOT_FORMATS,
        plot_barrier_vs,
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
    from .statistics import (
        failed_pairs,
        relative_reduction,
        small_cells,
        summarise,
        summarise_models,
        summarise_over_trunks,
    )
    from .tuning import tuning_experiments
    from .tuning_plots import plot_tuning_curves, plot_tuning_values
