"""Connecting to Ray and fitting resource requests to the cluster that is there."""

from __future__ import annotations

import os
from collections.abc import Callable

from .config import ResourceSpec


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


def connect(address: str | None, *, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (``auto`` for a running one) or start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
