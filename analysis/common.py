"""What the scripts beside this file share: their command line, a sweep's ok pairs, mean ± 95% CI.

The scripts import it as ``from common import ...`` (running ``python analysis/<script>.py`` puts
this folder on ``sys.path``); copy it along with a script you copy elsewhere.

Error bars are the report's: the half-width of the 95% Student-t interval of the mean over pairs
(:func:`repair_ray.report.intervals.ci95`, NaN below 2 values), so a script's plot and the
report's agree. It is imported from ``repair_ray.report.intervals``, the report's intervals
alone, without its plotting and page code.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pandas as pd

import repair_ray
from repair_ray.report.intervals import ci95, clustered_aggregate

METRIC = ("--metric", {"default": "barrier_test_loss", "help": "any column of the pairs table"})
"""The ``--metric`` option of :func:`parse_args`: the column of the pairs table to plot."""


def parse_args(doc: str, out: str, *options: tuple[str, dict]) -> argparse.Namespace:
    """The command line of a script: the sweep folder, ``--out`` (default ``out``), then ``options``.

    ``doc`` is the script's docstring (its first line describes the command); each option is
    ``(flag, keyword arguments of argparse's add_argument)``.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("sweep", help="the sweep folder, e.g. runs/quickstart (or s3://bucket/prefix/name)")
    parser.add_argument("--out", default=out, help="image to write (.png, .svg, .pdf)")
    for flag, kwargs in options:
        parser.add_argument(flag, **kwargs)
    return parser.parse_args()


def load_ok_pairs(sweep: str) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """The tables of ``sweep`` and its ``ok`` pairs (failed pairs have no barriers).

    Exits with a message when no pair has finished yet.
    """
    tables = repair_ray.load_tables(sweep)
    pairs = tables["pairs"][tables["pairs"]["status"] == "ok"]
    if pairs.empty:
        raise SystemExit(f"{sweep}: no finished pairs yet")
    return tables, pairs


def mean_ci95(frame: pd.DataFrame, keys: Sequence[str], column: str) -> pd.DataFrame:
    """``mean``, ``std`` (ddof 1), ``count`` and ``ci95`` of ``column`` per group of ``keys``, one row a group.

    ``ci95`` is the half-width of the 95% t-interval of the mean, the report's (NaN for fewer than 2 values).
    """
    stats = frame.groupby(list(keys))[column].agg(["mean", "std", "count"]).reset_index()
    stats["ci95"] = ci95(stats["std"], stats["count"])
    return stats


def trunk_mean_ci95(frame: pd.DataFrame, keys: Sequence[str], column: str) -> pd.DataFrame:
    """:func:`mean_ci95` with trunks as the unit, for the children of stability and IMP studies.

    Pairs (or children) of one trunk share its first epochs: they are one observation, not
    independent ones. ``mean`` and ``ci95`` are over the trunks' means of ``column`` (each trunk
    averaged first, :func:`repair_ray.report.intervals.clustered_aggregate`), or over the rows of
    the only trunk where a group has one (an interval for that trunk alone); ``count`` is the rows
    and ``trunks`` the trunks of each group.
    """
    found = clustered_aggregate(frame, keys, [column], "trunk_seed")
    stats = pd.DataFrame(
        {
            "mean": found[f"{column}_mean"],
            "ci95": found[f"{column}_ci95"],
            "count": frame[frame["trunk_seed"].notna()].groupby(list(keys), dropna=False)[column].count(),
            "trunks": found["clusters"],
        }
    )
    return stats.reset_index()


def draw_methods(ax, stats: pd.DataFrame, x: str) -> None:
    """A line per align + correction of ``stats`` (of :func:`mean_ci95`): mean vs ``x``, ± 95% CI error bars.

    Corrected methods are dashed; a point with no interval (a single pair) has no error bar.
    """
    for (align, correction), line in stats.groupby(["align", "correction"]):
        ax.errorbar(
            line[x],
            line["mean"],
            yerr=line["ci95"].fillna(0),
            marker="o",
            capsize=3,
            linestyle="--" if correction != "none" else "-",
            label=f"{align} + {correction}",
        )


def save(fig, out: str) -> None:
    """Lay out ``fig``, write it to ``out`` (the format from its suffix) and say so."""
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")
