"""Connecting to Ray and fitting resource requests to the cluster that is there."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .schema import ResourceSpec


def resolve_resources(spec: ResourceSpec, key: str, say: Callable[[str], None]) -> tuple[float, float]:
    """(cpu, gpu) to request; a GPU request on a cluster without GPUs falls back to 0 with a warning.

    Ray would otherwise keep such a task or trial pending forever, silently.
    """
    import ray

    resources = ray.cluster_resources()
    gpu = spec.gpu
    if gpu > 0 and resources.get("GPU", 0) == 0:
        say(f"[warning] {key}.gpu is {gpu} but the cluster has no GPU: running on CPU instead")
        gpu = 0.0
    cpu = spec.cpu
    available = resources.get("CPU", 0)
    if cpu > available > 0:
        say(f"[warning] {key}.cpu is {cpu} but the cluster has {available:g} CPUs: asking for {available:g}")
        cpu = available
    return cpu, gpu


# Storage endpoints and credentials, and the data root: the driver's values travel to every worker
# of the job, so workers read and write the same storage as the driver (a worker's own value
# wins nowhere: the job's runtime environment sets them).
FORWARDED_ENV = (
    "REPAIR_RAY_DATA",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "GOOGLE_APPLICATION_CREDENTIALS",
)


def forwarded_env() -> dict[str, str]:
    """The values of :data:`FORWARDED_ENV` that are set here."""
    return {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}


# What a submitted job's working directory leaves behind (results, environments, caches).
JOB_EXCLUDES = [".venv", ".bench", "runs", "reports", ".git", "**/__pycache__"]


def job_runtime_env() -> dict[str, object]:
    """The runtime environment of a job submitted with ``ray job submit`` (clusters/submit.sh)."""
    return {"env_vars": forwarded_env(), "excludes": JOB_EXCLUDES}


def connect(address: str | None, *, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (``auto`` for a running one) or start a local Ray.

    The job's workers get the driver's storage credentials and data root (:data:`FORWARDED_ENV`).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A driver started by `ray job submit` already runs in the job's runtime environment, which
    # every worker shares; adding the same variables again would be a conflict for Ray.
    in_submitted_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
    runtime_env = None if in_submitted_job else {"env_vars": forwarded_env()}
    if address:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)


if __name__ == "__main__":  # clusters/submit.sh: the job's runtime environment as JSON, from this one list
    print(json.dumps(job_runtime_env()))
