"""Connecting to Ray and fitting resource requests to the cluster that is there."""

from __future__ import annotations

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


# Settings that say WHERE storage and data are, never credentials: the driver's values travel to
# every worker of the job through its runtime environment, which Ray writes to logs and shows in
# the Jobs API and dashboard. Credentials reach workers through the cluster's own mechanism
# (instance roles / workload identity, Kubernetes secrets as env on the pods, ~/.aws or env on
# SLURM nodes, or, for a local cluster, the environment its processes inherit from the driver).
FORWARDED_ENV = (
    "REPAIR_RAY_DATA",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",  # a profile's name; its keys stay in ~/.aws on each node
    "GOOGLE_APPLICATION_CREDENTIALS",  # a path to a key file that each node holds, not the key
)


def forwarded_env() -> dict[str, str]:
    """The values of :data:`FORWARDED_ENV` that are set here."""
    return {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}


def connect(address: str | None, *, num_cpus: int | None = None) -> str:
    """Join a Ray cluster, or start a fresh local one for this run; returns which, for the log.

    As Ray's own address rules, with one difference that matters on shared machines: ``address``
    (``auto`` or ``HOST:PORT``) or ``RAY_ADDRESS`` (Ray Jobs sets it for the entrypoint) joins that
    cluster; with neither, a fresh local cluster is started for this run and ended after it,
    never someone else's ``ray start`` cluster that happens to run on the machine.
    """
    import ray

    if ray.is_initialized():
        return "using the Ray cluster this process is connected to"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A driver started by `ray job submit` already runs in the job's runtime environment, which
    # every worker shares; adding the same variables again would be a conflict for Ray.
    in_submitted_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
    runtime_env = None if in_submitted_job else {"env_vars": forwarded_env()}
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        ray.init(address=target, log_to_driver=False, runtime_env=runtime_env)
        return f"joined the Ray cluster at {ray.get_runtime_context().gcs_address}"
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    cpus = ray.cluster_resources().get("CPU", 0)
    return f"started a fresh local Ray cluster for this run at {ray.get_runtime_context().gcs_address} ({cpus:g} CPUs)"
