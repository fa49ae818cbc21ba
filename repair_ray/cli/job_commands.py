"""The commands about Ray Jobs on a remote cluster: ``submit``, ``logs``, ``stop``."""

from __future__ import annotations

import sys

import click

from .app import (
    EXIT_FAILED,
    EXIT_OK,
    allow_import_option,
    config_argument,
    example_option,
    fail,
    infrastructure_problem,
    load_sweep,
    main,
    storage_option,
    take_over_option,
)

job_address = click.option(
    "--address",
    help="The cluster's dashboard, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS or $RAY_ADDRESS).",
)


@main.command()
@config_argument
@example_option
@storage_option
@job_address
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
@allow_import_option
@take_over_option
def submit(
    config_path: str | None,
    example: str | None,
    storage_uri: str | None,
    address: str | None,
    submission_id: str | None,
    follow: bool,
    py_modules: tuple[str, ...],
    allow_import: tuple[str, ...],
    take_over: bool,
) -> None:
    """Submit the sweep in CONFIG to a Ray cluster as a Ray Job (from a laptop: no shell on the head).

    The config is validated here first, and a sweep that a live run holds (its lease) is refused
    here, as `run` refuses it; with --take-over the job's run takes the lease when it starts. The
    job carries the config, this version of repair_ray and where storage and data are; never a
    credential (the nodes have their own). With token authentication, export RAY_AUTH_MODE=token
    and RAY_AUTH_TOKEN (or keep ~/.ray/auth_token).

    Exit status: 0 submitted (with --follow: the job succeeded), 1 the followed job failed or was
    stopped, 2 a bad config, 3 the dashboard cannot be reached or another run holds the sweep, 4 a bug.
    """
    from ..io import storage
    from ..sweep import jobs

    # bad configs fail here, before anything travels; the data is the cluster's, so its files are not looked for here
    config = load_sweep(config_path, example, storage_uri, allow_import, check_files=False)
    data = dict(config.raw)  # the config as written
    data["storage"] = config.storage  # a relative path would land in the job's temporary working directory
    if storage.is_local(config.storage):
        click.echo(
            f"warning: storage {config.storage} is a local path: on the cluster it is a path on the node running "
            "the driver; use s3://, gs:// or a filesystem every node shares for more than one node",
            err=True,
        )
    client = jobs.client(address)  # a dead dashboard is named first: it is needed whatever the lease says
    if not take_over:
        _refuse_a_held_sweep(config.root)
    job_id = jobs.submit(
        data,
        address=address,
        submission_id=submission_id,
        py_modules=py_modules,
        allow_import=config.allow_import,
        take_over=take_over,
        jobs=client,
    )
    where = f" --address {address}" if address else ""
    click.echo(f"[submit] job {job_id}: sweep {config.name} -> {config.root}")
    click.echo(
        f"[submit] follow it: repair-ray logs {job_id}{where} --follow; stop it: repair-ray stop {job_id}{where}"
    )
    if follow:
        status = jobs.follow(job_id, address=address, write=_write, jobs=client)
        click.echo(f"[submit] job {job_id} {status}")
        sys.exit(EXIT_OK if status == "SUCCEEDED" else EXIT_FAILED)


def _write(text: str) -> None:
    """Print a chunk of a job's log as it came (its own newlines), at once."""
    click.echo(text, nl=False)  # click flushes after each echo


def _refuse_a_held_sweep(root: str) -> None:
    """Raise ``LeaseHeld`` (exit 3, `run`'s message) when a live run holds the sweep at ``root``.

    The job's run takes the lease itself, so this only saves a job that would stop at once. Storage
    that this machine cannot read (no credentials here: the nodes have their own) is a warning,
    and the job's run decides.
    """
    from ..sweep.lease import refuse_if_held

    try:
        refuse_if_held(root)
    except Exception as error:  # noqa: BLE001 - only the infrastructure's errors are a warning
        problem = infrastructure_problem(error)
        if problem is None:
            raise
        click.echo(
            f"warning: could not read the lease of {root} from here ({problem}); the job's run checks it",
            err=True,
        )


@main.command()
@click.argument("job_id", metavar="JOB")
@job_address
@click.option(
    "--follow/--no-follow",
    default=False,
    help="Stream the logs as the job writes them until it ends; exit with its outcome.",
)
def logs(job_id: str, address: str | None, follow: bool) -> None:
    """Print the logs of the Ray Job JOB (the driver's progress lines and summary, and what its
    tasks printed, under their names).

    With --follow, the dashboard streams what the job writes (each line once) until the job ends,
    then the job's final status is printed. Ctrl+C ends the follow, not the job.

    Exit status: 0 (with --follow: the job succeeded), 1 the followed job failed or was stopped
    (or Ctrl+C), 2 no such job, 3 the dashboard cannot be reached or broke off the stream.
    """
    from ..sweep import jobs

    if follow:
        status = jobs.follow(job_id, address=address, write=_write)
        click.echo(f"[logs] job {job_id} {status}")
        sys.exit(EXIT_OK if status == "SUCCEEDED" else EXIT_FAILED)
    click.echo(jobs.logs(job_id, address=address), nl=False)


@main.command()
@click.argument("job_id", metavar="JOB")
@job_address
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
    from ..sweep import jobs

    status = jobs.stop(job_id, address=address, timeout=timeout)
    if status not in jobs.TERMINAL:
        fail(f"job {job_id} is still {status} {timeout:g}s after it was asked to stop", EXIT_FAILED)
    click.echo(f"[stop] job {job_id} {status}")
