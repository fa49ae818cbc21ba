"""The commands about one sweep: ``examples``, ``validate``, ``run``, ``status``, ``compact``, ``report``."""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .app import (
    EXIT_FAILED,
    PLACE,
    allow_import_option,
    config_argument,
    example_names,
    example_option,
    example_text,
    fail,
    infrastructure_problem,
    load_sweep,
    main,
    num_cpus_option,
    say,
    storage_option,
    take_over_option,
)

if TYPE_CHECKING:
    from ..pair import PairSettings
    from ..sweep.config import SweepConfig
    from ..training import TrainConfig


@main.command()
@click.argument("name", required=False)
def examples(name: str | None) -> None:
    """List the example configs, or print example NAME (redirect it to a file to edit it)."""
    if name is not None:
        click.echo(example_text(name), nl=False)
        return
    import itertools
    import re
    import textwrap

    for example in example_names():
        # the header's prose: its comment lines up to a blank one or an indented one (a command)
        header = itertools.takewhile(
            lambda line: line.startswith("#") and line[1:].strip() and not line[1:].startswith("  "),
            example_text(example).splitlines(),
        )
        block = " ".join(line.lstrip("#").strip() for line in header)
        # whole sentences (an end: ". " before a capital, not "et al."), until the line says something
        sentences = re.split(r"(?<!\bal)(?<=[.?!])\s+(?=[A-Z`(])", block)
        first = sentences[0]
        for more in sentences[1:]:
            if len(first) >= 60:
                break
            first = f"{first} {more}"
        click.echo(textwrap.fill(first, 110, initial_indent=f"{example:32s} ", subsequent_indent=" " * 33))
    click.echo("\nrun one with `repair-ray run --example NAME`; copy one with `repair-ray examples NAME > sweep.yaml`")


def method_lines(s: PairSettings) -> list[str]:
    """How each matching method of ``s`` runs, spelled out (a preset's settings included)."""
    lines = []
    if {"weight", "ste", "sinkhorn"} & set(s.aligns):
        lines.append(
            f"weight matching: start {s.weight_matching_start}, {s.weight_matching_restarts} restart(s), "
            f"at most {s.weight_matching_max_iter} sweeps"
        )
    for method in ("ste", "sinkhorn"):
        if method in s.aligns:

            def get(name: str, method: str = method):
                return getattr(s, f"{method}_{name}")

            budget = f"{get('epochs')} epochs" if get("epochs") is not None else f"{get('steps')} steps"
            n = get("samples")
            samples = {None: "the statistics samples", "all": "all training samples"}.get(n, f"{n} training samples")
            extra = (
                f", temperatures {list(get('temperatures'))}, {get('order')} normalised first, "
                f"{get('gradient')} gradient"
                if method == "sinkhorn"
                else ""
            )
            lines.append(
                f"{method}: init {get('init')}, {budget} over {samples}, {get('optimizer')} lr {get('lr'):g}, "
                f"select {get('select')}, BatchNorm {get('batchnorm')} statistics{extra}"
            )
    if s.fold_batchnorm:
        lines.append("BatchNorm folded into the layers before it: pairs are analysed as plain networks")
    return lines


def design_line(config: SweepConfig) -> str | None:
    """The study design in one line: IMP's rounds or the branch points (None: independent seeds)."""
    branched = [p.branch for p in config.models if p.branch is not None]
    rounds = [(b, p.sparsity) for p in config.models if (b := p.branch) is not None and b.imp_round is not None]
    if rounds:
        imp = [b for b, _ in rounds]
        trunks = sorted({b.trunk_seed for b in imp})
        pruned = next((b for b in imp if b.imp_round), None)
        sparsities = sorted({x for _, x in rounds if x is not None})
        return (
            f"imp: rounds 0 (dense) to {max(b.imp_round or 0 for b in imp)} of trunk seed(s) {trunks}, "
            f"rewound to epoch {imp[0].epoch}"
            + (
                f"; each round prunes {pruned.rate:g} of the surviving weights of the last round's seed "
                f"{pruned.prune_seed}"
                if pruned and pruned.rate is not None
                else ""
            )
            + (f"; sparsity {', '.join(f'{x:.3f}' for x in sparsities)}" if sparsities else "")
        )
    if branched:
        trunks = sorted({b.trunk_seed for b in branched})
        epochs = sorted({b.epoch for b in branched})
        return (
            f"branch: the seeds are children of trunk seed(s) {trunks} at epoch(s) {epochs}; each trunk "
            "is trained once, to the last branch epoch"
        )
    return None


def recipe_line(train: TrainConfig, override: dict[str, Any]) -> str:
    """A recipe as ``key=value`` pairs; the keys ``override`` set (``models[i].train``) are marked ``*``."""
    return " ".join(f"{k}={v}{'*' if k in override else ''}" for k, v in asdict(train).items()) + (
        "   (* models[i].train, merged over the sweep's train)" if override else ""
    )


@main.command()
@config_argument
@example_option
@storage_option
@allow_import_option
@click.option(
    "--address",
    help="Also check the resources against this running Ray cluster ('auto' or HOST:PORT), as `run` does "
    "before it starts: a request no node, or a trial's workers that the whole cluster, can never hold.",
)
def validate(
    config_path: str | None,
    example: str | None,
    storage_uri: str | None,
    allow_import: tuple[str, ...],
    address: str | None,
) -> None:
    """Check CONFIG and print the expanded plan, without starting Ray.

    Every problem is listed at once (exit status 2), a dataset folder missing on this machine or a
    network file that cannot be used (models[i].checkpoints) included. When the sweep's folder is on
    this machine, also what of it is done already (as `run` and `status` count). With --address, the
    resources are judged against that cluster too (it joins the cluster, starts nothing on it).
    """
    from ..io import storage
    from ..models.external import KNOBS
    from ..pair import alpha_grid
    from ..sweep.pair_designs import sample_note
    from ..sweep.planning import sample_forward_passes
    from ..sweep.status import status_of

    config = load_sweep(config_path, example, storage_uri, allow_import)
    click.echo(f"sweep {config.name} -> {config.root}")
    click.echo(f"dataset: {config.dataset.name} {config.dataset.options or ''}".rstrip())
    if config.data_path == "stream":
        click.echo(
            "  streamed from disk by DataLoader workers (one per CPU of a task); the pair stage decodes "
            "eval.train_samples and eval.test_samples of it once per worker"
        )
    imported = sum(len(plan.seeds) for plan in config.models if plan.is_imported)
    trained = config.n_trials - imported
    if trained or not imported:
        click.echo(
            f"models to train: {trained} ({sum(not p.is_imported for p in config.models)} model configs x seeds)"
        )
    if imported:
        click.echo(f"networks to import: {imported} (files trained elsewhere: checked and evaluated, not trained)")
    if storage.is_local(config.root) and storage.exists(config.root):  # validate reaches no remote storage
        done = status_of(config)  # what `run` skips and `status` counts as done: one definition
        click.echo(
            f"  on storage already: {done.models_ok} of {done.models_expected} models trained, "
            f"{done.pairs_ok} of {done.pairs_expected} pairs done (a run skips them)"
        )
    gpu = config.resources.train.gpu
    sizes = {plan.model_key: config.stack_size(plan, gpu) for plan in config.models}
    if any(size > 1 for size in sizes.values()):
        trials = sum(-(-len(plan.seeds) // sizes[plan.model_key]) for plan in config.models)
        how = "auto, on the GPU" if config.seeds_per_trial is None else "train.seeds_per_trial"
        most = max(sizes.values())
        click.echo(f"  in {trials} trials: up to {most} seeds of a model config trained together ({how})")
    for plan in config.models:
        m = plan.model
        knobs = [
            f"{k}={v:g}" if k == "width" and not isinstance(v, tuple) else f"{k}={v}"
            for k in KNOBS
            if (v := getattr(m, k)) is not None
        ]
        knobs += [f"kwargs={m.kwargs}"] if m.kwargs else []
        if plan.imported is not None:
            size = sum(n.bytes for n in plan.imported) / 2**20
            click.echo(
                f"  {plan.model_key}: {' '.join([m.arch, *knobs])} imports {len(plan.imported)} network files "
                f"({size:,.1f} MiB) pairs={len(plan.pairs)}"
            )
            for network in plan.imported:
                click.echo(f"    network {network.seed}: {storage.redact(network.uri)} sha256 {network.sha256[:16]}")
            continue
        click.echo(f"  {plan.model_key}: {' '.join([m.arch, *knobs])} seeds={list(plan.seeds)} pairs={len(plan.pairs)}")
        if plan.train_override is not None:
            click.echo(f"    train: {recipe_line(plan.recipe(config.train), json.loads(plan.train_override))}")
    if any(not plan.is_imported for plan in config.models):
        overridden = any(plan.train_override is not None for plan in config.models)
        click.echo(f"train{' (the others)' if overridden else ''}: {recipe_line(config.train, {})}")
    design = design_line(config)
    if design is not None:
        click.echo(design)
    if config.tune is not None:
        t = config.tune
        space = ", ".join(f"{key} {d.kind} {list(d.values)}" for key, d in t.space.items())
        trials = t.num_samples * math.prod(len(d.values) for d in t.space.values() if d.kind == "grid")
        click.echo(
            f"tune (`repair-ray tune`): {trials} trials x {t.seeds} seed(s) per model config, {t.scheduler}, "
            f"{t.mode} {t.metric} on {t.val_samples:,} held-out training samples; space: {space}"
        )
    s = config.pair_settings
    alphas = alpha_grid(s.alphas)  # the grid PairSettings checked, as a tuple
    methods = f"align {list(s.aligns)} x correction {list(s.corrections)}"
    click.echo(f"pairs: {config.n_pairs} ({config.pair_design}); {methods}")
    rule = config.raw.get("pairs")
    if isinstance(rule, dict) and isinstance(rule.get("sample"), int):
        for n in sorted({len(plan.seeds) for plan in config.models}):
            click.echo(sample_note(n, rule["sample"]))
    click.echo(f"alphas: {len(alphas)} points from {alphas[0]:g} to {alphas[-1]:g}")
    for line in method_lines(s):
        click.echo(line)
    passes = sample_forward_passes(config)
    if passes is not None:
        click.echo(f"pair stage forward passes: {passes:,} samples ({passes / max(config.n_pairs, 1):,.0f} per pair)")
    click.echo(
        f"resources: train {config.resources.train.cpu:g} CPU / {config.resources.train.gpu:g} GPU per trial, "
        f"pair {config.resources.pair.cpu:g} CPU / {config.resources.pair.gpu:g} GPU per task"
    )
    if config.workers_per_trial > 1:
        n, train = config.workers_per_trial, config.resources.train
        click.echo(
            f"workers per trial: {n} (Ray Train, DDP): each network needs {n * train.cpu:g} CPU / "
            f"{n * train.gpu:g} GPU at once; `run` checks that the cluster can hold them before it starts"
            + ("" if address else " (validate --address HEAD checks it now)")
        )
    if address is not None:
        _check_cluster(config, address)


def _check_cluster(config: SweepConfig, address: str) -> None:
    """Judge the config's resources against the running cluster at ``address``, as `run` does (exit 2)."""
    import ray

    from ..sweep.cluster import connect
    from ..sweep.config import ConfigError
    from ..sweep.runner import check_resources

    joined = not ray.is_initialized()  # a process already connected keeps its connection
    connect(address)
    try:
        check_resources(config, click.echo)
        click.echo(f"cluster at {address}: it can hold every request of this config")
    except ConfigError as error:
        fail(str(error))
    finally:
        if joined:
            ray.shutdown()


@main.command()
@config_argument
@example_option
@storage_option
@click.option(
    "--address",
    help="Ray cluster to join: 'auto' (the `ray start` cluster of this machine) or HOST:PORT. "
    "Default: $RAY_ADDRESS when set (as in a Ray Job), else a fresh local Ray for this run only.",
)
@num_cpus_option
@allow_import_option
@take_over_option
def run(
    config_path: str | None,
    example: str | None,
    storage_uri: str | None,
    address: str | None,
    num_cpus: int | None,
    allow_import: tuple[str, ...],
    take_over: bool,
) -> None:
    """Run (or resume) the sweep in CONFIG (or --example NAME): train every seed, analyse every pair.

    One run writes a sweep at a time: it holds the lease STORAGE/SWEEP/lease.json while it lives.
    Exit status: 0 when every trial and pair succeeded, 1 when the sweep ran but some failed
    (listed, with their reasons), 2 for a bad config or usage (or gs:// storage without the gcs extra),
    3 when storage or the Ray cluster cannot be reached, or another run holds the sweep (or took it
    over while this one ran), 4 a bug.
    Progress lines start with their UTC time.
    """
    from ..io import storage
    from ..io.tables import load_tables
    from ..report import compact_summary, summarise
    from ..sweep.config import ConfigError, DatasetDownload
    from ..sweep.lease import check_supported
    from ..sweep.runner import run_sweep

    local = not (
        address or os.environ.get("RAY_ADDRESS")
    )  # then a missing dataset is downloaded here first, and said so
    config = load_sweep(config_path, example, storage_uri, allow_import, quiet=(DatasetDownload,) if local else ())
    PLACE["storage"] = config.root
    check_supported(config.root)  # gs:// without the gcs extra: exit 2, before storage is reached
    storage.check_writable(config.root)  # before Ray starts: a wrong bucket fails here, in one line (exit 3)
    try:
        result = run_sweep(config, address=address, num_cpus=num_cpus, say=say, take_over=take_over)
    except ConfigError as error:  # a resource request that no node of the cluster can ever hold
        fail(str(error))
    # another run holding the sweep (LeaseHeld, LeaseLost) is exit 3, for run, tune and submit alike (app.py)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rows of other settings: the summary is of this config's only
        tables = load_tables(config.root)
    pairs = tables["pairs"]
    say(f"\n[sweep] finished in {result.seconds:.0f}s; tables in {storage.join(config.root, 'tables')}")
    summary = summarise(pairs)
    if not summary.empty:
        table = compact_summary(summary).drop(columns=["dataset", "failed"])
        click.echo("mean ± 95% CI over pairs; reductions relative to the same alignment without correction")
        click.echo(table.to_string(index=False))
    click.echo(f"\nload them with: repair_ray.load_tables({config.root!r})")
    failures = _failures(tables)
    if failures or result.pairs.left_out:
        say(
            f"[sweep] {result.train.failed} model(s) failed, {result.pairs.failed} pair(s) failed, "
            f"{result.pairs.left_out} pair(s) left out (a network of theirs failed):",
            err=True,
        )
        for line in failures[:20]:
            click.echo(f"  {line}", err=True)
        if len(failures) > 20:
            click.echo(f"  ... and {len(failures) - 20} more: see the status, error and error_trace columns", err=True)
        sys.exit(EXIT_FAILED)  # the sweep ran, but not everything succeeded: Ray Jobs, KubeRay and SLURM must see it


def _failures(tables) -> list[str]:
    """One line per failed trial and failed pair of the current config, with its reason."""
    models, pairs = tables["models"], tables["pairs"]
    lines = [
        f"trial {r.model_key} seed {r.seed}: {r.error}"
        for r in models[models["status"] != "ok"].itertuples(index=False)
    ]
    failed = pairs[pairs["status"] != "ok"].drop_duplicates(["model_key", "seed_a", "seed_b"])
    lines += [f"pair {r.model_key} {r.seed_a}-{r.seed_b}: {r.error}" for r in failed.itertuples(index=False)]
    return lines


@main.command()
@click.argument("sweep_path", metavar="STORAGE/SWEEP")
def status(sweep_path: str) -> None:
    """Trained / failed / missing models and done / failed / missing pairs of a sweep, and who runs it.

    Exit status: 0, 2 when there is no sweep there, 3 when its storage cannot be reached.
    """
    import time

    from ..io import storage
    from ..sweep.lease import read_holder
    from ..sweep.status import sweep_status

    try:
        PLACE["storage"] = storage.normalize(sweep_path)
        s = sweep_status(sweep_path)
        holder = read_holder(sweep_path)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
    if holder is not None:
        now = time.time()
        state = "stale: its run looks dead" if holder.stale(now) else "running"
        click.echo(f"run:    {state}, {holder.describe(now)}")
    click.echo(
        f"models: {s.models_ok} trained, {s.models_failed} failed, {s.models_missing} missing (of {s.models_expected})"
    )
    click.echo(f"pairs:  {s.pairs_ok} done, {s.pairs_failed} failed, {s.pairs_missing} missing (of {s.pairs_expected})")


@main.command()
@click.argument("sweep_path", metavar="STORAGE/SWEEP")
@click.option("--all", "every", is_flag=True, help="Compact every table with 2 files or more (default: more than 8).")
def compact(sweep_path: str, every: bool) -> None:
    """Rewrite the tables of a sweep as few large files (newest row per fact; damaged files set aside).

    A sweep run compacts at its end already; run this after copying tables together, or to
    tidy a sweep that was interrupted. Safe to interrupt: nothing is deleted before its rows are
    written again.
    """
    from ..io import storage
    from ..io.tables import COMPACT_AFTER, compact_table, table_files

    try:
        root = PLACE["storage"] = storage.normalize(sweep_path)
    except ValueError as error:
        fail(str(error))
    if not storage.exists(storage.join(root, "tables")):
        fail(f"no tables at {root}")
    for table in ("models", "pairs", "curves", "layers"):
        before = len(table_files(root, table))
        replaced = compact_table(root, table, min_files=2 if every else COMPACT_AFTER + 1)
        after = len(table_files(root, table))
        click.echo(f"[compact] {table}: {before} -> {after} files" + ("" if replaced else " (left as it is)"))


@main.command()
@click.argument("sweep_path", metavar="STORAGE/SWEEP")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Local folder for the report (default: STORAGE/SWEEP/report; required for s3:// and gs:// sweeps).",
)
@click.option("--model-key", help="Model config of the curves and variance-collapse plots (default: the deepest).")
@click.option(
    "--keys",
    type=click.Choice(["current", "all"]),
    default="current",
    show_default=True,
    help="Rows of the current config's model and analysis keys, or every row (keys never pooled); on the "
    "tuning page, each model config's newest tune, or every tune.",
)
def report(sweep_path: str, out_dir: str | None, model_key: str | None, keys: str) -> None:
    """Write summary tables, plots and an index.html for the sweep at STORAGE/SWEEP (and tuning.html
    for the trials of `repair-ray tune`, linked from it).

    Works while the sweep is still running, when some pairs failed (they are counted and listed,
    not plotted), and on a sweep only tuned so far. The output folder is always local.
    """
    from ..io import storage
    from ..report import write_report
    from ..sweep.status import sweep_status

    if out_dir is None and not storage.is_local(sweep_path):
        fail(f"{sweep_path} is remote: give a local folder for the report with --out")
    PLACE["storage"] = storage.normalize(sweep_path)
    notes = []
    try:
        s = sweep_status(sweep_path)
    except Exception as error:  # noqa: BLE001 - no sweep.yaml (tables copied elsewhere) or a config that no longer parses
        if infrastructure_problem(error) is not None:
            raise
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
        index = write_report(sweep_path, out_dir, model_key=model_key, notes=notes, keys=keys)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
    for line in notes:
        click.echo(f"[report] {line}")
    written = sorted(p.name for p in Path(index).parent.iterdir() if p.is_file())
    click.echo(f"[report] wrote {len(written)} files to {Path(index).parent}: {', '.join(written)}")
    click.echo(f"[report] open {index}")
