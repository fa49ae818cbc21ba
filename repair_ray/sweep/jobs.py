"""Submitting a sweep to a remote Ray cluster as a Ray Job, through Ray's Jobs SDK.

What travels with the job: the config (as ``sweep.yaml`` in the job's working directory), this
version of repair_ray (``py_modules``, so the driver and workers run the code the config was
validated with) and the non-secret settings of :data:`~repair_ray.sweep.cluster.FORWARDED_ENV`.
Never a credential: Ray keeps a job's runtime environment in its logs, the Jobs API and the
dashboard. The cluster's nodes bring their own (see clusters/README.md).
"""

from __future__ import annotations

import os
import shlex
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from .cluster import forwarded_env

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def client(address: str | None) -> Any:
    """A Jobs SDK client for ``address`` (``http://HEAD:8265``; default ``$RAY_API_SERVER_ADDRESS``/``$RAY_ADDRESS``).

    With token authentication on, the client sends ``$RAY_AUTH_TOKEN`` (or ``~/.ray/auth_token``)
    when ``RAY_AUTH_MODE=token`` is set, as ``ray job`` does.
    """
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def submit(
    config_data: dict[str, Any],
    *,
    address: str | None,
    submission_id: str | None = None,
    py_modules: Sequence[str] = (),
    allow_import: Sequence[str] = (),
) -> str:
    """Submit ``repair-ray run`` of an already validated config; returns the job's submission id.

    ``py_modules``: the user's own code (package folders, module files, wheels) that the config's
    networks import, shipped to the driver and every worker with this version of repair_ray.
    ``allow_import``: the modules the job's ``repair-ray run`` may import (its ``--allow-import``).
    """
    import repair_ray

    with tempfile.TemporaryDirectory(prefix="repair-ray-job-") as folder:
        Path(folder, "sweep.yaml").write_text(yaml.safe_dump(config_data, sort_keys=False))
        entrypoint = "python -m repair_ray run sweep.yaml"  # RAY_ADDRESS is set for it: it joins the cluster
        entrypoint += "".join(f" --allow-import {shlex.quote(module)}" for module in allow_import)
        runtime_env = {
            "working_dir": folder,
            "py_modules": [os.path.dirname(repair_ray.__file__), *(os.path.abspath(p) for p in py_modules)],
            "env_vars": forwarded_env(),
        }
        name = submission_id or f"repair-ray-{config_data['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
        return client(address).submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=name)


def follow(job_id: str, *, address: str | None, say: Callable[[str], None], poll: float = 2.0) -> str:
    """Print a job's logs as they grow until it ends; returns its final status (``SUCCEEDED``, ...)."""
    jobs = client(address)
    shown = 0
    while True:
        status = str(jobs.get_job_status(job_id)).rsplit(".", 1)[-1]
        logs = jobs.get_job_logs(job_id)
        if len(logs) > shown:
            say(logs[shown:].rstrip("\n"))
            shown = len(logs)
        if status in TERMINAL:
            return status
        time.sleep(poll)


def stop(job_id: str, *, address: str | None) -> str:
    """Ask the job to stop; returns its status afterwards."""
    jobs = client(address)
    jobs.stop_job(job_id)
    for _ in range(60):
        status = str(jobs.get_job_status(job_id)).rsplit(".", 1)[-1]
        if status in TERMINAL:
            return status
        time.sleep(1)
    return status
