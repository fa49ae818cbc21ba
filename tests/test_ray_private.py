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


# --- Tune's basic variant generator, resynced with the experiment state after a kill -----------


def _restorable_experiment(tmp_path) -> str:
    """A staging folder as a killed tune run leaves it: one trial in the experiment state, the
    search state saved beside it."""
    from ray import tune
    from ray.tune.experiment import Experiment

    from repair_ray.sweep.tune_search import ResumableVariantGenerator

    generator = ResumableVariantGenerator(seed=0, max_concurrent=1)
    experiment = Experiment("x", run=lambda config: None, config={"lr": tune.grid_search([0.1, 0.2])},
                            storage_path=str(tmp_path))  # fmt: skip
    generator.add_configurations([experiment])
    trial = generator.next_trial()
    staging = tmp_path / "staging"
    staging.mkdir()
    state = {"trial_data": [trial.get_json_state()]}
    (staging / "experiment_state-2026-12-07_00-00-00.json").write_text(json.dumps(state))
    generator.save_to_dir(str(staging), session_str="2026-12-07_00-00-00")
    return str(staging)


TUNE_GONE = [
    ("ray.tune.search.basic_variant", "_TrialIterator"),
    ("ray.tune.search.sample", "_BackwardsCompatibleNumpyRng"),
    ("ray.tune.execution.experiment_state", "_find_newest_experiment_checkpoint"),
]


def test_the_variant_generator_resync_works_on_the_installed_ray(ray_session, tmp_path, said):
    from ray.tune.search import BasicVariantGenerator

    from repair_ray.sweep.tune_search import ResumableVariantGenerator

    staging = _restorable_experiment(tmp_path)
    generator = ResumableVariantGenerator(seed=0, max_concurrent=1)
    BasicVariantGenerator.restore_from_dir(generator, staging)  # Ray's restore alone
    assert ray_private.resync_variant_generator(generator, staging, 0, generator.starts, said.append) is True
    assert said == [], "a private Tune API the resync uses has changed: update ray_private.py and docs/clusters.md"


@pytest.mark.parametrize("module, name", TUNE_GONE, ids=[f"{m}.{n}" for m, n in TUNE_GONE])
def test_a_tune_name_gone_keeps_the_search_state_as_saved_and_says_so_once(
    ray_session, tmp_path, said, monkeypatch, module, name
):
    import ray
    from ray.tune.search import BasicVariantGenerator

    from repair_ray.sweep.tune_search import ResumableVariantGenerator

    staging = _restorable_experiment(tmp_path)
    generator = ResumableVariantGenerator(seed=0, max_concurrent=1)
    BasicVariantGenerator.restore_from_dir(generator, staging)  # Ray's restore alone
    missing(monkeypatch, module, name)
    assert generator.next_trial() is None  # Ray's restored state: its one trial counts as running
    assert ray_private.resync_variant_generator(generator, staging, 0, generator.starts, said.append) is None
    assert len(said) == 1, said
    (line,) = said
    assert line.startswith(f"[cluster] Ray {ray.__version__}: ") and line.endswith(ray_private.TUNE_SEARCH_AS_SAVED)
