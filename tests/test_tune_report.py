"""The report's tuning page (issue 32): the metric against each tuned value, the learning curves with
the trials stopped early apart, and every trial best first, from a ``recipes`` table written by hand."""

from __future__ import annotations

import datetime
import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from repair_ray import report
from repair_ray.cli import main
from repair_ray.io.tables import table_file, write_rows
from repair_ray.report.tuning import key_scale, tuning_experiments

from .test_report import assert_png, assert_svg, write_sweep

NARROW, WIDE = "mlp-w8-d2-none-aaaa", "mlp-w16-d2-none-bbbb"
T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def trial(model_key, tune_key, trial_id, sampled, curve, *, status="ok", best=False, max_epochs=4, minutes=0):
    """One ``recipes`` row whose history is ``curve`` (val_acc per epoch; None: a non-finite epoch)."""
    width = 8.0 if model_key == NARROW else 16.0
    history = [{"epoch": float(i)} | ({} if v is None else {"val_acc": v}) for i, v in enumerate(curve, 1)]
    value = curve[-1] if status == "ok" else math.nan
    return {
        "sweep": "tuned",
        "model_key": model_key,
        "tune_key": tune_key,
        "trial_id": trial_id,
        "arch": "mlp",
        "dataset": "synthetic",
        "width": width,
        "depth": 2,
        "norm": "none",
        "grid": 0,
        "sampled_json": json.dumps(sampled),
        "metric": "val_acc",
        "mode": "max",
        "value": value,
        "epochs": len(curve),
        "max_epochs": max_epochs,
        "stopped_early": status == "ok" and len(curve) < max_epochs,
        "history_json": json.dumps(history),
        "scheduler": "asha",
        "status": status,
        "error": "RuntimeError: worker died" if status == "error" else None,
        "best": best,
        "finished_at": T0 + datetime.timedelta(minutes=minutes),
    }


def write_recipes(root: Path) -> Path:
    """Two model configs tuned: the narrow one twice (an older tune with other settings, then the
    newest with every outcome), the wide one once over a narrow linear range."""
    newest = [
        trial(NARROW, "new", "n1", {"lr": 0.01, "optimizer": "sgd"}, [0.4, 0.5, 0.55, 0.6], minutes=10),
        trial(NARROW, "new", "n2", {"lr": 0.1, "optimizer": "adam"}, [0.5, 0.7, 0.75, 0.8], best=True, minutes=10),
        trial(NARROW, "new", "n3", {"lr": 1e-5, "optimizer": "sgd"}, [0.3], minutes=10),
        trial(NARROW, "new", "n4", {"lr": 1e-6, "optimizer": "adam"}, [0.25], minutes=10),
        trial(NARROW, "new", "n5", {"lr": 3.0, "optimizer": "sgd"}, [0.2, None], status="diverged", minutes=10),
        trial(NARROW, "new", "n6", {"lr": 0.5, "optimizer": "adam"}, [], status="error", minutes=10),
        trial(NARROW, "new", "n7", {"lr": 0.02, "optimizer": "adam"}, [0.6, 0.9], minutes=10),  # stopped, yet higher
    ]
    older = [
        trial(NARROW, "old", "o1", {"lr": 0.05}, [0.5, 0.6, 0.6, 0.65], best=True, minutes=1),
        trial(NARROW, "old", "o2", {"lr": 0.07}, [0.5, 0.55, 0.6, 0.62], minutes=1),
    ]
    wide = [
        trial(WIDE, "wide", "w1", {"lr": 0.05}, [0.6, 0.7], max_epochs=2, minutes=5),
        trial(WIDE, "wide", "w2", {"lr": 0.1}, [0.65, 0.75], max_epochs=2, best=True, minutes=5),
        trial(WIDE, "wide", "w3", {"lr": 0.2}, [0.6, 0.72], max_epochs=2, minutes=5),
    ]
    for name, rows in (("new", newest), ("old", older), ("wide", wide)):
        write_rows(table_file(str(root), "recipes", f"2026-{name}"), "recipes", rows)
    return root


class _Tables(HTMLParser):
    """The cells of every ``<table>`` of a page, row by row (the header row first)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def page_tables(path: Path) -> list[pd.DataFrame]:
    parser = _Tables()
    parser.feed(path.read_text())
    return [pd.DataFrame(rows[1:], columns=rows[0]) for rows in parser.tables]


def test_a_sweep_that_is_only_tuned_gets_a_report_with_its_tuning_page(tmp_path):
    root = write_recipes(tmp_path / "tuned")  # no sweep.yaml, no models, no pairs: `tune` before `run`
    result = CliRunner().invoke(main, ["report", str(root)])
    assert result.exit_code == 0, result.output
    out = root / "report"
    assert "tuning.html" in result.output
    index = (out / "index.html").read_text()
    assert '<a href="tuning.html">' in index and "tuned but not run yet" in index
    assert "the recipes table" not in index  # the tune is there; the other tables are still to come
    assert "the models table has no rows yet" in index and "the pairs table has no rows yet" in index
    assert "## Tuning" in (out / "summary.md").read_text()

    page = (out / "tuning.html").read_text()
    for key, described in ((NARROW, "mlp, width 8, depth 2"), (WIDE, "mlp, width 16, depth 2")):
        assert key in page and described in page
    for name in (f"{NARROW}-new", f"{WIDE}-wide"):
        for kind in ("values", "curves"):
            assert_png(out / f"tuning-{name}-{kind}.png")
            assert_svg(out / f"tuning-{name}-{kind}.svg")
            assert f'<img src="tuning-{name}-{kind}.png"' in page
    # the narrow config's newest tune only: its older tune (other settings) is named, not shown
    assert f"{NARROW}-old" not in page and not (out / f"tuning-{NARROW}-old-values.png").exists()
    assert "1 earlier tune(s)" in page

    overview, narrow, wide = page_tables(out / "tuning.html")
    assert list(overview["model key"]) == [NARROW, WIDE]
    assert overview["chosen recipe"][0].startswith("lr=0.1, optimizer=adam: val_acc 0.8000 after 4 epoch(s)")
    # best first: the chosen trial, then complete trials by value, stopped early by value (n7 reached 0.9
    # in 2 epochs: not comparable with 4), then diverged, then failed
    assert list(narrow["trial"]) == ["n2", "n1", "n7", "n3", "n4", "n5", "n6"]
    assert list(narrow["best"]) == ["best", "", "", "", "", "", ""]
    assert list(narrow["stopped early"]) == ["", "", "yes", "yes", "yes", "", ""]
    assert list(narrow["status"]) == ["ok"] * 5 + ["diverged", "error"]
    assert list(narrow["epochs"])[:3] == ["4 of 4", "4 of 4", "2 of 4"]
    assert list(narrow["val_acc"]) == ["0.8000", "0.6000", "0.9000", "0.3000", "0.2500", "", ""]
    assert narrow["error"].iloc[-1] == "RuntimeError: worker died"
    assert list(wide["trial"]) == ["w2", "w3", "w1"] and "error" not in wide.columns
    csv = pd.read_csv(out / "tuning.csv")
    assert list(csv["trial_id"]) == [*narrow["trial"], *wide["trial"]] and list(csv["rank"][:3]) == [1, 2, 3]

    # the figures say what they mark (SVG text stays text): lr spans six decades, the wide range one
    values = (out / f"tuning-{NARROW}-new-values.svg").read_text()
    assert "lr (log scale)" in values and "optimizer" in values and "adam" in values
    assert "stopped early" in values and "diverged (no value)" in values and "best: lr=0.1, optimizer=adam" in values
    assert "log scale" not in (out / f"tuning-{WIDE}-wide-values.svg").read_text()
    curves = (out / f"tuning-{NARROW}-new-curves.svg").read_text()
    assert "stopped early" in curves and "the rungs where trials were stopped: 1, 2" in curves
    assert "3 stopped early" in curves and "1 diverged" in curves and "1 error" in curves


def test_every_tune_is_shown_with_keys_all_and_the_page_goes_with_its_rows(tmp_path):
    root = write_recipes(tmp_path / "tuned")
    page = report.write_report(root, keys="all").parent / "tuning.html"
    text = page.read_text()
    assert f'id="{NARROW}-new"' in text and f'id="{NARROW}-old"' in text and "earlier tune" not in text
    assert text.index(f'id="{NARROW}-new"') < text.index(f'id="{NARROW}-old"') < text.index(f'id="{WIDE}-wide"')

    shutil.rmtree(root / "tables" / "recipes")  # a report of the same folder without them: no stale page
    index = report.write_report(root, keys="all")
    assert not page.exists() and not list(index.parent.glob("tuning*"))
    assert "tuning.html" not in index.read_text() and "Tuning" not in index.read_text()


def test_a_run_sweep_with_recipes_links_its_tuning_page_beside_the_study(tmp_path):
    root = write_sweep(tmp_path / "study", configs=[(NARROW, 8.0, 2)], failed=None)
    write_recipes(root)
    index = report.write_report(root)
    text = index.read_text()
    assert '<a href="tuning.html">' in text and "tuned but not run yet" not in text
    assert text.index("<h2>Tuning</h2>") < text.index("<h2>Barriers per model config and method</h2>")
    assert (index.parent / "tuning.html").is_file() and (
        index.parent / "curves.png"
    ).is_file()  # the study's own plots too


def test_a_tune_without_any_value_still_gets_its_table_and_says_why_no_plot(tmp_path):
    rows = [
        trial(NARROW, "bad", "b1", {"lr": 5.0}, [None], status="diverged"),
        trial(NARROW, "bad", "b2", {"lr": 9.0}, [], status="error"),
    ]
    write_rows(table_file(str(tmp_path / "bad"), "recipes", "x"), "recipes", rows)
    path = report.write_report(tmp_path / "bad").parent / "tuning.html"
    page = path.read_text()
    assert "not drawn: no trial of" in page and "no recipe: no trial trained every epoch ok" in page
    _, trials = page_tables(path)
    assert list(trials["trial"]) == ["b1", "b2"] and list(trials["status"]) == ["diverged", "error"]


@pytest.mark.parametrize(
    ("values", "scale"),
    [
        ([1e-6, 0.5, 0.01], "log"),  # loguniform: more than a decade
        ([0.05, 0.2, 0.1], "linear"),
        ([32, 64, 128], "linear"),  # batch sizes: within a decade
        ([0.0, 0.1, 1.0], "linear"),  # a zero: no log axis
        (["sgd", "adam"], "categorical"),
        ([True, False], "categorical"),
        ([None, 0.1], "categorical"),
    ],
)
def test_each_tuned_key_gets_the_axis_its_values_need(values, scale):
    assert key_scale("key", values).scale == scale


def test_the_newest_tune_of_each_model_config_is_the_one_that_finished_last(tmp_path):
    root = write_recipes(tmp_path / "tuned")
    from repair_ray import load_tables

    recipes = load_tables(root)["recipes"]
    shown = [(e.model_key, e.tune_key, e.older_tunes) for e in tuning_experiments(recipes)]
    assert shown == [(NARROW, "new", 1), (WIDE, "wide", 0)]
    assert len(tuning_experiments(recipes, every=True)) == 3
    assert tuning_experiments(recipes.iloc[0:0]) == []
