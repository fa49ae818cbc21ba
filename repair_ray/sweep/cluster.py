"""Connecting to Ray and fitting resource requests to the cluster that is there."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import ray_private
from .config import ConfigError

if TYPE_CHECKING:
    from .schema import ResourceSpec


@dataclass(frozen=True)
class ClusterShape:
    """What a Ray cluster has now and what it can ever have: the facts a resource request is judged by.

    ``maximum`` is every node type at its largest count, ``largest_node`` the most of each resource
    that one node can have; both are None when an autoscaler runs but does not say its node types.
    ``started_here`` is a fresh local cluster that this process started (a laptop run), where a GPU
    request falls back to the CPU instead of failing.
    """

    current: dict[str, float]
    maximum: dict[str, float] | None
    largest_node: dict[str, float] | None
    autoscaling: bool
    started_here: bool


def cluster_shape(say: Callable[[str], None]) -> ClusterShape:
    """The :class:`ClusterShape` of the cluster this process is connected to.

    Ray 2.60 keeps an autoscaler's node types in the GCS only when the autoscaler reports them
    (:func:`~.ray_private.reported_node_types`); neither open-source autoscaler of 2.60 does (no
    caller of ``report_cluster_config`` in the wheel; None on a fake v1 cluster), so an autoscaler
    is also recognised by its status report (:func:`~.ray_private.autoscaler_runs`), and then the
    maximum is unknown. Without an autoscaler the cluster is fixed: what it has now is all it will
    ever have. A cluster started here is fixed without asking (its monitor is a read-only one).
    Where a private Ray API these rely on has changed, ``say`` gets one line (once per process) and
    the shape is the degraded one that docs/clusters.md describes.
    """
    import ray

    current = dict(ray.cluster_resources())
    reported = ray_private.reported_node_types(say)
    if reported and reported[1]:
        maximum, node_types = reported
        return ClusterShape(current, maximum, _largest(node_types), True, False)
    started_here = bool(ray_private.started_here(say))  # unknown: counted as joined
    if not started_here and ray_private.autoscaler_runs(say) is not False:  # True, or unknown
        return ClusterShape(current, None, None, True, started_here)
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    return ClusterShape(current, current, _largest(nodes), False, started_here)


def _largest(nodes: list[dict[str, float]]) -> dict[str, float]:
    """Per resource, the most that one of ``nodes`` has."""
    largest: dict[str, float] = {}
    for resources in nodes:
        for name, amount in resources.items():
            largest[name] = max(largest.get(name, 0.0), float(amount))
    return largest


def resolve_resources(
    spec: ResourceSpec, key: str, say: Callable[[str], None], shape: ClusterShape
) -> tuple[float, float]:
    """(cpu, gpu) to request per task, judged against what the cluster can ever have, not what is up now.

    A request that no node can ever hold would stay pending forever, silently: it is a
    :class:`ConfigError` naming ``key``, except on a fresh local cluster started here, where a GPU
    request runs on the CPU and a CPU request is cut to the largest node, with a warning. On an
    autoscaling cluster a GPU that is not up yet is kept: the pending tasks bring its nodes.
    """
    cpu, gpu = spec.cpu, spec.gpu
    largest = shape.largest_node
    if largest is None:  # an autoscaler that does not say its node types: keep the request as asked
        _say_waiting(key, gpu, shape, say)
        return cpu, gpu
    kind = "node type of this cluster" if shape.autoscaling else "node of this cluster (it does not autoscale)"
    if gpu > largest.get("GPU", 0):
        if shape.started_here and largest.get("GPU", 0) == 0:
            say(f"[warning] {key}.gpu is {gpu:g} but the cluster has no GPU: running on CPU instead")
            gpu = 0.0
        elif largest.get("GPU", 0) == 0:
            raise ConfigError(f"{key}.gpu is {gpu:g} but no {kind} has a GPU: {_describe(shape)}")
        else:
            raise ConfigError(
                f"{key}.gpu is {gpu:g} but no {kind} has more than {largest['GPU']:g}: {_describe(shape)}"
            )
    if cpu > largest.get("CPU", 0) > 0:
        if not shape.started_here:
            raise ConfigError(
                f"{key}.cpu is {cpu:g} but no {kind} has more than {largest['CPU']:g}: {_describe(shape)}"
            )
        say(
            f"[warning] {key}.cpu is {cpu:g} but the cluster has {largest['CPU']:g} CPUs: asking for {largest['CPU']:g}"
        )
        cpu = largest["CPU"]
    _say_waiting(key, gpu, shape, say)
    return cpu, gpu


def check_worker_group(workers: int, cpu: float, gpu: float, shape: ClusterShape) -> None:
    """Raise the ConfigError of a trial of ``workers`` workers (``cpu`` and ``gpu`` each, as resolved
    for this cluster) that the cluster at its largest can never hold at once: its placement group
    would wait forever. Unknown sizes (an autoscaler that does not say them) are not judged."""
    if workers <= 1 or shape.maximum is None:
        return
    for name, each in (("CPU", cpu), ("GPU", gpu)):
        need, have = workers * each, shape.maximum.get(name, 0.0)
        if each > 0 and need > have:
            raise ConfigError(
                f"train.workers_per_trial is {workers}: each network's workers need {need:g} {name} at once "
                f"({workers} x resources.train.{name.lower()} {each:g}), but {_describe(shape)}"
            )


def _say_waiting(key: str, gpu: float, shape: ClusterShape, say: Callable[[str], None]) -> None:
    """A line for the log when a kept GPU request waits for nodes that the autoscaler has yet to add."""
    if gpu > 0 and shape.current.get("GPU", 0) == 0:
        say(f"[cluster] {key}.gpu is {gpu:g}: no GPU is up yet; waiting for the autoscaler to add GPU nodes")


def _describe(shape: ClusterShape) -> str:
    """The largest node and the cluster's maximum, in one phrase for an error message."""

    def pick(resources: dict[str, float] | None) -> str:
        return ", ".join(f"{k} {(resources or {}).get(k, 0):g}" for k in ("CPU", "GPU"))

    return f"the largest node has {pick(shape.largest_node)}; the whole cluster at most {pick(shape.maximum)}"


def named(task: Any, name: str) -> Any:
    """``task`` with its Ray task name set (a stand-in without ``.options``, as tests inject, as it is)."""
    options = getattr(task, "options", None)
    return options(name=name) if options is not None else task


MAX_IN_FLIGHT = 1000  # the most tasks one stage keeps in flight when the cluster's size does not bound them


def tasks_in_flight(configured: int | None, cpu: float, gpu: float, shape: ClusterShape, per_slot: int = 1) -> int:
    """How many tasks of one stage the driver keeps submitted: ``configured`` when set, else
    ``per_slot`` for each task that the cluster at its *maximum* size runs at once.

    On an autoscaling cluster pending tasks are the demand its autoscaler sees, so the count follows
    the size the cluster can grow to, not the nodes up at the start; with an autoscaler that does not
    say its size, every ready task (up to :data:`MAX_IN_FLIGHT`) is submitted and the autoscaler
    grows as far as its own limits allow.

    ``ray.autoscaler.sdk.request_resources`` is not used: pending tasks already are demand, while its
    request is a floor for the whole cluster that persists until overridden, so a driver killed
    before it clears it keeps GPU nodes up (and paid for), and two sweeps on one cluster override
    each other's floors.
    """
    if configured:
        return configured
    if shape.maximum is None:
        return MAX_IN_FLIGHT
    name, each = ("GPU", gpu) if gpu > 0 else ("CPU", max(cpu, 1e-9))
    slots = shape.maximum.get(name, 0) / each
    return max(per_slot, min(MAX_IN_FLIGHT, per_slot * int(slots)))


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
    never someone else's ``ray start`` cluster that happens to run on the machine. A cluster that
    is not there is an :class:`~repair_ray.errors.InfrastructureError` naming the address.

    Workers' output reaches the driver (``log_to_driver``), so a Ray Job's log holds it too; the
    stages' workers print nothing of their own, so what appears there is what went wrong in them
    (Ray prefixes it with the task's name, e.g. ``(pair mlp-1a2b 0-1 pid=...)``).
    """
    import ray

    from ..errors import InfrastructureError

    if ray.is_initialized():
        here = ray.get_runtime_context().gcs_address
        if address and address != "auto":  # a cluster named: this one, or an error (never another one silently)
            _check_listening(address)
            if address.removeprefix("ray://").rpartition(":")[2] != here.rpartition(":")[2]:
                raise InfrastructureError(
                    f"this process is connected to the Ray cluster at {here}; it cannot join {address} "
                    "as well (ray.shutdown() first, or leave the address out)"
                )
        return f"using the Ray cluster this process is connected to ({here})"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A driver started by `ray job submit` already runs in the job's runtime environment, which
    # every worker shares; adding the same variables again would be a conflict for Ray.
    in_submitted_job = ray_private.SUBMITTED_JOB_VARIABLE in os.environ
    runtime_env = None if in_submitted_job else {"env_vars": forwarded_env()}
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        _check_listening(target)
        try:
            ray.init(address=target, log_to_driver=True, runtime_env=runtime_env)
        except (ConnectionError, TimeoutError, RuntimeError) as error:
            raise InfrastructureError(f"no Ray cluster at {target}: {_first_line(error)}") from error
        return f"joined the Ray cluster at {ray.get_runtime_context().gcs_address}"
    with _quiet_token_auth_notice():
        ray.init(
            address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, runtime_env=runtime_env
        )
    cpus = ray.cluster_resources().get("CPU", 0)
    return f"started a fresh local Ray cluster for this run at {ray.get_runtime_context().gcs_address} ({cpus:g} CPUs)"


TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


@contextlib.contextmanager
def _quiet_token_auth_notice() -> Iterator[None]:
    """Without Ray's warning that token authentication is on (or off) for a fresh local cluster: the
    cluster is this run's own and ends with it, so there is nothing the user could act on."""

    def keep(record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and "Token authentication is" in record.getMessage())

    logger = logging.getLogger(TOKEN_AUTH_LOGGER)
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


CONNECT_TIMEOUT_S = 5.0  # how long a HOST:PORT gets to accept a connection before it counts as no cluster


def _check_listening(target: str) -> None:
    """Raise at once when nothing listens at ``HOST:PORT`` (``ray://`` too): ``ray.init`` would
    retry for minutes before it gave up. ``auto`` and other forms are left to Ray."""
    import socket

    from ..errors import InfrastructureError

    host, _, port = target.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise InfrastructureError(f"no Ray cluster at {target}: {error.strerror or error}") from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
