"""Every use of Ray's private state and autoscaler internals, each with a fallback for a Ray that moved or changed it.

pyproject.toml pins Ray to the minor version these were written and tested against; a Ray that
differs anyway (a cluster image with its own Ray, an install without the pins) degrades instead of
failing: each function answers None ("unknown") when a private name is missing or what it returns
has another shape, and says once per process, in one line, what the sweep does without it. The
table in docs/clusters.md ("Ray's private APIs") lists each call, its use and its fallback; the
tests call each one on the installed Ray, so an upgrade that breaks one fails them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

# What a moved or reshaped private API raises: a name gone (ImportError, AttributeError), another
# signature (TypeError), another shape of what it returns (KeyError, AttributeError, ValueError).
PRIVATE_API_ERRORS = (ImportError, AttributeError, TypeError, KeyError, ValueError)

# Set by Ray's job supervisor for the driver of a submitted job (ray._private.runtime_env.constants):
# read as a plain name, so nothing can fail here; tests/test_ray_private.py pins it to Ray's constant.
SUBMITTED_JOB_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"

AUTOSCALER_REPORT_WAIT_S = 20.0  # the longest a stage waits for a new head's first autoscaler report

NODE_TYPES_UNREAD = (
    "node types that an autoscaler reports to the GCS are not read: requests are judged by its status report instead"
)
AUTOSCALER_UNKNOWN = (
    "whether an autoscaler manages this cluster is unknown: resource requests are kept as asked, not checked "
    "against the nodes up front (one that no node can hold stays pending), and every ready task is submitted"
)
STARTED_HERE_UNKNOWN = (
    "whether this process started its Ray cluster is unknown: it counts as joined, so a GPU request on a "
    "cluster without GPUs is an error instead of running on the CPU"
)

_said: set[str] = set()  # the fallbacks already said in this process: each is said once


def reported_node_types(say: Callable[[str], None]) -> tuple[dict[str, float], list[dict[str, float]]] | None:
    """(the cluster's maximum resources, each node type's resources) as an autoscaler reported them
    to the GCS, node types of at most 0 nodes left out; ``({}, [])`` when none reported them (no
    open-source autoscaler of Ray 2.60 does); None when Ray's private state API has changed.

    Uses ``ray._private.state.state.get_cluster_config()`` (an ``autoscaler_pb2.ClusterConfig``:
    ``node_group_configs[i].max_count``, ``.resources``) and ``get_max_resources_from_cluster_config()``.
    """
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
        groups = [g for g in (config.node_group_configs if config else []) if g.max_count != 0]
        if not groups:
            return {}, []
        maximum = state.get_max_resources_from_cluster_config() or {}
        types = [{str(k): float(v) for k, v in g.resources.items()} for g in groups]
        return {str(k): float(v) for k, v in maximum.items()}, types
    except PRIVATE_API_ERRORS as error:
        _fall_back("ray._private.state.state.get_cluster_config", error, NODE_TYPES_UNREAD, say)
        return None


def autoscaler_runs(say: Callable[[str], None]) -> bool | None:
    """Whether an autoscaler with node types of its own manages this cluster; None when Ray's
    private autoscaler API has changed and it cannot be told.

    Every Ray head runs a v1 monitor that reports an ``autoscaler_report`` to the GCS within seconds
    of its start; without an autoscaling config it is a read-only one that names each node's type
    ``node_<node id>`` (``format_readonly_node_type``); with one, the types are the config's
    (``ray.head.default``, ``gpu_node``). A v2 autoscaler marks the cluster as v2 instead
    (``is_autoscaler_v2``). The report is read with ``_internal_kv_get`` under
    ``ray_constants.DEBUG_AUTOSCALING_STATUS``.
    """
    try:
        from ray._private import ray_constants
        from ray.autoscaler._private.util import format_readonly_node_type
        from ray.autoscaler.v2.utils import is_autoscaler_v2
        from ray.experimental.internal_kv import _internal_kv_get

        if is_autoscaler_v2(fetch_from_server=True):
            return True
        deadline = time.monotonic() + AUTOSCALER_REPORT_WAIT_S
        report = None
        while report is None and time.monotonic() < deadline:  # a head started just now has not reported yet
            status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
            report = json.loads(status).get("autoscaler_report") if status else None
            if report is None:
                time.sleep(0.5)
        mapping = (report or {}).get("node_type_mapping") or {}
        return any(kind != format_readonly_node_type(node) for node, kind in mapping.items())
    except PRIVATE_API_ERRORS as error:
        _fall_back("the autoscaler's status report", error, AUTOSCALER_UNKNOWN, say)
        return None


def started_here(say: Callable[[str], None]) -> bool | None:
    """Whether this process started the cluster it is connected to (``ray.init`` without an address)
    rather than joined one: Ray makes the node of a started cluster a head node of this process
    (``ray._private.worker._global_node.head``). None when that private name has changed."""
    try:
        import ray._private.worker

        node = ray._private.worker._global_node
        return bool(node is not None and node.head)
    except PRIVATE_API_ERRORS as error:
        _fall_back("ray._private.worker._global_node", error, STARTED_HERE_UNKNOWN, say)
        return None


def _fall_back(what: str, error: BaseException, consequence: str, say: Callable[[str], None]) -> None:
    """Say ``consequence`` once in this process: one line naming Ray's version and what broke, no traceback."""
    if consequence in _said:
        return
    _said.add(consequence)
    import ray

    reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:160]}"
    say(f"[cluster] Ray {ray.__version__}: {what} is missing or changed ({reason}); {consequence}")
