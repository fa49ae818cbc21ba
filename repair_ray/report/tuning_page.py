"""The report's tuning page, ``tuning.html``: the trials of ``repair-ray tune`` (the ``recipes``
table), a section per model config with the metric against each tuned value, the learning curves
(trials stopped early drawn apart) and every trial best first; ``tuning.csv`` holds the same rows.

:func:`write_tuning_page` writes it beside ``index.html``, which links it (:func:`index_section`).
"""

from __future__ import annotations

import datetime as _dt
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..io import storage
from .markup import head, html_table
from .plots import PLOT_FORMATS
from .tuning import Experiment, sampled_text, trials_table, tuning_experiments
from .tuning_plots import plot_tuning_curves, plot_tuning_values

PAGE = "tuning.html"
TABLE = "tuning.csv"


@dataclass
class _Figure:
    kind: str  # "values" or "curves"
    caption: str
    written: list[Path] = field(default_factory=list)
    note: str = ""


@dataclass
class TuningPage:
    """What :func:`write_tuning_page` wrote: the page (None: the sweep has no trial of ``tune``), the
    experiments it shows, and how many other tunes it leaves out (older settings of a config)."""

    path: Path | None
    experiments: list[Experiment]
    every: bool = False
    older_tunes: int = 0
    figures: dict[str, list[_Figure]] = field(default_factory=dict)  # experiment name -> its figures

    @property
    def trials(self) -> int:
        return sum(len(e.trials) for e in self.experiments)


def _remove_stale(out: Path) -> None:
    """The tuning files of an earlier report: never left beside this one's."""
    for path in [out / PAGE, out / TABLE, *(p for fmt in PLOT_FORMATS for p in out.glob(f"tuning-*.{fmt}"))]:
        path.unlink(missing_ok=True)


def write_tuning_page(recipes: pd.DataFrame, out: Path, sweep: str, *, every: bool = False) -> TuningPage:
    """Write ``tuning.html``, ``tuning.csv`` and each experiment's two figures into ``out``.

    ``every``: every tune of each model config (``report --keys all``); else its newest (the tune
    key whose trials finished last: an earlier tune with other settings is another experiment).
    Nothing is written when ``recipes`` has no rows.
    """
    _remove_stale(out)
    experiments = tuning_experiments(recipes, every=every)
    if not experiments:
        return TuningPage(None, [])
    page = TuningPage(out / PAGE, experiments, every, older_tunes=sum(e.older_tunes for e in experiments))
    for experiment in experiments:
        figures = [
            _Figure(
                "values",
                f"{experiment.metric} after each trial's last epoch against each tuned value: complete trials filled, "
                "stopped early hollow grey (a value of fewer epochs), diverged and failed trials crosses beyond the "
                "worst value (they have none), the chosen recipe a star.",
            ),
            _Figure(
                "curves",
                f"{experiment.metric} per epoch of every trial: stopped early grey and dashed, ending at their rung "
                "(a hollow circle), diverged red to their last finite epoch, the chosen recipe thick orange.",
            ),
        ]
        for figure in figures:
            draw = plot_tuning_values if figure.kind == "values" else plot_tuning_curves
            try:
                figure.written = draw(experiment, out / f"tuning-{experiment.name}-{figure.kind}")
            except ValueError as error:
                figure.note = f"not drawn: {error}"
            except Exception as error:  # noqa: BLE001 - a broken plot must not lose the rest of the page
                figure.note = f"not drawn: {type(error).__name__}: {error}"
        page.figures[experiment.name] = figures
    rows = [e.trials.drop(columns=["sampled", "history"]).assign(rank=range(1, len(e.trials) + 1)) for e in experiments]
    pd.concat(rows, ignore_index=True).to_csv(out / TABLE, index=False)
    assert page.path is not None
    page.path.write_text(_html(page, sweep), encoding="utf-8")
    return page


def _chosen(experiment: Experiment) -> str:
    best = experiment.best
    if best is None:
        return "no recipe: no trial trained every epoch ok"
    return (
        f"{sampled_text(best['sampled'])}: {experiment.metric} {best['value']:.4f} after {int(best['epochs'])} "
        f"epoch(s), trial {best['trial_id']}"
    )


def overview(page: TuningPage) -> pd.DataFrame:
    """One row per experiment: its model config, keys, trials by outcome and the chosen recipe."""
    return pd.DataFrame(
        [
            {
                "model config": e.description,
                "model key": e.model_key,
                "tune key": e.tune_key,
                "trials": len(e.trials),
                "stopped early": e.count("stopped early"),
                "diverged or failed": e.count("diverged") + e.count("error"),
                "chosen recipe": _chosen(e),
            }
            for e in page.experiments
        ]
    )


def _html(page: TuningPage, sweep: str) -> str:
    e = html.escape
    now = _dt.datetime.now().isoformat(timespec="seconds")
    parts = [
        *head(f"repair-ray tuning: {storage.basename(sweep)}"),
        f"<h1>Tuning: {e(storage.basename(sweep))}</h1>",
        f'<p><a href="index.html">← the sweep\'s report</a>. Sweep <code>{e(sweep)}</code>, written {e(now)}.</p>',
        "<p>Every trial of <code>repair-ray tune</code> (the <code>recipes</code> table; every column: "
        f'<a href="{TABLE}">{TABLE}</a>). A trial trains a sampled recipe\'s seeds on the training split less a '
        "held-out validation split (the test split is never used) and reports the metric, the mean over its "
        "seeds, after every epoch. The chosen recipe is the best trial that trained every epoch ok. "
        + ("Shown: every tune of each model config." if page.every else "Shown: each model config's newest tune.")
        + "</p>",
    ]
    if page.older_tunes:
        parts.append(
            f'<p class="note">{page.older_tunes} earlier tune(s) of these model configs, with other settings, are '
            "left out (<code>repair-ray report --keys all</code> shows them).</p>"
        )
    parts.append(html_table(overview(page)))
    for experiment in page.experiments:
        parts.append(f'<h2 id="{e(experiment.name)}">{e(experiment.description)}</h2>')
        where = f"models[{experiment.grid}], " if experiment.grid is not None else ""
        parts.append(
            f"<p>{e(where)}model key <code>{e(experiment.model_key)}</code>, tune key "
            f"<code>{e(experiment.tune_key)}</code>; {e(experiment.metric)} ({e(experiment.mode)}), "
            f"{e(experiment.scheduler)}. Chosen: {e(_chosen(experiment))}.</p>"
        )
        for figure in page.figures.get(experiment.name, []):
            png = next((p for p in figure.written if p.suffix == ".png"), None)
            if png is not None:
                parts.append(
                    f'<figure><img src="{e(png.name)}" alt="{e(figure.kind)}"><figcaption>{e(figure.caption)} '
                    f'(<a href="{e(png.with_suffix(".svg").name)}">SVG</a>)</figcaption></figure>'
                )
            if figure.note:
                parts.append(f'<p class="note">{e(figure.note)}</p>')
        parts += ["<h3>Trials, best first</h3>", html_table(trials_table(experiment))]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def index_section(page: TuningPage) -> list[str]:
    """The lines of ``index.html`` that show the tunes and link the tuning page (none without one)."""
    if page.path is None:
        return []
    return [
        "<h2>Tuning</h2>",
        f"<p>{page.trials} trials of <code>repair-ray tune</code> over {len(page.experiments)} model config(s): "
        f'the metric against each tuned value, the learning curves and every trial on <a href="{PAGE}">{PAGE}</a>.</p>',
        html_table(overview(page)),
    ]
