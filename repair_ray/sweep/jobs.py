"""Submitting a sweep to a remote Ray cluster as a Ray Job, through Ray's Jobs SDK.

What travels with the job: the config (as ``sweep.yaml`` in the job's working directory), this
version of repair_ray (``py_modules``, so the driver and workers run the code the config was
validated with) and the non-secret settings of :data:`~repair_ray.sweep.cluster.FORWARDED_ENV`.
Never a credential: Ray keeps a job's runtime environment in its logs, the Jobs API and the
dashboard. The cluster's nodes bring their own (see clusters/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import InfrastructureError
from .cluster import forwarded_env

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
STOP_TIMEOUT_S = 60.0  # how long `repair-ray stop` waits for the job to reach a terminal status
FOLLOW_SETTLE_S = 10.0  # how long a follow waits for a terminal status once the dashboard ended the log stream


class JobNotFound(LookupError):
    """The dashboard answered, but has no job of that id."""


def dashboard_address(address: str | None) -> str:
    """The dashboard a Jobs client talks to, for messages (as Ray picks it)."""
    return address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or "the default address"


@contextlib.contextmanager
def dashboard(address: str | None, job_id: str | None = None) -> Iterator[None]:
    """Turn what an unreachable dashboard raises (the SDK's ``ConnectionError``, the ``requests``
    errors under it, both ``OSError``s) into one :class:`InfrastructureError` naming it, and the
    SDK's "does not exist" into :class:`JobNotFound`."""
    where = dashboard_address(address)
    try:
        yield
    except OSError as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InfrastructureError(f"Ray dashboard at {where} not reachable: {reason}") from error
    except RuntimeError as error:  # the SDK's way of saying "HTTP 404"
        if job_id is not None and "does not exist" in str(error):
            raise JobNotFound(f"no job {job_id} at the Ray dashboard {where}") from error
        raise


def client(address: str | None) -> Any:
    """A Jobs SDK client for ``address`` (``http://HEAD:8265``; default ``$RAY_API_SERVER_ADDRESS``/``$RAY_ADDRESS``).

    With token authentication on, the client sends ``$RAY_AUTH_TOKEN`` (or ``~/.ray/auth_token``)
    when ``RAY_AUTH_MODE=token`` is set, as ``ray job`` does.
    """
    from ray.job_submission import JobSubmissionClient

    with dashboard(address):
        return JobSubmissionClient(address)


def submit(
    config_data: dict[str, Any],
    *,
    address: str | None,
    submission_id: str | None = None,
    py_modules: Sequence[str] = (),
    allow_import: Sequence[str] = (),
    take_over: bool = False,
    jobs: Any = None,
) -> str:
    """Submit ``repair-ray run`` of an already validated config; returns the job's submission id.

    ``py_modules``: the user's own code (package folders, module files, wheels) that the config's
    networks import, shipped to the driver and every worker with this version of repair_ray.
    ``allow_import``: the modules the job's ``repair-ray run`` may import (its ``--allow-import``).
    ``take_over``: the job's run takes the sweep's lease even from a run that looks alive.
    ``jobs``: the Jobs client to use (default: one for ``address``).
    """
    import repair_ray

    with tempfile.TemporaryDirectory(prefix="repair-ray-job-") as folder:
        Path(folder, "sweep.yaml").write_text(yaml.safe_dump(config_data, sort_keys=False))
        entrypoint = "python -m repair_ray run sweep.yaml"  # RAY_ADDRESS is set for it: it joins the cluster
        entrypoint += "".join(f" --allow-import {shlex.quote(module)}" for module in allow_import)
        entrypoint += " --take-over" if take_over else ""
        runtime_env = {
            "working_dir": folder,
            "py_modules": [os.path.dirname(repair_ray.__file__), *(os.path.abspath(p) for p in py_modules)],
            "env_vars": forwarded_env(),
        }
        name = submission_id or f"repair-ray-{config_data['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
        jobs = jobs if jobs is not None else client(address)
        with dashboard(address):
            return jobs.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=name)


def job_status(jobs: Any, job_id: str) -> str:
    """The job's status as a plain word (``RUNNING``, ``STOPPED``, ...)."""
    return str(jobs.get_job_status(job_id)).rsplit(".", 1)[-1]


def logs(job_id: str, *, address: str | None) -> str:
    """Everything the job has logged so far."""
    jobs = client(address)
    with dashboard(address, job_id):
        return jobs.get_job_logs(job_id)


def follow(
    job_id: str,
    *,
    address: str | None,
    write: Callable[[str], None],
    settle: float | None = None,
    poll: float = 0.5,
    jobs: Any = None,
) -> str:
    """Stream a job's logs to ``write`` as the dashboard sends them (``tail_job_logs``: each chunk
    once, nothing downloaded twice) until the job ends; returns its final status (``SUCCEEDED``, ...).

    The dashboard ends the stream once the job has ended; a stream that breaks, or ends while the
    job still runs ``settle`` seconds (default :data:`FOLLOW_SETTLE_S`) later, is an
    :class:`InfrastructureError` naming the dashboard.
    ``jobs``: the Jobs client to use (default: one for ``address``; its headers carry the token).
    """
    jobs = jobs if jobs is not None else client(address)
    with dashboard(address, job_id):
        job_status(jobs, job_id)  # an unknown job is named (JobNotFound) before anything streams
        ended_a_line = asyncio.run(_stream(jobs, job_id, address, write))
        if not ended_a_line:
            write("\n")
        deadline = time.monotonic() + (FOLLOW_SETTLE_S if settle is None else settle)
        while True:
            status = job_status(jobs, job_id)
            if status in TERMINAL:
                return status
            if time.monotonic() >= deadline:
                raise InfrastructureError(
                    f"Ray dashboard at {dashboard_address(address)} ended the log stream of job {job_id} "
                    f"while the job is still {status}"
                )
            time.sleep(poll)


async def _stream(jobs: Any, job_id: str, address: str | None, write: Callable[[str], None]) -> bool:
    """Write every chunk ``jobs.tail_job_logs`` yields; True when the last one ended its line."""
    import aiohttp

    ended_a_line = True
    sdk_log = logging.getLogger("ray.dashboard.modules.job.sdk")
    level = sdk_log.level
    sdk_log.setLevel(logging.WARNING)  # not its INFO line on every close: the status line says how the job ended
    try:
        async for chunk in jobs.tail_job_logs(job_id):
            if chunk:
                write(chunk)
                ended_a_line = chunk.endswith("\n")
    except aiohttp.ClientResponseError as error:  # the dashboard refused the stream (its handshake)
        if error.status == 404:
            raise JobNotFound(f"no job {job_id} at the Ray dashboard {dashboard_address(address)}") from error
        raise _stream_broke(job_id, address, error) from error
    except (aiohttp.ClientError, ConnectionError) as error:
        raise _stream_broke(job_id, address, error) from error
    except RuntimeError as error:  # the SDK's way of saying "the websocket closed abnormally" (1006) or failed
        if not str(error).startswith("WebSocket"):
            raise
        raise _stream_broke(job_id, address, error) from error
    finally:
        sdk_log.setLevel(level)
    return ended_a_line


def _stream_broke(job_id: str, address: str | None, error: BaseException) -> InfrastructureError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return InfrastructureError(
        f"Ray dashboard at {dashboard_address(address)} broke off the log stream of job {job_id}: {reason}"
    )


def stop(
    job_id: str,
    *,
    address: str | None,
    timeout: float = STOP_TIMEOUT_S,
    poll: float = 1.0,
    jobs: Any = None,
) -> str:
    """Ask the job to stop and wait (at most ``timeout`` seconds) until its status is terminal;
    returns its status then: ``STOPPED`` (or ``SUCCEEDED``/``FAILED`` when it had ended already),
    or the status it still has when it did not stop in time. ``jobs``: the Jobs client to use
    (default: one for ``address``)."""
    jobs = jobs if jobs is not None else client(address)
    deadline = time.monotonic() + timeout
    with dashboard(address, job_id):
        jobs.stop_job(job_id)  # False when the job has ended already: its status says how
        while True:
            status = job_status(jobs, job_id)
            if status in TERMINAL or time.monotonic() >= deadline:
                return status
            time.sleep(max(0.0, min(poll, deadline - time.monotonic())))
