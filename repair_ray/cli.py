"""``repair-ray``: run, validate and inspect sweeps."""

from __future__ import annotations

import sys
import warnings

import click

from . import storage
from .sweep.config import ConfigError, load_config, sample_forward_passes


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _load(config_path: str, storage_uri: str | None):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            config = load_config(config_path, storage_override=storage_uri)
        except ConfigError as error:
            _fail(str(error))
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    return config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="repair-ray")
def main() -> None:
    """Sweeps of linear mode connectivity: train seeds, align and repair pairs, measure barriers."""


@main.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--storage", "storage_uri", help="Override the config's storage (a path, s3://... or gs://...).")
def validate(config_path: str, storage_uri: str | None) -> None:
    """Check CONFIG and print the expanded plan, without starting Ray."""
    config = _load(config_path, storage_uri)
    click.echo(f"sweep {config.name} -> {config.root}")
    click.echo(f"dataset: {config.dataset.name} {config.dataset.options or ''}".rstrip())
    click.echo(f"models to train: {config.n_trials} ({len(config.models)} model configs x seeds)")
    for plan in config.models:
        m = plan.model
        click.echo(
            f"  {plan.model_key}: {m.arch} width={m.width:g} depth={m.depth} norm={m.norm} "
            f"seeds={list(plan.seeds)} pairs={len(plan.pairs)}"
        )
    s = config.pair_settings
    click.echo(f"pairs: {config.n_pairs}; align {list(s.aligns)} x correction {list(s.corrections)}")
    click.echo(f"alphas: {len(s.alphas)} points from {s.alphas[0]:g} to {s.alphas[-1]:g}")
    n_train, n_test = _split_sizes(config)
    if n_train is not None:
        passes = sample_forward_passes(config, n_train, n_test)
        click.echo(f"pair stage forward passes: {passes:,} samples ({passes / max(config.n_pairs, 1):,.0f} per pair)")
    click.echo(
        f"resources: train {config.resources.train.cpu:g} CPU / {config.resources.train.gpu:g} GPU per trial, "
        f"pair {config.resources.pair.cpu:g} CPU / {config.resources.pair.gpu:g} GPU per task"
    )


def _split_sizes(config) -> tuple[int | None, int]:
    known = {
        "mnist": (60000, 10000),
        "fashion_mnist": (60000, 10000),
        "cifar10": (50000, 10000),
        "cifar100": (50000, 10000),
    }
    if config.dataset.name in known:
        return known[config.dataset.name]
    if config.dataset.name == "synthetic":
        o = config.dataset.options
        return int(o.get("train_size", 2048)), int(o.get("test_size", 512))
    return None, 0


@main.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--storage", "storage_uri", help="Override the config's storage (a path, s3://... or gs://...).")
@click.option("--address", help="Ray cluster to join ('auto' for a running one); default: start a local Ray.")
@click.option("--num-cpus", type=int, help="CPUs of the local Ray started when no --address is given.")
def run(config_path: str, storage_uri: str | None, address: str | None, num_cpus: int | None) -> None:
    """Run (or resume) the sweep in CONFIG: train every seed, analyse every pair."""
    from .analysis import compact_summary, summarise
    from .sweep.runner import run_sweep
    from .tables import read_table

    config = _load(config_path, storage_uri)
    result = run_sweep(config, address=address, num_cpus=num_cpus, say=lambda m: click.echo(m, err=False))
    pairs = read_table(config.root, "pairs")
    pairs = pairs[pairs["model_key"].isin([p.model_key for p in config.models])]
    click.echo(f"\n[sweep] finished in {result.seconds:.0f}s; tables in {storage.join(config.root, 'tables')}")
    summary = summarise(pairs)
    if not summary.empty:
        table = compact_summary(summary).drop(columns=["dataset", "failed"])
        click.echo("mean ± 95% CI over pairs; reductions relative to the same alignment without correction")
        click.echo(table.to_string(index=False))
    click.echo(f"\nload them with: repair_ray.load_tables({config.root!r})")
    if result.train.failed or result.pairs.failed or result.pairs.left_out:
        click.echo(
            f"[sweep] {result.train.failed} model(s) failed, {result.pairs.failed} pair(s) failed, "
            f"{result.pairs.left_out} pair(s) left out: see the status and error columns",
            err=True,
        )


@main.command()
@click.argument("sweep_path", metavar="STORAGE/SWEEP")
def status(sweep_path: str) -> None:
    """Trained / failed / missing models and done / failed / missing pairs of a sweep."""
    from .sweep.runner import sweep_status

    try:
        s = sweep_status(sweep_path)
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    click.echo(
        f"models: {s.models_ok} trained, {s.models_failed} failed, {s.models_missing} missing (of {s.models_expected})"
    )
    click.echo(f"pairs:  {s.pairs_ok} done, {s.pairs_failed} failed, {s.pairs_missing} missing (of {s.pairs_expected})")


@main.command()
@click.argument("sweep_path", metavar="STORAGE/SWEEP")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Local folder for the report (default: STORAGE/SWEEP/report; required for s3:// and gs:// sweeps).",
)
@click.option("--model-key", help="Model config of the curves and variance-collapse plots (default: the deepest).")
def report(sweep_path: str, out_dir: str | None, model_key: str | None) -> None:
    """Write summary tables, plots and an index.html for the sweep at STORAGE/SWEEP.

    Works while the sweep is still running and when some pairs failed (they are counted and
    listed, not plotted). The output folder is always local.
    """
    from .analysis import write_report
    from .sweep.runner import sweep_status

    if out_dir is None and not storage.is_local(sweep_path):
        _fail(f"{sweep_path} is remote: give a local folder for the report with --out")
    notes = []
    try:
        s = sweep_status(sweep_path)
    except Exception as error:  # no sweep.yaml (tables copied elsewhere) or a config that no longer parses
        notes.append(f"expected models and pairs unknown ({str(error).splitlines()[0]})")
    else:
        notes.append(
            f"models: {s.models_ok} trained, {s.models_failed} failed, {s.models_missing} missing "
            f"(of {s.models_expected}); pairs: {s.pairs_ok} done, {s.pairs_failed} failed, "
            f"{s.pairs_missing} missing (of {s.pairs_expected})"
        )
        if s.models_missing or s.pairs_missing:
            notes.append("the sweep is not finished (still running or interrupted): this report covers what is done")
    try:
        index = write_report(sweep_path, out_dir, model_key=model_key, notes=notes)
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    for line in notes:
        click.echo(f"[report] {line}")
    written = sorted(p.name for p in index.parent.iterdir() if p.is_file())
    click.echo(f"[report] wrote {len(written)} files to {index.parent}: {', '.join(written)}")
    click.echo(f"[report] open {index}")


if __name__ == "__main__":
    main()
