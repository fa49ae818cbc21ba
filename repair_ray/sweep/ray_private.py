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

TUNE_SEARCH_AS_SAVED = (
    "a restored tune experiment keeps its search state as Ray saved it: after a kill that tore Tune's "
    "snapshot, its re-run can wait forever for a trial it will never run, or end a trial short"
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


def resync_variant_generator(
    generator: object, staging_dir: str, seed: int, starts: list[int], say: Callable[[str], None]
) -> bool | None:
    """Make the search state of a restored Tune experiment agree with its experiment state; whether
    it did (False: nothing to agree with, or the two are not the same experiment, and Ray's restored
    state is kept); None when Tune's private API has changed.

    Tune snapshots a running experiment as two files: the trials (``experiment_state-*.json``) and
    the search algorithm's state (``basic-variant-state-*.json``: how far its generator got, which
    trials it counts as running). A kill can leave them from two moments: the search state a trial
    ahead. Restored as is, the generator never makes that trial again, and with ``max_concurrent``
    it waits forever for it to end (the re-run hangs). Here the generator is rebuilt from the
    experiment's own settings and seed, advanced past exactly the trials the experiment state
    holds (the same ids and samples, in the same order), and counts as running those the experiment
    state holds unfinished (``ERROR`` included: the tune stage restores with ``resume_errored``).

    ``generator`` is a restored ``BasicVariantGenerator`` (Tune's ``_iterators``, ``_live_trials``,
    ``_points_to_evaluate``); its iterators are ``ray.tune.search.basic_variant._TrialIterator``,
    drawn from ``ray.tune.search.sample._BackwardsCompatibleNumpyRng(seed)``; the experiment state is
    found as Tune finds it (``ray.tune.execution.experiment_state._find_newest_experiment_checkpoint``),
    and read as JSON: its ``trial_data`` pairs, each trial's ``trial_id`` and ``status``.
    """
    try:
        import copy
        import itertools

        from pyarrow import fs as pafs
        from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
        from ray.tune.search.basic_variant import _TrialIterator
        from ray.tune.search.sample import _BackwardsCompatibleNumpyRng

        newest = _find_newest_experiment_checkpoint(staging_dir, fs=pafs.LocalFileSystem())
        if newest is None:
            return False
        with open(newest) as f:
            trials = [json.loads(state) for state, _ in json.load(f)["trial_data"]]
        known = {str(t["trial_id"]): str(t["status"]) for t in trials}
        saved = list(generator._iterators)  # type: ignore[attr-defined]
        if len(saved) != len(starts) or any(it.lazy_eval for it in saved):
            return False  # not what this generator made; a lazy one Ray cannot restore either
        random_state = _BackwardsCompatibleNumpyRng(seed)
        fresh = [
            _TrialIterator(
                uuid_prefix=it.uuid_prefix,
                num_samples=it.num_samples,
                unresolved_spec=it.unresolved_spec,
                constant_grid_search=it.constant_grid_search,
                points_to_evaluate=copy.deepcopy(generator._points_to_evaluate),  # type: ignore[attr-defined]
                lazy_eval=False,
                start=start,
                random_state=random_state,  # type: ignore[arg-type]  # as BasicVariantGenerator passes its own
            )
            for it, start in zip(saved, starts, strict=True)
        ]
        made = itertools.chain(*fresh)
        for _ in range(len(known)):  # the experiment state holds the first trials made, in order
            trial = next(made, None)
            if trial is None or trial.trial_id not in known:
                return False
        generator._iterators = fresh  # type: ignore[attr-defined]
        generator._trial_generator = itertools.chain(*fresh)  # type: ignore[attr-defined]
        generator._trial_iter = None  # type: ignore[attr-defined]
        generator._live_trials = {t for t, status in known.items() if status != "TERMINATED"}  # type: ignore[attr-defined]
        generator._finished = False  # type: ignore[attr-defined]  # the next trial asked for says when it is
        return True
    except PRIVATE_API_ERRORS as error:
        _fall_back("Tune's basic variant generator state", error, TUNE_SEARCH_AS_SAVED, say)
        return None


def _fall_back(what: str, error: BaseException, consequence: str, say: Callable[[str], None]) -> None:
    """Say ``consequence`` once in this process: one line naming Ray's version and what broke, no traceback."""
    if consequence in _said:
        return
    _said.add(consequence)
    import ray

    reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:160]}"
    say(f"[cluster] Ray {ray.__version__}: {what} is missing or changed ({reason}); {consequence}")
