"""``repair-ray``: run, validate and inspect sweeps.

Exit status of every command: 0 done; 1 the sweep (or job) ran but some trials or pairs failed;
2 a bad config or usage; 3 infrastructure: storage, the Ray cluster or its dashboard could not be
reached (one line naming the place; ``--debug`` or ``REPAIR_RAY_DEBUG=1`` adds the traceback).

Heavy imports (torch, scipy, Ray, pyarrow) happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import datetime
import os
import sys
import traceback
import warnings
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from .pair import PairSettings


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INFRASTRUCTURE = 0, 1, 2, 3


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


# The storage a command works on, once it knows it: an error of the storage layer names it.
_place: dict[str, str] = {}


def infrastructure_problem(error: BaseException) -> str | None:
    """The one line that names what failed when ``error`` is the infrastructure's (storage, the Ray
    cluster, the network), else None. Every exception type that means "not there" is mapped here.

    pyarrow's S3/GCS/local errors are ``OSError``s; ``requests``' errors (the Jobs SDK) and Ray's
    "no cluster" ``ConnectionError`` are too; a missing file is a usage error, not this.
    """
    from .errors import InfrastructureError

    if isinstance(error, InfrastructureError):
        return str(error)
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    module = type(error).__module__.split(".")[0]
    if module == "ray" and type(error).__name__ in ("RaySystemError", "NodeDiedError", "GetTimeoutError"):
        return f"the Ray cluster failed: {reason}"
    if module in ("botocore", "urllib3", "requests", "aiohttp", "google") and "rror" in type(error).__name__:
        return f"network: {reason}"
    if isinstance(error, ConnectionError):
        return f"network: {reason}"
    if isinstance(error, OSError) and not isinstance(error, (FileNotFoundError, IsADirectoryError)):
        where = _place.get("storage")
        return f"storage {where} unreachable: {reason}" if where else f"storage or network: {reason}"
    return None


def _debug() -> bool:
    return os.environ.get("REPAIR_RAY_DEBUG", "").lower() not in ("", "0", "false", "no")


class _Commands(click.Group):
    """The command group: infrastructure errors end every command the same way, with exit status 3."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as error:  # noqa: BLE001 - mapped in one place; anything else is re-raised
            from .sweep.jobs import JobNotFound

            if isinstance(error, JobNotFound):
                _fail(str(error))
            problem = infrastructure_problem(error)
            if problem is None:
                raise
            if _debug():
                traceback.print_exception(error)
            _fail(problem, EXIT_INFRASTRUCTURE)


def stamped(line: str) -> str:
    """A progress line with the UTC time in front (``2026-12-04T15:04:05Z [train] ...``); leading
    blank lines stay in front of it."""
    body = line.lstrip("\n")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{line[: len(line) - len(body)]}{now} {body}"


def _say(line: str, err: bool = False) -> None:
    """Print a progress line, time-stamped: the one place every ``[sweep]``/``[train]``/``[pairs]`` line passes."""
    click.echo(stamped(line), err=err)


def example_names() -> list[str]:
    """The example configs shipped inside the package (``repair_ray/examples/*.yaml``)."""
    folder = resources.files("repair_ray") / "examples"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def example_text(name: str) -> str:
    """The YAML of the shipped example ``name``; exits with a usage error naming the known ones."""
    if name not in example_names():
        import difflib

        hint = difflib.get_close_matches(name, example_names(), n=1)
        _fail(
            f"no example named {name!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else f"; the examples are {', '.join(example_names())}")
        )
    return (resources.files("repair_ray") / "examples" / f"{name}.yaml").read_text()


def allowed_imports(option: tuple[str, ...]) -> tuple[str, ...]:
    """The modules a config's networks may import: ``--allow-import`` and ``$REPAIR_RAY_ALLOW_IMPORT``
    (for jobs and scripts); a bad name is a usage error."""
    from .models.external import ALLOW_IMPORT_ENV, allowed_from_env, allowed_modules

    try:
        from_option = allowed_modules(option)
    except ValueError as error:
        _fail(f"--allow-import: {error}")
    try:
        from_env = allowed_from_env()
    except ValueError as error:
        _fail(f"{ALLOW_IMPORT_ENV}: {error}")
    return tuple(dict.fromkeys((*from_option, *from_env)))


def _load(
    config_path: str | None,
    example: str | None,
    storage_uri: str | None,
    allow_import: tuple[str, ...] = (),
    *,
    check_files: bool = True,
):
    """The validated config from a file or a shipped example; usage errors exit with code 2."""
    import yaml

    from .sweep.config import ConfigError, load_config, parse_config

    if (config_path is None) == (example is None):
        _fail("give a CONFIG file or --example NAME (one of them)")
    allowed = allowed_imports(allow_import)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if example is not None:
                source = f"example {example}"
                config = parse_config(
                    yaml.safe_load(example_text(example)),
                    source=source,
                    storage_override=storage_uri,
                    allow_import=allowed,
                    check_files=check_files,
                )
            else:
                config = load_config(
                    config_path, storage_override=storage_uri, allow_import=allowed, check_files=check_files
                )
        except ConfigError as error:
            _fail(str(error))
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    return config


_config_argument = click.argument("config_path", metavar="CONFIG", required=False, type=click.Path(dir_okay=False))
_example_option = click.option(
    "--example", help="Use a config shipped with repair_ray instead of a file (see `repair-ray examples`)."
)
_storage_option = click.option(
    "--storage", "storage_uri", help="Override the config's storage (a path, s3://... or gs://...)."
)
_allow_import_option = click.option(
    "--allow-import",
    "allow_import",
    multiple=True,
    metavar="MODULE",
    help="Let the config's networks import MODULE (or a module inside it) for 'arch: MODULE.sub:factory'; "
    "repeatable, or comma-separated. Naming a module runs its code, so nothing else is imported "
    "(torchvision:<name> needs no allowance). Also from $REPAIR_RAY_ALLOW_IMPORT.",
)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="repair-ray")
@click.option(
    "--debug",
    is_flag=True,
    help="Print the traceback of an infrastructure error too (or set REPAIR_RAY_DEBUG=1).",
)
def main(debug: bool) -> None:
    """Sweeps of linear mode connectivity: train seeds, align and repair pairs, measure barriers.

    Exit status: 0 done; 1 some trials or pairs failed (the sweep ran); 2 a bad config or usage;
    3 storage, the Ray cluster or its dashboard could not be reached (one line naming it).
    """
    if debug:
        os.environ["REPAIR_RAY_DEBUG"] = "1"


@main.command()
@click.argument("name", required=False)
def examples(name: str | None) -> None:
    """List the example configs, or print example NAME (redirect it to a file to edit it)."""
    if name is not None:
        click.echo(example_text(name), nl=False)
        return
    for example in example_names():
        text = example_text(example)
        first = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), "")
        click.echo(f"{example:32s} {first}")
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
            extra = f", temperatures {list(get('temperatures'))}" if method == "sinkhorn" else ""
            lines.append(
                f"{method}: init {get('init')}, {budget} over {samples}, {get('optimizer')} lr {get('lr'):g}, "
                f"select {get('select')}, BatchNorm {get('batchnorm')} statistics{extra}"
            )
    if s.fold_batchnorm:
        lines.append("BatchNorm folded into the layers before it: pairs are analysed as plain networks")
    return lines


@main.command()
@_config_argument
@_example_option
@_storage_option
@_allow_import_option
def validate(
    config_path: str | None, example: str | None, storage_uri: str | None, allow_import: tuple[str, ...]
) -> None:
    """Check CONFIG and print the expanded plan, without starting Ray.

    Every problem is listed at once (exit status 2), a dataset folder missing on this machine included.
    """
    from .models.external import KNOBS
    from .sweep.planning import sample_forward_passes

    config = _load(config_path, example, storage_uri, allow_import)
    click.echo(f"sweep {config.name} -> {config.root}")
    click.echo(f"dataset: {config.dataset.name} {config.dataset.options or ''}".rstrip())
    click.echo(f"models to train: {config.n_trials} ({len(config.models)} model configs x seeds)")
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
        click.echo(f"  {plan.model_key}: {' '.join([m.arch, *knobs])} seeds={list(plan.seeds)} pairs={len(plan.pairs)}")
    branched = [p.branch for p in config.models if p.branch is not None]
    rounds = [p for p in config.models if p.branch is not None and p.branch.imp_round is not None]
    if rounds:
        trunks = sorted({p.branch.trunk_seed for p in rounds})
        pruned = next((p.branch for p in rounds if p.branch.imp_round), None)
        sparsities = sorted({p.sparsity for p in rounds if p.sparsity is not None})
        click.echo(
            f"imp: rounds 0 (dense) to {max(p.branch.imp_round for p in rounds)} of trunk seed(s) {trunks}, "
            f"rewound to epoch {rounds[0].branch.epoch}"
            + (
                f"; each round prunes {pruned.rate:g} of the surviving weights of the last round's seed "
                f"{pruned.prune_seed}"
                if pruned
                else ""
            )
            + (f"; sparsity {', '.join(f'{x:.3f}' for x in sparsities)}" if sparsities else "")
        )
    elif branched:
        trunks = sorted({b.trunk_seed for b in branched})
        epochs = sorted({b.epoch for b in branched})
        click.echo(
            f"branch: the seeds are children of trunk seed(s) {trunks} at epoch(s) {epochs}; each trunk "
            "is trained once, to the last branch epoch"
        )
    s = config.pair_settings
    click.echo(f"pairs: {config.n_pairs}; align {list(s.aligns)} x correction {list(s.corrections)}")
    click.echo(f"alphas: {len(s.alphas)} points from {s.alphas[0]:g} to {s.alphas[-1]:g}")
    for line in method_lines(s):
        click.echo(line)
    passes = sample_forward_passes(config)
    if passes is not None:
        click.echo(f"pair stage forward passes: {passes:,} samples ({passes / max(config.n_pairs, 1):,.0f} per pair)")
    click.echo(
        f"resources: train {config.resources.train.cpu:g} CPU / {config.resources.train.gpu:g} GPU per trial, "
        f"pair {config.resources.pair.cpu:g} CPU / {config.resources.pair.gpu:g} GPU per task"
    )


@main.command()
@_config_argument
@_example_option
@_storage_option
@click.option(
    "--address",
    help="Ray cluster to join: 'auto' (the `ray start` cluster of this machine) or HOST:PORT. "
    "Default: $RAY_ADDRESS when set (as in a Ray Job), else a fresh local Ray for this run only.",
)
@click.option("--num-cpus", type=int, help="CPUs of the local Ray started when no --address is given.")
@_allow_import_option
@click.option(
    "--take-over",
    is_flag=True,
    help="Take the sweep's lease even from a run that looks alive (use only when you know it is dead).",
)
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
    (listed, with their reasons), 2 for a bad config or usage, 3 when storage or the Ray cluster
    cannot be reached, or another run holds the sweep (or took it over while this one ran).
    Progress lines start with their UTC time.
    """
    from .io import storage
    from .io.tables import load_tables
    from .report import compact_summary, summarise
    from .sweep.config import ConfigError
    from .sweep.lease import LeaseHeld, LeaseLost
    from .sweep.runner import run_sweep

    config = _load(config_path, example, storage_uri, allow_import)
    _place["storage"] = config.root
    storage.check_writable(config.root)  # before Ray starts: a wrong bucket fails here, in one line (exit 3)
    try:
        result = run_sweep(config, address=address, num_cpus=num_cpus, say=_say, take_over=take_over)
    except ConfigError as error:  # a resource request that no node of the cluster can ever hold
        _fail(str(error))
    except (LeaseHeld, LeaseLost) as error:
        _fail(str(error), code=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rows of other settings: the summary is of this config's only
        tables = load_tables(config.root)
    pairs = tables["pairs"]
    _say(f"\n[sweep] finished in {result.seconds:.0f}s; tables in {storage.join(config.root, 'tables')}")
    summary = summarise(pairs)
    if not summary.empty:
        table = compact_summary(summary).drop(columns=["dataset", "failed"])
        click.echo("mean ± 95% CI over pairs; reductions relative to the same alignment without correction")
        click.echo(table.to_string(index=False))
    click.echo(f"\nload them with: repair_ray.load_tables({config.root!r})")
    failures = _failures(tables)
    if failures or result.pairs.left_out:
        _say(
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


_job_address = click.option(
    "--address",
    help="The cluster's dashboard, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS or $RAY_ADDRESS).",
)


@main.command()
@_config_argument
@_example_option
@_storage_option
@_job_address
@click.option("--id", "submission_id", help="Submission id of the job (default: repair-ray-NAME-TIME).")
@click.option("--follow/--no-follow", default=False, help="Stream the job's logs until it ends; exit with its outcome.")
@click.option(
    "--py-module",
    "py_modules",
    multiple=True,
    type=click.Path(exists=True),
    help="A package folder, module file or wheel of your own networks (arch: my_pkg.models:make_net) to ship with "
    "the job to every worker (Ray runtime_env py_modules); repeatable. Its modules still need --allow-import.",
)
@_allow_import_option
def submit(
    config_path: str | None,
    example: str | None,
    storage_uri: str | None,
    address: str | None,
    submission_id: str | None,
    follow: bool,
    py_modules: tuple[str, ...],
    allow_import: tuple[str, ...],
) -> None:
    """Submit the sweep in CONFIG to a Ray cluster as a Ray Job (from a laptop: no shell on the head).

    The config is validated here first. The job carries the config, this version of repair_ray
    and where storage and data are; never a credential (the nodes have their own). With token
    authentication, export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or keep ~/.ray/auth_token).

    Exit status: 0 submitted (with --follow: the job succeeded), 1 the followed job failed or was
    stopped, 2 a bad config, 3 the dashboard cannot be reached.
    """
    import yaml

    from .sweep import jobs

    # bad configs fail here, before anything travels; the data is the cluster's, so its files are not looked for here
    config = _load(config_path, example, storage_uri, allow_import, check_files=False)
    from .io import storage

    data = yaml.safe_load(Path(config_path).read_text()) if config_path else yaml.safe_load(example_text(example))
    data["storage"] = config.storage  # a relative path would land in the job's temporary working directory
    if storage.is_local(config.storage):
        click.echo(
            f"warning: storage {config.storage} is a local path: on the cluster it is a path on the node running "
            "the driver; use s3://, gs:// or a filesystem every node shares for more than one node",
            err=True,
        )
    job_id = jobs.submit(
        data, address=address, submission_id=submission_id, py_modules=py_modules, allow_import=config.allow_import
    )
    where = f" --address {address}" if address else ""
    click.echo(f"[submit] job {job_id}: sweep {config.name} -> {config.root}")
    click.echo(
        f"[submit] follow it: repair-ray logs {job_id}{where} --follow; stop it: repair-ray stop {job_id}{where}"
    )
    if follow:
        status = jobs.follow(job_id, address=address, say=click.echo)
        click.echo(f"[submit] job {job_id} {status}")
        sys.exit(EXIT_OK if status == "SUCCEEDED" else EXIT_FAILED)


@main.command()
@click.argument("job_id", metavar="JOB")
@_job_address
@click.option("--follow/--no-follow", default=False, help="Keep printing until the job ends; exit with its outcome.")
def logs(job_id: str, address: str | None, follow: bool) -> None:
    """Print the logs of the Ray Job JOB (the driver's progress lines and summary, and what its
    tasks printed, under their names).

    Exit status: 0 (with --follow: the job succeeded), 1 the followed job failed or was stopped,
    2 no such job, 3 the dashboard cannot be reached.
    """
    from .sweep import jobs

    if follow:
        status = jobs.follow(job_id, address=address, say=click.echo)
        click.echo(f"[logs] job {job_id} {status}")
        sys.exit(EXIT_OK if status == "SUCCEEDED" else EXIT_FAILED)
    click.echo(jobs.logs(job_id, address=address), nl=False)


@main.command()
@click.argument("job_id", metavar="JOB")
@_job_address
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds to wait for the job to stop.",
)
def stop(job_id: str, address: str | None, timeout: float) -> None:
    """Stop the Ray Job JOB and wait until it has stopped. What it finished is on storage;
    submitting the sweep again resumes it.

    Exit status: 0 when the job is no longer running (stopped, or it had ended already: its status
    is printed), 1 when it is still running after --timeout seconds, 2 no such job, 3 the dashboard
    cannot be reached.
    """
    from .sweep import jobs

    status = jobs.stop(job_id, address=address, timeout=timeout)
    if status not in jobs.TERMINAL:
        _fail(f"job {job_id} is still {status} {timeout:g}s after it was asked to stop", EXIT_FAILED)
    click.echo(f"[stop] job {job_id} {status}")


@main.command()
@click.argument("sweep_path", metavar="STORAGE/SWEEP")
def status(sweep_path: str) -> None:
    """Trained / failed / missing models and done / failed / missing pairs of a sweep, and who runs it.

    Exit status: 0, 2 when there is no sweep there, 3 when its storage cannot be reached.
    """
    import time

    from .io import storage
    from .sweep.lease import read_holder
    from .sweep.runner import sweep_status

    try:
        _place["storage"] = storage.normalize(sweep_path)
        s = sweep_status(sweep_path)
        holder = read_holder(sweep_path)
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
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
    from .io import storage
    from .io.tables import COMPACT_AFTER, compact_table, table_files

    try:
        root = _place["storage"] = storage.normalize(sweep_path)
    except ValueError as error:
        _fail(str(error))
    if not storage.exists(storage.join(root, "tables")):
        _fail(f"no tables at {root}")
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
    help="Rows of the current config's model and analysis keys, or every row (keys never pooled).",
)
def report(sweep_path: str, out_dir: str | None, model_key: str | None, keys: str) -> None:
    """Write summary tables, plots and an index.html for the sweep at STORAGE/SWEEP.

    Works while the sweep is still running and when some pairs failed (they are counted and
    listed, not plotted). The output folder is always local.
    """
    from .io import storage
    from .report import write_report
    from .sweep.runner import sweep_status

    if out_dir is None and not storage.is_local(sweep_path):
        _fail(f"{sweep_path} is remote: give a local folder for the report with --out")
    _place["storage"] = storage.normalize(sweep_path)
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
        _fail(str(error))
    for line in notes:
        click.echo(f"[report] {line}")
    written = sorted(p.name for p in Path(index).parent.iterdir() if p.is_file())
    click.echo(f"[report] wrote {len(written)} files to {Path(index).parent}: {', '.join(written)}")
    click.echo(f"[report] open {index}")


if __name__ == "__main__":
    main()
