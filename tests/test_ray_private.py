"""Ray's private APIs (repair_ray/sweep/ray_private.py): each works on the installed Ray, and each
falls back to the degraded behaviour of docs/clusters.md, said in one line, when Ray lacks it.

The real calls are the point: a Ray upgrade that moves one of these names fails the first test
here, in CI, before a user's sweep runs degraded. The fallbacks are tested by taking the name away
from Ray itself (monkeypatch), as a Ray release that dropped it would.
"""

from __future__ import annotations

import json
import time

import pytest

from repair_ray.sweep import ray_private
from repair_ray.sweep.cluster import MAX_IN_FLIGHT, cluster_shape, resolve_resources, tasks_in_flight
from repair_ray.sweep.config import ConfigError
from repair_ray.sweep.schema import ResourceSpec


@pytest.fixture
def said(monkeypatch) -> list[str]:
    """The lines the guarded calls say, with no fallback said yet in this process."""
    monkeypatch.setattr(ray_private, "_said", set())
    return []


@pytest.fixture
def reported(ray_session):
    """The session cluster, once its head's (read-only) monitor has sent its first status report."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    deadline = time.time() + 30
    while time.time() < deadline:
        status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        if status and "autoscaler_report" in json.loads(status):
            return ray_session
        time.sleep(0.5)
    raise AssertionError("the session cluster's monitor never reported")


def test_each_private_call_works_on_the_installed_ray(reported, said):
    assert ray_private.reported_node_types(said.append) == ({}, [])  # asked the GCS: no autoscaler reported types
    assert ray_private.started_here(said.append) is True  # ray_session's ray.init started it
    assert ray_private.autoscaler_runs(said.append) is False  # its monitor is the read-only one
    assert said == [], "a private Ray API these use has changed: update ray_private.py and docs/clusters.md"


def test_a_submitted_job_is_recognised_by_the_variable_rays_job_supervisor_sets():
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR
    from ray.dashboard.modules.job import job_supervisor

    assert ray_private.SUBMITTED_JOB_VARIABLE == RAY_JOB_CONFIG_JSON_ENV_VAR
    assert job_supervisor.RAY_JOB_CONFIG_JSON_ENV_VAR == RAY_JOB_CONFIG_JSON_ENV_VAR  # what it sets for the driver


def missing(monkeypatch, owner: str, name: str) -> None:
    """Take ``name`` away from Ray's ``owner`` (a module, or ``module:Class``), as a Ray release without it would."""
    import importlib

    module, _, cls = owner.partition(":")
    target = importlib.import_module(module)
    monkeypatch.delattr(getattr(target, cls) if cls else target, name)


GONE = [
    ("ray._private.state", "state", ray_private.reported_node_types, ray_private.NODE_TYPES_UNREAD),
    ("ray._private.state:GlobalState", "get_cluster_config", ray_private.reported_node_types,
     ray_private.NODE_TYPES_UNREAD),
    ("ray.autoscaler.v2.utils", "is_autoscaler_v2", ray_private.autoscaler_runs, ray_private.AUTOSCALER_UNKNOWN),
    ("ray.experimental.internal_kv", "_internal_kv_get", ray_private.autoscaler_runs, ray_private.AUTOSCALER_UNKNOWN),
    ("ray._private.ray_constants", "DEBUG_AUTOSCALING_STATUS", ray_private.autoscaler_runs,
     ray_private.AUTOSCALER_UNKNOWN),
    ("ray.autoscaler._private.util", "format_readonly_node_type", ray_private.autoscaler_runs,
     ray_private.AUTOSCALER_UNKNOWN),
    ("ray._private.worker", "_global_node", ray_private.started_here, ray_private.STARTED_HERE_UNKNOWN),
]  # fmt: skip


@pytest.mark.parametrize("module, name, call, consequence", GONE, ids=[f"{m}.{n}" for m, n, _, _ in GONE])
def test_a_private_name_gone_from_ray_is_unknown_and_said_once_in_one_line(
    reported, said, monkeypatch, module, name, call, consequence
):
    import ray

    missing(monkeypatch, module, name)
    assert call(said.append) is None
    assert call(said.append) is None
    assert len(said) == 1, said  # once per process, however often the stages ask
    (line,) = said
    assert line.startswith(f"[cluster] Ray {ray.__version__}: ") and line.endswith(consequence)
    assert "\n" not in line and "Traceback" not in line


def test_a_reshaped_cluster_config_is_unknown_too(reported, said, monkeypatch):
    """A Ray whose get_cluster_config returns something other than a ClusterConfig message."""
    import ray._private.state

    monkeypatch.setattr(ray._private.state.GlobalState, "get_cluster_config", lambda self: {"node_group_configs": []})
    assert ray_private.reported_node_types(said.append) is None
    assert len(said) == 1 and "(AttributeError: " in said[0] and said[0].endswith(ray_private.NODE_TYPES_UNREAD)


# The degraded shapes that docs/clusters.md promises, on the session cluster (2 CPUs, no GPU)
GPU = ResourceSpec(cpu=1, gpu=1)


def joined_shape(monkeypatch) -> None:
    """A Ray whose node no longer says ``head``: taken from the node, not the module's ``_global_node``,
    which Ray's own threads read meanwhile."""
    import ray._private.worker

    monkeypatch.delattr(ray._private.worker._global_node, "head")


def test_without_the_cluster_config_a_cluster_is_judged_as_before(reported, said, monkeypatch):
    # the method, not the module's `state`: ray.nodes() and ray.cluster_resources() need that
    missing(monkeypatch, "ray._private.state:GlobalState", "get_cluster_config")
    shape = cluster_shape(said.append)
    assert not shape.autoscaling and shape.started_here and shape.maximum == shape.current
    shape = cluster_shape(said.append)  # the next stage asks again: nothing more is said
    assert len(said) == 1 and said[0].endswith(ray_private.NODE_TYPES_UNREAD)


def test_without_knowing_who_started_the_cluster_a_gpu_request_is_an_error_not_a_cpu_run(reported, said, monkeypatch):
    joined_shape(monkeypatch)
    shape = cluster_shape(said.append)
    assert not shape.started_here and not shape.autoscaling  # joined, fixed (its monitor is read-only)
    with pytest.raises(ConfigError, match=r"resources\.train\.gpu is 1 but no node of this cluster .* has a GPU"):
        resolve_resources(GPU, "resources.train", said.append, shape)
    assert len(said) == 1 and said[0].endswith(ray_private.STARTED_HERE_UNKNOWN)


def test_without_the_autoscaler_status_requests_are_kept_as_asked(reported, said, monkeypatch):
    joined_shape(monkeypatch)  # joined, so the autoscaler is asked about
    missing(monkeypatch, "ray.experimental.internal_kv", "_internal_kv_get")
    shape = cluster_shape(said.append)
    assert shape.autoscaling and shape.maximum is None and shape.largest_node is None
    assert resolve_resources(GPU, "resources.train", said.append, shape) == (1, 1)  # not checked up front
    assert tasks_in_flight(None, 1, 1, shape) == MAX_IN_FLIGHT  # every ready task submitted
    fallbacks = [line for line in said if line.startswith("[cluster] Ray ")]
    assert len(fallbacks) == 2 and fallbacks[0].endswith(ray_private.STARTED_HERE_UNKNOWN)
    assert fallbacks[1].endswith(ray_private.AUTOSCALER_UNKNOWN)
