"""``repair-ray tune``: tune each model config's recipe with Ray Tune, then print (or write) the best."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

from .app import (
    EXIT_FAILED,
    PLACE,
    allow_import_option,
    config_argument,
    example_option,
    fail,
    load_sweep,
    main,
    num_cpus_option,
    say,
    storage_option,
    take_over_option,
)

if TYPE_CHECKING:
    from ..sweep.config import SweepConfig
    from ..sweep.tune_stage import TunedRecipe

GRID_KNOBS = ("width", "depth", "norm", "init")


@main.command()
@config_argument
@example_option
@storage_option
@click.option(
    "--address",
    help="Ray cluster to join: 'auto' or HOST:PORT. Default: $RAY_ADDRESS when set, else a fresh local Ray.",
)
@num_cpus_option
@allow_import_option
@click.option(
    "--write",
    "write_path",
    type=click.Path(dir_okay=False),
    help="Write a copy of CONFIG with each tuned model config's best recipe in its models[i].train, "
    "ready for `repair-ray run`.",
)
@take_over_option
def tune(
    config_path: str | None,
    example: str | None,
    storage_uri: str | None,
    address: str | None,
    num_cpus: int | None,
    allow_import: tuple[str, ...],
    write_path: str | None,
    take_over: bool,
) -> None:
    """Tune the recipe of every model config in CONFIG over its `tune:` section (Ray Tune), then
    print each best recipe as a models[i] entry (with --write, a config ready to run).

    Trials train on the train split less a held-out validation split (tune.val_samples); the test
    split is never used. A killed tune, run again, finishes without redoing finished trials. Every
    trial is a row of the sweep's `recipes` table. Exit status: 0 when every model config got a
    recipe, 1 when some got none (every trial failed, diverged or was stopped), 2 a bad config (or gs://
    storage without the gcs extra), 3 storage or the cluster cannot be reached, or another run holds
    the sweep, 4 a bug.
    """
    from ..io import storage
    from ..sweep.cluster import connect
    from ..sweep.config import ConfigError
    from ..sweep.lease import Lease, check_supported
    from ..sweep.tune_stage import run_tune_stage

    config = load_sweep(config_path, example, storage_uri, allow_import)
    if config.tune is None:
        fail(f"{config.source}: tune: the config has no tune section (a search space over train keys; docs/tuning.md)")
    PLACE["storage"] = config.root
    check_supported(config.root)  # gs:// without the gcs extra: exit 2, before storage is reached
    storage.check_writable(config.root)
    import ray

    try:
        with Lease(config.root, take_over=take_over, say=say):
            owns_ray = not ray.is_initialized()
            say(f"[tune] {connect(address, num_cpus=num_cpus)}")
            try:
                summary = run_tune_stage(config, say=say)
            finally:
                if owns_ray:
                    ray.shutdown()
    except ConfigError as error:
        fail(str(error))
    # another run holding the sweep (LeaseHeld, LeaseLost) is exit 3, for run, tune and submit alike (app.py)
    say(
        f"[tune] done in {summary.seconds:.0f}s: {summary.trials} trials, {summary.failed} failed; "
        f"rows in {storage.join(config.root, 'tables', 'recipes')}"
    )
    click.echo(best_recipes_text(config, summary.best))
    if write_path is not None:
        Path(write_path).write_text(yaml.safe_dump(tuned_config(config, summary.best), sort_keys=False))
        click.echo(f"\nwritten: {write_path} (run it: repair-ray run {write_path})")
    if summary.untuned:
        keys = ", ".join(t.model_key for t in summary.untuned)
        say(f"[tune] no recipe for {keys}: every trial failed, diverged or was stopped early", err=True)
        sys.exit(EXIT_FAILED)


def _entry(config: SweepConfig, tuned: TunedRecipe) -> dict[str, Any]:
    """The models[i] entry of one tuned model config: the grid's keys with this config's values, and
    its train keys (the grid's own, then the best sampled values)."""
    grid = _single(config.raw["models"][tuned.target.grid], tuned.target.model)
    grid["train"] = {**(grid.get("train") or {}), **tuned.sampled}
    return grid


def _single(grid: dict[str, Any], model: Any) -> dict[str, Any]:
    """A copy of the grid entry ``grid`` naming only ``model``, one of its model configs."""
    entry = copy.deepcopy(grid)
    for knob in GRID_KNOBS:
        if knob in entry:
            value = getattr(model, knob)
            entry[knob] = list(value) if isinstance(value, tuple) else value
    return entry


def best_recipes_text(config: SweepConfig, best: list[TunedRecipe]) -> str:
    """Each best recipe as a models entry to paste into the config, with the metric that chose it."""
    settings = config.tune
    assert settings is not None
    lines = [
        f"\nbest recipes ({settings.metric}, mean of {settings.seeds} seed(s) on {settings.val_samples:,} held-out "
        "training samples):",
        "models:",
    ]
    for tuned in best:
        lines.append(
            f"  # models[{tuned.target.grid}] {tuned.target.model_key}: "
            f"{settings.metric} {tuned.value:.4f} after {tuned.epochs} epoch(s)"
        )
        entry = yaml.safe_dump([_entry(config, tuned)], default_flow_style=None, sort_keys=False, width=1000)
        lines.extend(f"  {line}" for line in entry.strip().splitlines())
    return "\n".join(lines)


def tuned_config(config: SweepConfig, best: list[TunedRecipe]) -> dict[str, Any]:
    """A copy of the config whose tuned grids are split into one entry per model config, each with
    its best recipe; grids that got none (and imported ones) stay as they were. Its ``storage`` is
    where the tune ran (``--storage`` included): the study lives beside its recipes."""
    data = copy.deepcopy(config.raw)
    data["storage"] = config.storage
    by_grid: dict[int, list[TunedRecipe]] = {}
    for tuned in best:
        by_grid.setdefault(tuned.target.grid, []).append(tuned)
    models: list[Any] = []
    for i, grid in enumerate(data["models"]):
        found = by_grid.get(i)
        if not found:
            models.append(grid)
            continue
        models.extend(_entry(config, tuned) for tuned in found)
        tuned_configs = {t.target.model_key for t in found}
        untuned = [
            t for t in _grid_targets(config, i) if t.model_key not in tuned_configs
        ]  # model configs of this grid without a recipe keep the grid's train
        models.extend(_single(grid, target.model) for target in untuned)
    data["models"] = models
    return data


def _grid_targets(config: SweepConfig, grid: int) -> list[Any]:
    from ..sweep.tune_stage import tune_targets

    return [t for t in tune_targets(config) if t.grid == grid]
