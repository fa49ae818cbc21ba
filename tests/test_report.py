"""Summaries, plots, the report and the analysis/ scripts, on small hand-made tables of known values."""

from __future__ import annotations

import io
import math
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy import stats

from repair_ray import load_tables, report
from repair_ray.cli import main
from repair_ray.io.tables import table_file, write_rows

REPO = Path(__file__).resolve().parents[1]
T_975_2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom (from a t table)
T_975_1 = 12.706204736174707  # ... with 1 degree of freedom
# the scripts import this checkout's repair_ray (not another installed copy)
SCRIPT_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

CONFIGS = [  # model_key, width, depth
    ("mlp-w8-d1-none-aaaa", 8.0, 1),
    ("mlp-w16-d1-none-bbbb", 16.0, 1),
    ("mlp-w8-d2-none-cccc", 8.0, 2),
    ("mlp-w16-d2-none-dddd", 16.0, 2),
]
SEED_PAIRS = [(0, 1), (0, 2), (1, 2)]
METHODS = [("none", "none"), ("none", "repair"), ("weight", "none"), ("weight", "repair")]
FAILED = ("mlp-w8-d2-none-cccc", 1, 2)  # this pair failed

# barrier_test_loss per pair (in SEED_PAIRS order) where the tests check hand-computed numbers
KNOWN = {
    ("mlp-w8-d1-none-aaaa", "none", "none"): [3.0, 3.0, 6.0],
    ("mlp-w8-d1-none-aaaa", "none", "repair"): [3.0, 1.5, 3.0],
    ("mlp-w8-d1-none-aaaa", "weight", "none"): [1.0, 2.0, 4.0],
    ("mlp-w8-d1-none-aaaa", "weight", "repair"): [0.5, 1.0, 1.0],
    ("mlp-w16-d1-none-bbbb", "weight", "none"): [0.0, 1.0, 2.0],  # a pair without barrier once aligned
    ("mlp-w16-d1-none-bbbb", "weight", "repair"): [0.2, 0.5, 0.5],  # ... that REPAIR gives one: -inf unguarded
}
FACTOR = {("none", "none"): 2.0, ("none", "repair"): 1.5, ("weight", "none"): 1.0, ("weight", "repair"): 0.5}


def barrier(key: str, width: float, depth: int, align: str, correction: str, i: int) -> float:
    if (key, align, correction) in KNOWN:
        return KNOWN[(key, align, correction)][i]
    # elsewhere: falls with width, rises with depth, lower with alignment and with REPAIR
    return depth * 16 / width * FACTOR[(align, correction)] + 0.1 * i


def write_sweep(root: Path, configs=CONFIGS, seed_pairs=SEED_PAIRS, failed=FAILED, in_flight=None) -> Path:
    """A sweep folder of tables only (no sweep.yaml, no checkpoints), one file per model / pair."""
    for key, width, depth in configs:
        desc = {"sweep": root.name, "model_key": key, "arch": "mlp", "dataset": "mnist", "width": width}
        desc.update(depth=depth, norm="none")
        for seed in range(3):
            acc = 0.9 + 0.01 * seed
            row = {**desc, "seed": seed, "epochs": 2, "test_acc": acc, "train_acc": acc + 0.05, "test_loss": 0.3}
            write_rows(table_file(str(root), "models", f"{key}__{seed}"), "models", [{**row, "status": "ok"}])
        for i, (a, b) in enumerate(seed_pairs):
            ident = {**desc, "seed_a": a, "seed_b": b}
            stem = f"{key}__{a}-{b}"
            if (key, a, b) == failed:
                rows = [
                    {**ident, "align": al, "correction": co, "status": "failed", "error": "CheckpointError: corrupt"}
                    for al, co in METHODS
                ]
                write_rows(table_file(str(root), "pairs", stem), "pairs", rows)
                continue
            pairs, curves, layers = [], [], []
            for align, correction in METHODS:
                loss = barrier(key, width, depth, align, correction, i)
                m = {"seed_a": a, "seed_b": b, "align": align, "correction": correction}
                pairs.append(
                    {
                        **ident,
                        **m,
                        "barrier_test_loss": loss,
                        "barrier_test_error": loss / 10,
                        "barrier_train_loss": loss + 0.1,
                        "barrier_train_error": loss / 10,
                        "midpoint_barrier_test_loss": 0.8 * loss,
                        "midpoint_test_loss": 0.3 + loss,
                        "midpoint_test_acc": 0.9 - loss / 10,
                        "endpoint_test_acc_a": 0.9 + 0.01 * a,
                        "endpoint_test_acc_b": 0.9 + 0.01 * b,
                        "status": "ok",
                    }
                )
                ids = {"sweep": root.name, "model_key": key, **m}
                for split in ("test", "train"):
                    for alpha, l_value in ((0.0, 0.1), (0.5, 0.1 + loss), (1.0, 0.1)):
                        curves.append({**ids, "split": split, "alpha": alpha, "loss": l_value, "acc": 1 - l_value / 5})
                for layer in range(depth):
                    ratio = 1.0 if correction == "repair" else (0.8 if align == "weight" else 0.6) ** (layer + 1)
                    layers.append({**ids, "layer": f"layers.{layer}.linear", "layer_index": layer, "std_ratio": ratio})
            write_rows(table_file(str(root), "curves", stem), "curves", curves)
            write_rows(table_file(str(root), "layers", stem), "layers", layers)
            if (key, a, b) != in_flight:  # the pairs file is a pair's done marker, written last
                write_rows(table_file(str(root), "pairs", stem), "pairs", pairs)
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """The module's synthetic sweep; read-only (a test that writes into a sweep folder copies it)."""
    return write_sweep(tmp_path_factory.mktemp("sweeps") / "synth")


@pytest.fixture(scope="module")
def summary(sweep) -> pd.DataFrame:
    return report.summarise(load_tables(sweep))


def row(frame: pd.DataFrame, key_width: float, depth: int, align: str, correction: str) -> pd.Series:
    sel = frame[
        (frame["width"] == key_width)
        & (frame["depth"] == depth)
        & (frame["align"] == align)
        & (frame["correction"] == correction)
    ]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 100


def assert_svg(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    assert ET.parse(path).getroot().tag.endswith("svg")


# ----------------------------------------------------------------------------- package


def test_public_names_resolve_and_statistics_need_no_matplotlib(subprocesses):
    assert sorted(report.__all__) == sorted(report._EXPORTS)
    for name in report.__all__:
        assert getattr(report, name) is not None, name
    code = "import sys\nfrom repair_ray.report.statistics import ci95\nassert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ----------------------------------------------------------------------------- loader


def test_load_tables_plain_dtypes_and_old_files_give_nulls(tmp_path):
    root = tmp_path / "old"
    # a pairs file of an "older version": no depth column, none of the midpoint_barrier_* additions
    old = pa.table(
        {
            "sweep": ["old"],
            "model_key": ["k"],
            "width": [8.0],
            "seed_a": [0],
            "seed_b": [1],
            "align": ["none"],
            "correction": ["none"],
            "barrier_test_loss": [1.5],
            "status": ["ok"],
        }
    )
    (root / "tables" / "pairs").mkdir(parents=True)
    pq.write_table(old, root / "tables" / "pairs" / "k__0-1.parquet")
    write_rows(
        table_file(str(root), "pairs", "k__0-2"),
        "pairs",
        [{"sweep": "old", "model_key": "k", "width": 8.0, "depth": 3, "seed_a": 0, "seed_b": 2, "align": "none"}],
    )
    tables = load_tables(root)
    assert set(tables) == {"models", "pairs", "curves", "layers", "recipes"}
    pairs = tables["pairs"].sort_values("seed_b").reset_index(drop=True)
    assert "midpoint_barrier_test_loss" in pairs.columns and "depth" in pairs.columns  # never dropped
    assert pairs["midpoint_barrier_test_loss"].isna().all()
    assert pairs.loc[0, "barrier_test_loss"] == 1.5 and math.isnan(pairs.loc[0, "depth"])
    assert pairs.loc[1, "depth"] == 3
    # plain dtypes: str for text, int64 for ints without nulls, float64 for ints with nulls; no Categorical
    for name, frame in tables.items():
        for column, dtype in frame.dtypes.items():
            assert not isinstance(dtype, pd.CategoricalDtype), (name, column)
    assert pd.api.types.is_string_dtype(pairs["align"]) and pairs["seed_a"].dtype == np.int64
    assert pairs["depth"].dtype == np.float64  # an int column with a null reads back as float (NaN)
    assert tables["models"].empty and tables["models"]["depth"].dtype == np.int64


# ----------------------------------------------------------------------------- summary


def test_summary_statistics_equal_hand_computed(summary):
    assert len(summary) == 4 * 4
    assert list(summary.columns[: len(report.GROUP_KEYS)]) == list(report.GROUP_KEYS)
    r = row(summary, 8.0, 1, "weight", "none")  # barrier_test_loss 1, 2, 4
    assert r["pairs"] == 3 and r["failed"] == 0 and r["model_keys"] == 1
    mean, std = 7 / 3, math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    assert r["barrier_test_loss_mean"] == pytest.approx(mean)
    assert r["barrier_test_loss_std"] == pytest.approx(std)
    assert r["barrier_test_loss_ci95"] == pytest.approx(T_975_2 * std / math.sqrt(3))
    assert r["barrier_test_error_mean"] == pytest.approx(mean / 10)
    assert r["barrier_train_loss_mean"] == pytest.approx(mean + 0.1)
    assert r["midpoint_barrier_test_loss_mean"] == pytest.approx(0.8 * mean)
    assert math.isnan(r["midpoint_barrier_train_loss_mean"])  # a column without values: NaN, not dropped
    # endpoints (0.9 + 0.01 * seed) of pairs 0-1, 0-2, 1-2: means 0.905, 0.91, 0.915; worst 0.90
    assert r["endpoint_test_acc_mean"] == pytest.approx(0.91)
    assert r["endpoint_test_acc_min"] == pytest.approx(0.90)
    assert r["midpoint_test_acc_mean"] == pytest.approx(0.9 - mean / 10)


def test_summary_counts_failed_pairs_and_ci_needs_two(summary):
    r = row(summary, 8.0, 2, "weight", "repair")  # pair 1-2 failed: 2 * 16 / 8 * 0.5 + 0.1 * i for i = 0, 1
    assert r["pairs"] == 2 and r["failed"] == 1
    assert r["barrier_test_loss_mean"] == pytest.approx(2.05)
    std = math.sqrt(2 * 0.05**2)
    assert r["barrier_test_loss_std"] == pytest.approx(std)
    assert r["barrier_test_loss_ci95"] == pytest.approx(T_975_1 * std / math.sqrt(2))
    for other in summary[~((summary["width"] == 8.0) & (summary["depth"] == 2))].itertuples():
        assert other.failed == 0 and other.pairs == 3


def test_summary_of_single_pairs_has_no_interval(sweep):
    pairs = load_tables(sweep)["pairs"]
    one = report.summarise(pairs[(pairs["seed_a"] == 0) & (pairs["seed_b"] == 1)])
    assert len(one) == 16 and one["pairs"].eq(1).all() and one["failed"].eq(0).all()
    assert one["barrier_test_loss_std"].isna().all() and one["barrier_test_loss_ci95"].isna().all()
    assert one["barrier_test_loss_mean"].notna().all()
    assert math.isnan(report.ci95(2.0, 1)) and report.ci95(1.0, 3) == pytest.approx(T_975_2 / math.sqrt(3))


def test_relative_reduction_is_per_pair_then_averaged(sweep, summary):
    per_pair = report.relative_reduction(load_tables(sweep))
    assert set(per_pair["correction"]) == {"repair"}
    mine = per_pair[(per_pair["model_key"] == "mlp-w8-d1-none-aaaa") & (per_pair["align"] == "weight")]
    assert sorted(mine["rel_reduction_barrier_test_loss"]) == pytest.approx([0.5, 0.5, 0.75])
    r = row(summary, 8.0, 1, "weight", "repair")
    assert r["rel_reduction_barrier_test_loss_mean"] == pytest.approx(7 / 12)  # not 1 - 2.5/7 (ratio of means)
    assert r["rel_reduction_barrier_test_error_mean"] == pytest.approx(7 / 12)
    assert r["rel_reduction_barrier_test_loss_std"] == pytest.approx(np.std([0.5, 0.5, 0.75], ddof=1))
    r = row(summary, 8.0, 1, "none", "repair")  # (3-3)/3, (3-1.5)/3, (6-3)/6
    assert r["rel_reduction_barrier_test_loss_mean"] == pytest.approx(1 / 3)
    assert math.isnan(row(summary, 8.0, 1, "weight", "none")["rel_reduction_barrier_test_loss_mean"])  # baseline
    # a pair whose aligned barrier is 0 gives NaN (never inf) and is left out of the mean
    zero = per_pair[(per_pair["model_key"] == "mlp-w16-d1-none-bbbb") & (per_pair["align"] == "weight")]
    values = zero.sort_values("seed_b")["rel_reduction_barrier_test_loss"].tolist()
    assert math.isnan(values[0]) and not np.isinf(zero["rel_reduction_barrier_test_loss"]).any()
    assert row(summary, 16.0, 1, "weight", "repair")["rel_reduction_barrier_test_loss_mean"] == pytest.approx(0.625)
    # failed pairs take no part
    assert not ((per_pair["model_key"] == FAILED[0]) & (per_pair["seed_a"] == 1) & (per_pair["seed_b"] == 2)).any()


def test_empty_tables_give_empty_frames(tmp_path):
    (tmp_path / "empty").mkdir()
    tables = load_tables(tmp_path / "empty")
    assert report.summarise(tables).empty and "barrier_test_loss_mean" in report.summarise(tables).columns
    assert report.relative_reduction(tables).empty
    assert report.summarise_models(tables).empty and report.failed_pairs(tables).empty


# ----------------------------------------------------------------------------- plots


def test_every_plot_is_a_valid_png_and_svg(sweep, tmp_path):
    ok = report.ok_tables(load_tables(sweep))
    written = [
        *report.plot_barrier_vs_width(ok["pairs"], tmp_path / "width"),
        *report.plot_barrier_vs_depth(ok["pairs"], tmp_path / "depth"),
        *report.plot_curves(ok["curves"], tmp_path / "curves", pairs=ok["pairs"]),
        *report.plot_variance_collapse(ok["layers"], tmp_path / "variance", pairs=ok["pairs"]),
        *report.plot_endpoint_accuracy(ok["models"], tmp_path / "accuracy"),
    ]
    assert len(written) == 10
    for path in written:
        (assert_png if path.suffix == ".png" else assert_svg)(path)
    assert report.default_model_key(ok["pairs"]) == "mlp-w16-d2-none-dddd"  # deepest, then widest
    with pytest.raises(ValueError, match="no ok pairs"):
        report.plot_barrier_vs_width(ok["pairs"].iloc[0:0], tmp_path / "nothing")


def test_learning_curves_draw_each_configs_mean_over_seeds_and_need_a_history(tmp_path):
    import json

    def models_row(key, width, seed, accs, status="ok"):
        history = [
            {"epoch": e + 1, "test_acc": a, "epoch_train_loss": 1.0 / (e + 1 + seed)} for e, a in enumerate(accs)
        ]
        return {
            "model_key": key, "arch": "mlp", "dataset": "mnist", "width": width, "depth": 2, "norm": "none",
            "seed": seed, "status": status, "history_json": json.dumps(history), "imp_round": None,
            "branch_epoch": None, "layer_widths": None,
        }  # fmt: skip

    models = pd.DataFrame(
        [
            models_row("a", 32, 0, [0.5, 0.7]),
            models_row("a", 32, 1, [0.6, 0.9]),
            models_row("b", 128, 0, [0.8, 0.95]),
            models_row("b", 128, 1, [0.1, 0.1], status="failed"),  # failed networks are left out
        ]
    )
    svg = next(p for p in report.plot_training_curves(models, tmp_path / "lc") if p.suffix == ".svg")
    assert_svg(svg)
    text = svg.read_text()
    assert "mlp, width 32, depth 2 (2 seeds)" in text and "mlp, width 128, depth 2 (1 seeds)" in text
    assert_png(svg.with_suffix(".png"))
    # the mean curve of config a passes through (1, 0.55) and (2, 0.8): check it on the figure's data
    import matplotlib.figure

    drawn = {}
    original = matplotlib.figure.Figure.savefig

    def keep_lines(fig, *args, **kwargs):
        drawn.update({ln.get_label(): ln.get_ydata().tolist() for ln in fig.axes[0].get_lines()})
        return original(fig, *args, **kwargs)

    matplotlib.figure.Figure.savefig = keep_lines
    try:
        report.plot_training_curves(models, tmp_path / "again")
    finally:
        matplotlib.figure.Figure.savefig = original
    assert drawn["mlp, width 32, depth 2 (2 seeds)"] == pytest.approx([0.55, 0.8])
    assert drawn["mlp, width 128, depth 2 (1 seeds)"] == pytest.approx([0.8, 0.95])
    with pytest.raises(ValueError, match="no trained network has a learning curve"):
        report.plot_training_curves(models.assign(history_json=None), tmp_path / "none")


def test_the_timeline_draws_seeds_trained_together_as_one_task(tmp_path):
    start, end = pd.Timestamp("2026-11-30 08:00", tz="UTC"), pd.Timestamp("2026-11-30 08:01", tz="UTC")
    models = pd.DataFrame(
        [{"model_key": "a", "seed": s, "started_at": start, "finished_at": end, "node_id": "n1"} for s in range(4)]
        + [
            {
                "model_key": "a",
                "seed": 4,
                "started_at": end,
                "finished_at": end + pd.Timedelta(30, "s"),
                "node_id": "n1",
            }
        ]
    )
    svg = next(p for p in report.plot_timeline(models, pd.DataFrame(), tmp_path / "t") if p.suffix == ".svg")
    assert "Timeline: 2 trials and 0 pair tasks" in svg.read_text()


# ----------------------------------------------------------------------------- report


def test_report_cli_with_failed_pairs(sweep, tmp_path):
    sweep = Path(shutil.copytree(sweep, tmp_path / sweep.name))  # the report goes into the sweep: a copy of it
    result = CliRunner().invoke(main, ["report", str(sweep)])
    assert result.exit_code == 0, result.output
    out = sweep / "report"
    assert f"open {out / 'index.html'}" in result.output
    assert "expected models and pairs unknown" in result.output  # no sweep.yaml beside these tables
    for name in ("barrier_vs_width", "barrier_vs_depth", "curves", "variance_collapse", "endpoint_accuracy"):
        assert_png(out / f"{name}.png")
        assert_svg(out / f"{name}.svg")
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 16 and summary["failed"].sum() == 4 and summary["pairs"].sum() == 16 * 3 - 4
    failed = pd.read_csv(out / "failed_pairs.csv")
    assert failed[["model_key", "seed_a", "seed_b"]].values.tolist() == [list(FAILED)]
    md = (out / "summary.md").read_text()
    assert "| mlp | mnist | none | 8 | 1 | weight | repair | 3 | 0 |" in md and "CheckpointError: corrupt" in md
    assert "| 0.8333 ± 0.7171 (n=3) |" in md  # barrier_test_loss 0.5, 1, 1: the cells state their n
    page = (out / "index.html").read_text()
    for name in ("barrier_vs_width", "barrier_vs_depth", "curves", "variance_collapse", "endpoint_accuracy"):
        assert f'<img src="{name}.png"' in page and f'href="{name}.svg"' in page
    assert "CheckpointError: corrupt" in page and "failed pairs: 1" in page

    bad = CliRunner().invoke(main, ["report", str(sweep), "--out", str(sweep / "r2"), "--model-key", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.output and not (sweep / "r2").exists()


def test_report_on_a_running_sweep_and_an_empty_one(tmp_path):
    # running: one model config, one pair done, one in flight (curves and layers but no pairs file yet)
    root = write_sweep(
        tmp_path / "running",
        configs=CONFIGS[:1],
        seed_pairs=[(0, 1), (0, 2)],
        failed=None,
        in_flight=(CONFIGS[0][0], 0, 2),
    )
    index = report.write_report(root, tmp_path / "running-report", model_key=CONFIGS[0][0], notes=["half done"])
    out = index.parent
    page = index.read_text()
    assert "half done" in page
    # one width and one depth: no plot against either (a category axis of one point), a note instead
    assert (
        "not drawn: this sweep has a single width (8)" in page
        and "not drawn: this sweep has a single depth (1)" in page
    )
    assert not list(out.glob("barrier_vs_*.png")) and not list(out.glob("barrier_vs_*.svg"))
    for name in ("curves", "variance_collapse", "endpoint_accuracy"):
        assert_png(out / f"{name}.png")
    assert pd.read_csv(out / "summary.csv")["pairs"].eq(1).all()  # the in-flight pair is not counted
    assert "mean over 1 pair)" in (out / "curves.svg").read_text()  # nor plotted (SVG text stays text)

    # empty: the sweep folder exists, no table has a row
    (tmp_path / "empty").mkdir()
    index = report.write_report(tmp_path / "empty")
    page = index.read_text()
    assert index == tmp_path / "empty" / "report" / "index.html"
    assert "the pairs table has no rows yet" in page and "not drawn" in page
    assert not list(index.parent.glob("*.png"))
    assert pd.read_csv(index.parent / "summary.csv").empty
    assert (index.parent / "summary.md").read_text().startswith("# Sweep report")

    with pytest.raises(FileNotFoundError):
        report.write_report(tmp_path / "missing", tmp_path / "r")
    with pytest.raises(ValueError, match="give an output folder"):
        report.write_report("s3://bucket/sweep")


def test_report_warns_of_cells_under_five_pairs_and_shows_paired_differences(tmp_path):
    # width 8: 3 pairs per method; width 16: 6 pairs per method
    root = write_sweep(tmp_path / "seeds", configs=CONFIGS[2:3], failed=None)
    six = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    write_sweep(root, configs=CONFIGS[3:4], seed_pairs=six, failed=None)
    index = report.write_report(root)
    page = index.read_text()
    assert "intervals over fewer than 5 pairs say little" in page
    warning = page.split('<div class="warning">')[1].split("</div>")[0]
    assert "4 of 8 cells" in warning
    # one line per model config and pair count, not one per cell
    assert warning.count("<li>") == 1
    assert "<li>mlp on mnist, norm none, width 8, depth 2: 3 pairs (every method)</li>" in warning
    assert "width 16" not in warning
    md = (index.parent / "summary.md").read_text()
    assert (
        "> - mlp on mnist, norm none, width 8, depth 2: 3 pairs (every method)" in md and "width 16, depth 2:" not in md
    )
    # paired differences: each correction against none, each alignment against none, per model config
    assert "<h2>Paired differences</h2>" in page and "## Paired differences" in md
    diff = pd.read_csv(index.parent / "paired_differences.csv")
    assert sorted(diff.groupby("width")["n"].unique().map(list).tolist()) == [[3], [6]]
    assert set(zip(diff["a"], diff["b"], strict=True)) == {
        ("none/repair", "none/none"),
        ("weight/repair", "weight/none"),
        ("weight/none", "none/none"),
        ("weight/repair", "none/repair"),
    }
    assert (diff["barrier_test_loss_diff_high"] < 0).all() and (diff["barrier_test_loss_a_better"] == diff["n"]).all()
    # many tests, one table: q values over all of its p values of a test, a verdict from them, and the page says so
    for test in ("t", "sign"):
        p = diff[[f"{c}_p_{test}" for c in report.PLOT_METRICS]].to_numpy().ravel()
        q = diff[[f"{c}_q_{test}" for c in report.PLOT_METRICS]].to_numpy().ravel()
        np.testing.assert_allclose(q, stats.false_discovery_control(p), rtol=1e-12)
    text = " ".join(page.split())
    assert "false discovery rate (Benjamini-Hochberg" in text and "every row and column of this table" in text
    assert "q value is at most 0.05" in text and "is not counted" in text
    assert "test_loss q (t)" in page and "test_loss verdict" in page and "false discovery rate" in md

    # six pairs everywhere: no warning
    only_six = write_sweep(tmp_path / "six", configs=CONFIGS[3:4], seed_pairs=six, failed=None)
    assert "say little" not in report.write_report(only_six).read_text()


# ----------------------------------------------------------------------------- analysis/ scripts


def run_script(name: str, sweep: Path, out: Path) -> str:
    """``python analysis/<name>.py SWEEP --out OUT`` as a user runs it (its folder on sys.path); its stdout."""
    result = subprocess.run(
        [sys.executable, str(REPO / "analysis" / f"{name}.py"), str(sweep), "--out", str(out)],
        cwd=out.parent,
        env={**SCRIPT_ENV, "MPLBACKEND": "Agg"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def printed_table(stdout: str) -> pd.DataFrame:
    """The statistics table a script prints before its ``wrote ...`` line."""
    return pd.read_csv(io.StringIO(stdout.split("\nwrote ")[0]), sep=r"\s+")


def test_analysis_scripts_plot_the_reports_interval(sweep, summary, tmp_path, mnist, subprocesses):
    """Each script writes its PNG, and its error bars are the report's 95% t-interval (not ± SEM)."""
    printed = {}
    for script in ("barrier_vs_width", "barrier_vs_depth", "variance_collapse"):
        out = tmp_path / f"{script}.png"
        stdout = run_script(script, sweep, out)
        assert f"wrote {out}" in stdout
        assert_png(out)
        assert "activation" not in stdout and "weight     repair" in stdout
        printed[script] = printed_table(stdout)

    # by hand: barrier_test_loss 1, 2, 4 at width 8, depth 1, weight + none (an SEM would be std / sqrt(3))
    width = printed["barrier_vs_width"].set_index(["depth", "width", "align", "correction"])
    r = width.loc[(1, 8.0, "weight", "none")]
    std = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    assert r["mean"] == pytest.approx(7 / 3, rel=1e-5) and r["count"] == 3
    assert r["ci95"] == pytest.approx(T_975_2 * std / math.sqrt(3), rel=1e-5)
    # every group, the failed pair's (2 pairs) included: the same numbers as the report's summary
    for script in ("barrier_vs_width", "barrier_vs_depth"):
        merged = printed[script].merge(summary, on=["width", "depth", "align", "correction"], validate="1:1")
        assert len(merged) == len(summary) == 16 and set(merged["count"]) == {2, 3}
        np.testing.assert_allclose(merged["mean"], merged["barrier_test_loss_mean"], rtol=1e-5)
        np.testing.assert_allclose(merged["ci95"], merged["barrier_test_loss_ci95"], rtol=1e-5, atol=1e-6)
    # variance collapse: of the deepest, then widest, config; its std ratios are the same on every pair
    collapse = printed["variance_collapse"]
    assert len(collapse) == 4 * 2 and (collapse["ci95"] == 0).all() and (collapse["count"] == 3).all()


def test_method_table_diff_is_paired_per_model_config(sweep, mnist, subprocesses):
    result = subprocess.run(
        [sys.executable, str(REPO / "analysis" / "method_table.py"), str(sweep), "--diff", "repair", "none"],
        env=SCRIPT_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {
        tuple(c.strip() for c in line.split("|")[1:4]): line for line in result.stdout.splitlines() if "/none |" in line
    }
    # weight: repair 0.5, 1, 1 against none 1, 2, 4 on the same pairs: -0.5, -1, -3
    line = rows[("weight/repair − weight/none", "mlp-w8-d1-none-aaaa", "3")]
    half = T_975_2 * np.std([-0.5, -1, -3], ddof=1) / math.sqrt(3)
    assert f"-1.500 [{-1.5 - half:+.3f}, {-1.5 + half:+.3f}]" in line and "3/3 better" in line
    assert "0.25 (sign)" in line  # both signs of 3 pairs: 2 / 2**3
    assert ("weight/repair − weight/none", "mlp-w8-d2-none-cccc", "2") in rows  # its failed pair left out
    assert len(rows) == 2 * 4  # per align and model config, never pooled


def test_instability_and_imp_tables_take_the_trunk_as_the_unit(tmp_path, mnist, subprocesses):
    """Pairs of children of one trunk are one observation: 2 trunks give an interval over 2, not over their pairs."""
    half = T_975_1 * math.sqrt(2) / math.sqrt(2)  # std of (1, 3) is sqrt(2); n = 2 trunks
    for script, imp in (("instability_table", {}), ("imp_table", {"imp_round": 1, "sparsity": 0.5})):
        root = tmp_path / script
        desc = {"sweep": root.name, "arch": "mlp", "dataset": "mnist", "width": 8.0, "depth": 2, "norm": "none"}
        for trunk, loss in ((0, 1.0), (1, 3.0)):  # six children per trunk, 15 pairs, identical within a trunk
            key = {"model_key": f"mlp-t{trunk}-e2", "trunk_seed": trunk, "branch_epoch": 2, **imp}
            for seed in range(6):
                row = {**desc, **key, "seed": seed, "epochs": 2, "test_acc": 0.9 + 0.02 * trunk, "train_acc": 0.95}
                row.update(test_loss=0.3, status="ok")
                write_rows(table_file(str(root), "models", f"t{trunk}__{seed}"), "models", [row])
            rows = [
                {**desc, **key, "seed_a": a, "seed_b": b, "align": "none", "correction": "none", "status": "ok"}
                | {"barrier_test_error": loss, "barrier_test_loss": loss, "midpoint_test_acc": 0.5}
                for a in range(6)
                for b in range(a + 1, 6)
            ]
            write_rows(table_file(str(root), "pairs", f"t{trunk}"), "pairs", rows)
        result = subprocess.run(
            [sys.executable, str(REPO / "analysis" / f"{script}.py"), str(root), "--columns", "barrier_test_error"],
            env=SCRIPT_ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        line = next(li for li in result.stdout.splitlines() if li.startswith("| mlp"))
        assert f"2.0000 ± {half:.4f} |" in line and "| 30 |" in line, line
        assert "over trunks" in result.stdout
    acc_half = T_975_1 * math.sqrt(2 * 0.01**2) / math.sqrt(2)  # accuracies 0.90 and 0.92: over 2 trunks
    assert f"0.9100 ± {acc_half:.4f} |" in result.stdout


def test_repair_paper_table_gives_the_plain_variance_ratio_a_verdict_by_the_same_rule():
    """Table 2 of analysis/repair_paper_table.py: a verdict (within a factor of 1.5) for plain as for aligned."""
    sys.path.insert(0, str(REPO / "analysis"))
    try:
        import repair_paper_table as script
    finally:
        sys.path.remove(str(REPO / "analysis"))
    paper = {
        "variance_ratio": {
            "var_ratios_mlp_e50_l7_h128": {"var_ratio_vanilla": [0.5, 0.1], "var_ratio_permute": [0.9, 0.8]}
        }
    }
    pairs = pd.DataFrame([{"model_key": "k", "depth": 8, "width": 128}])
    ours = {("none", "none"): [0.6, 0.2], ("activation", "none"): [0.85, 0.32], ("activation", "repair"): [1.0, 1.0]}
    layers = pd.DataFrame(
        [
            {"model_key": "k", "seed_a": 0, "align": a, "correction": c, "layer_index": i + 1, "mean_var_ratio": v}
            for (a, c), values in ours.items()
            for i, v in enumerate(values)
        ]
    )
    lines = script.variance_table(layers, pairs, paper)
    header = next(li for li in lines if li.startswith("| layer"))
    assert "| plain reproduced? |" in header and "| aligned reproduced? |" in header
    rows = [li for li in lines if li.startswith("| 1 ") or li.startswith("| 2 ")]
    # layer 1: plain 0.6 / 0.5 (x1.2) yes, aligned 0.85 / 0.9 yes; layer 2: plain x2 no, aligned x0.4 no
    assert rows[0] == "| 1 | 0.6 / 0.5 | yes (x1.20) | 0.85 / 0.9 | yes (x0.94) | 1.000 |"
    assert rows[1] == "| 2 | 0.2 / 0.1 | **no** (x2.00) | 0.32 / 0.8 | **no** (x0.40) | 1.000 |"
