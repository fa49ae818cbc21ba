"""The ``repair-ray`` command group and what its commands share: exit statuses, how errors end a
command, progress lines, loading a config, and the common options.

Heavy imports (torch, scipy, Ray, pyarrow) happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import datetime
import os
import sys
import traceback
import warnings
from importlib import resources
from typing import TYPE_CHECKING, NoReturn

import click

if TYPE_CHECKING:
    from ..sweep.config import SweepConfig

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INFRASTRUCTURE, EXIT_INTERNAL = 0, 1, 2, 3, 4


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """End the command: the message on stderr, exit status ``code`` (default: a usage error)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


# The storage a command works on, once it knows it: an error of the storage layer names it.
PLACE: dict[str, str] = {}


def infrastructure_problem(error: BaseException) -> str | None:
    """The one line that names what failed when ``error`` is the infrastructure's (storage, the Ray
    cluster, the network), else None. Every exception type that means "not there" is mapped here.

    pyarrow's S3/GCS/local errors are ``OSError``s; ``requests``' errors (the Jobs SDK) and Ray's
    "no cluster" ``ConnectionError`` are too; a missing file is a usage error, not this.
    """
    from ..errors import InfrastructureError

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
        where = PLACE.get("storage")
        return f"storage {where} unreachable: {reason}" if where else f"storage or network: {reason}"
    return None


DEBUG = (
    "repair_ray.debug"  # the context's meta key that --debug sets (this one command, never the process's environment)
)


def _debug() -> bool:
    return os.environ.get("REPAIR_RAY_DEBUG", "").lower() not in ("", "0", "false", "no")


class _Commands(click.Group):
    """The command group: how an exception ends every command. Infrastructure errors and a sweep
    held by another run exit with status 3 in one line; any other exception is a bug of ours and
    exits with status 4, its traceback then one line saying so. Click's own exits (usage errors: 2),
    ``sys.exit`` and Ctrl+C keep their meaning."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as error:  # noqa: BLE001 - every exception is mapped here, in one place
            from ..datasets import DatasetNotFoundError
            from ..errors import MissingExtraError
            from ..sweep.jobs import JobNotFound
            from ..sweep.lease import LeaseHeld, LeaseLost

            # usage errors: exit 2, one line (a missing extra too: installing it, not retrying, fixes it)
            if isinstance(error, (JobNotFound, DatasetNotFoundError, MissingExtraError)):
                fail(str(error))
            if isinstance(error, (LeaseHeld, LeaseLost)):  # run, tune and submit: another run writes the sweep
                fail(str(error), EXIT_INFRASTRUCTURE)
            problem = infrastructure_problem(error)
            if problem is None:
                internal_error(error)
            if _debug() or ctx.meta.get(DEBUG):
                traceback.print_exception(error)
            fail(problem, EXIT_INFRASTRUCTURE)


def internal_error(error: Exception) -> NoReturn:
    """End the command after an exception none of our rules expects (a bug): its traceback on
    stderr, always, then one line naming it and asking for a report; exit status 4."""
    traceback.print_exception(error)
    what = (str(error).strip().splitlines() or [""])[0]
    name = type(error).__qualname__
    fail(
        f"internal error: {name}{': ' + what if what else ''} "
        "(a bug in repair-ray: please report it with the traceback above)",
        EXIT_INTERNAL,
    )


def stamped(line: str) -> str:
    """A progress line with the UTC time in front (``2026-12-04T15:04:05Z [train] ...``); leading
    blank lines stay in front of it."""
    body = line.lstrip("\n")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{line[: len(line) - len(body)]}{now} {body}"


def say(line: str, err: bool = False) -> None:
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
        fail(
            f"no example named {name!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else f"; the examples are {', '.join(example_names())}")
        )
    return (resources.files("repair_ray") / "examples" / f"{name}.yaml").read_text()


def allowed_imports(option: tuple[str, ...]) -> tuple[str, ...]:
    """The modules a config's networks may import: ``--allow-import`` and ``$REPAIR_RAY_ALLOW_IMPORT``
    (for jobs and scripts); a bad name is a usage error."""
    from ..models.external import ALLOW_IMPORT_ENV, allowed_from_env, allowed_modules

    try:
        from_option = allowed_modules(option)
    except ValueError as error:
        fail(f"--allow-import: {error}")
    try:
        from_env = allowed_from_env()
    except ValueError as error:
        fail(f"{ALLOW_IMPORT_ENV}: {error}")
    return tuple(dict.fromkeys((*from_option, *from_env)))


def load_sweep(
    config_path: str | None,
    example: str | None,
    storage_uri: str | None,
    allow_import: tuple[str, ...] = (),
    *,
    check_files: bool = True,
    quiet: tuple[type[Warning], ...] = (),
) -> SweepConfig:
    """The validated config from a file or a shipped example; usage errors exit with code 2. Its
    warnings are printed, but for those of the categories in ``quiet`` (the command says it itself)."""
    import yaml

    from ..sweep.config import ConfigError, load_config, parse_config

    if (config_path is None) == (example is None):
        fail("give a CONFIG file or --example NAME (one of them)")
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
            elif config_path is not None:
                config = load_config(
                    config_path, storage_override=storage_uri, allow_import=allowed, check_files=check_files
                )
            else:  # not reached: exactly one of them was given
                fail("give a CONFIG file or --example NAME (one of them)")
        except ConfigError as error:
            fail(str(error))
    for w in caught:
        if not issubclass(w.category, quiet):
            click.echo(f"warning: {w.message}", err=True)
    return config


config_argument = click.argument("config_path", metavar="CONFIG", required=False, type=click.Path(dir_okay=False))
example_option = click.option(
    "--example", help="Use a config shipped with repair_ray instead of a file (see `repair-ray examples`)."
)
storage_option = click.option(
    "--storage", "storage_uri", help="Override the config's storage (a path, s3://... or gs://...)."
)
allow_import_option = click.option(
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
    help="Print the traceback of an infrastructure error too (or set REPAIR_RAY_DEBUG=1); "
    "an internal error (exit 4) always prints it.",
)
def main(debug: bool) -> None:
    """Sweeps of linear mode connectivity: train seeds, align and repair pairs, measure barriers.

    Exit status: 0 done; 1 some trials or pairs failed (the sweep ran); 2 a bad config or usage;
    3 storage, the Ray cluster or its dashboard could not be reached (one line naming it), or
    another run holds the sweep; 4 an internal error, a bug in repair-ray (its traceback, always).
    """
    click.get_current_context().meta[DEBUG] = debug


# run, tune and submit: who may take a sweep's lease from a holder that looks alive
take_over_option = click.option(
    "--take-over",
    is_flag=True,
    help="Take the sweep's lease even from a run that looks alive (use only when you know it is dead).",
)
# run and tune: the size of the local Ray they start when they join none
num_cpus_option = click.option("--num-cpus", type=int, help="CPUs of the local Ray started when no --address is given.")
