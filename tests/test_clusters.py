"""The path from laptop to cluster: Ray Jobs against a real head with token authentication,
several nodes, remote (S3) storage with kill and resume, and the cluster files' validity."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from repair_ray import load_tables
from repair_ray.io import storage
from repair_ray.sweep.cluster import MAX_IN_FLIGHT, ClusterShape, cluster_shape, resolve_resources, tasks_in_flight
from repair_ray.sweep.config import ConfigError
from repair_ray.sweep.schema import ResourceSpec

from .conftest import free_port
from .helpers import list_names, tiny_sweep, write_yaml
from .processes import kill_session, kill_when, run_driver, start_driver, wait_for_idle_cluster

REPO = Path(__file__).resolve().parents[1]
CLUSTERS = REPO / "clusters"
BIN = Path(sys.executable).parent
KEY = ["model_key", "seed_a", "seed_b", "align", "correction"]


# ---------------------------------------------------------------------------------------------
# Ray Jobs: `ray job submit` to a real head started with `ray start --head`, token auth on
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def ray_head_with_token(own_ray_head):
    """A real Ray head (its own processes, ports and temp dir) with token authentication and a
    dashboard: (its dashboard's URL, the token, the environment of a client that has the token)."""
    token = uuid.uuid4().hex
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
    with own_ray_head(env, num_cpus=2, dashboard=True) as head:
        yield head.dashboard, token, head.env


def ray_cli(args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_ray_job_submit_runs_a_sweep_on_a_real_head_with_token_auth(ray_head_with_token, tmp_path, subprocesses):
    address, token, env = ray_head_with_token
    config = write_yaml(tmp_path / "sweep.yaml", tiny_sweep("job", str(tmp_path / "runs"), seeds=3))

    # without the token the cluster refuses the client
    no_token = {**env, "RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}
    no_token.pop("RAY_AUTH_TOKEN")
    (tmp_path / "none").write_text("not-the-token")
    refused = ray_cli(["job", "list", "--address", address], no_token, timeout=120)
    assert refused.returncode != 0
    assert "Authentication" in refused.stdout + refused.stderr or "Unauthorized" in refused.stdout + refused.stderr

    # with RAY_AUTH_MODE=token and the token, the job is submitted, its logs followed to the end
    runtime_env = {"excludes": [".venv", "runs", "reports", ".git", "**/__pycache__"]}
    submitted = ray_cli(
        [
            "job", "submit", "--address", address, "--submission-id", "sweep-job-1",
            "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env),
            "--", "python", "-m", "repair_ray.cli", "run", config, "--address", "auto",
        ],
        env,
    )  # fmt: skip
    logs = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, logs
    assert "[pairs] 3/3 pairs done" in logs  # the driver's progress, streamed back by the client
    assert "Job 'sweep-job-1' succeeded" in logs
    status = ray_cli(["job", "status", "sweep-job-1", "--address", address], env, timeout=120)
    assert "SUCCEEDED" in status.stdout + status.stderr or "succeeded" in status.stdout + status.stderr

    tables = load_tables(str(tmp_path / "runs" / "job"))
    assert len(tables["models"]) == 3 and (tables["models"]["status"] == "ok").all()
    assert len(tables["pairs"]) == 3 * 6 and not tables["pairs"].duplicated(KEY).any()


# ---------------------------------------------------------------------------------------------
# Remote storage: a sweep on S3 (moto's server on loopback), killed and resumed
# ---------------------------------------------------------------------------------------------


def test_s3_sweep_killed_and_resumed_reads_back_every_pair_once(ray_session, s3_bucket, tmp_path, subprocesses):
    address = ray_session.get_runtime_context().gcs_address
    root = f"{s3_bucket}/killed-{uuid.uuid4().hex[:6]}"
    data = tiny_sweep("s3sweep", root, seeds=4, alphas=11, train={"epochs": 1, "batch_size": 64, "lr": 0.05})
    config = write_yaml(tmp_path / "sweep.yaml", data)
    sweep = f"{root}/s3sweep"

    def pair_files() -> list[str]:
        return [n for n in list_names(f"{sweep}/tables/pairs") if n.endswith(".parquet")]

    driver = start_driver(config, address)  # the driver forwards the S3 endpoint to its workers
    kill_when(driver, lambda: len(pair_files()) >= 1)
    assert len(pair_files()) < 6
    wait_for_idle_cluster(ray_session)
    out = run_driver(config, address)
    # the stages are pipelined: the kill may land while some trials still train
    done, todo = map(int, re.search(r"\[train\] (\d+) of 4 trials already done; (\d+) to run", out).groups())
    assert done + todo == 4 and done >= 2  # a pair file means two of its networks had finished

    tables = load_tables(sweep)
    uris = tables["models"]["checkpoint_uri"]
    assert uris.str.startswith("checkpoints/").all()  # relative to the sweep: it can move
    assert all(storage.exists(f"{sweep}/{uri}") for uri in uris)
    pairs = tables["pairs"]
    assert len(pairs) == 6 * 6 and not pairs.duplicated(KEY).any() and (pairs["status"] == "ok").all()
    assert len(tables["curves"]) == 6 * 6 * 2 * 11 and not tables["curves"].duplicated([*KEY, "split", "alpha"]).any()
    assert not Path("s3sweep").exists()  # nothing landed on a local disk instead


# ---------------------------------------------------------------------------------------------
# Several nodes: a head without CPUs and two worker nodes; storage that no node owns
# ---------------------------------------------------------------------------------------------


def test_sweep_on_several_nodes_spreads_pair_tasks_and_needs_no_shared_disk(s3_bucket, tmp_path, subprocesses):
    root = f"{s3_bucket}/multinode-{uuid.uuid4().hex[:6]}"
    config = write_yaml(tmp_path / "sweep.yaml", tiny_sweep("nodes", root, seeds=4, alphas=9))
    # Ray's cluster_utils writes, and at shutdown deletes, the ray_current_cluster file of Ray's temp
    # dir: a temp dir of the test's own (not the machine's /tmp/ray), and every process ended by its session
    ray_tmp = tempfile.mkdtemp(prefix="rrm", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    script = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "multinode_sweep.py"), config, root],
        env={**os.environ, "RAY_TMPDIR": ray_tmp},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        stdout, stderr = script.communicate(timeout=600)
    finally:
        kill_session(script.pid)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert script.returncode == 0, stderr[-3000:]
    nodes = json.loads(stdout.strip().splitlines()[-1])
    tables = load_tables(f"{root}/nodes")
    pairs, models = tables["pairs"], tables["models"]
    assert len(pairs) == 6 * 6 and (pairs["status"] == "ok").all()
    assert set(pairs["node_id"]) <= set(nodes["workers"])
    assert len(set(pairs["node_id"])) == 2, "pair tasks ran on one node only"
    assert set(models["node_id"]) <= set(nodes["workers"])  # the CPU-less head trains nothing
    assert not list(tmp_path.rglob("*.parquet")) and not list(tmp_path.rglob("*.pt"))


# ---------------------------------------------------------------------------------------------
# Cluster files: validated with Ray's own validation (offline) or parsed and checked
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "gcp-gpu.yaml"])
def test_cluster_launcher_configs_pass_rays_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTERS / name).read_text())
    validate_config(prepare_config(config))  # Ray's schema (ray-schema.json) and its checks
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu_types = [t for t in nodes if t != config["head_node_type"]]
    assert gpu_types and all(nodes[t]["max_workers"] > nodes[t]["min_workers"] == 0 for t in gpu_types)
    setup = " ".join(config["setup_commands"])
    extras = re.search(r"repair_ray'\[([a-z,]+)\]'", setup).group(1).split(",")
    assert "-c ~/repair_ray/constraints.txt" in setup and "cluster" in extras  # CI's exact versions
    assert ("gcs" in extras) == (name == "gcp-gpu.yaml")  # google-cloud-storage: the lease of a gs:// sweep
    assert all("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"][1:])


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        ("a key misspelt", r"Additional properties are not allowed \('instance_type' was unexpected\)"),
        ("a key missing", r"'node_config' is a required property"),
    ],
)
def test_cluster_launcher_validation_catches_mistakes(mistake, message):
    """Ray's own schema check, which the test above trusts, does catch a mistake in our files, and
    names it and where it is."""
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTERS / "aws-gpu.yaml").read_text())
    head = config["available_node_types"]["head"]
    if mistake == "a key misspelt":
        head["instance_type"] = head["node_config"]["InstanceType"]  # belongs in node_config, as InstanceType
    else:
        del head["node_config"]
    with pytest.raises(ValidationError, match=message) as caught:
        validate_config(prepare_config(config))
    assert list(caught.value.absolute_path) == ["available_node_types", "head"]


def test_kuberay_rayjob_manifest():
    job = yaml.safe_load((CLUSTERS / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("repair-ray run ") and "--address auto" in spec["entrypoint"]
    assert "--storage s3://" in spec["entrypoint"]
    example = spec["entrypoint"].split("--example ")[1].split()[0]
    assert (REPO / "repair_ray" / "examples" / f"{example}.yaml").is_file()  # the example ships in the package
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["authOptions"] == {"mode": "token"}  # KubeRay >= 1.5.1 makes and distributes the token
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    images = {head["template"]["spec"]["containers"][0]["image"]}
    for group in cluster["workerGroupSpecs"]:
        container = group["template"]["spec"]["containers"][0]
        images.add(container["image"])
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        env = {e["name"]: e for e in container["env"]}
        assert "RAY_AUTH_TOKEN" not in env  # the operator sets it from its own Secret
        # credentials come from a Kubernetes Secret, never as literal values in the manifest
        assert all("valueFrom" in env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    assert len(images) == 1
    dockerfile = (CLUSTERS / "Dockerfile").read_text()
    assert "rayproject/ray:2.60.0" in dockerfile and "-c constraints.txt" in dockerfile
    assert "'/app[cluster,gcs]'" in dockerfile  # storage on gs:// too: its lease needs the gcs extra


def test_constraints_pin_what_ci_and_the_images_install():
    pins = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line)
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1" and pins["ray"] == "2.60.0"
    import ray
    import torch

    assert torch.__version__.split("+")[0] == pins["torch"] and ray.__version__ == pins["ray"]


def test_the_declared_ray_range_is_the_tested_minor_version_only():
    """The sweep reads Ray's private APIs (sweep/ray_private.py), which a minor release may change:
    pip may take a patch release of the pinned minor version, never the next minor one."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    pins = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line)
    pinned = Version(pins["ray"])
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    rays = [Requirement(r) for r in declared if Requirement(r).name == "ray"]
    assert len(rays) == 2  # the core (with Tune) and the [cluster] extra
    for requirement in rays:
        assert requirement.specifier.contains(pinned), requirement
        assert requirement.specifier.contains(Version(f"{pinned.major}.{pinned.minor}.{pinned.micro + 1}")), requirement
        assert not requirement.specifier.contains(Version(f"{pinned.major}.{pinned.minor + 1}.0")), requirement
    readme = (REPO / "README.md").read_text()
    assert f"`ray>={pinned.major}.{pinned.minor},<{pinned.major}.{pinned.minor + 1}`" in readme


def test_repair_ray_submit_logs_and_stop_through_the_jobs_sdk(ray_head_with_token, tmp_path, subprocesses):
    """From a 'laptop': submit a sweep to a real head with token auth; no secret in the job.

    One network is the user's own, from a package only the laptop has: ``--py-module`` ships it.
    """
    address, token, env = ray_head_with_token
    package = tmp_path / "code" / "my_nets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(
        "from torch import nn\n\n"
        "def make(width, num_classes, in_shape):\n"
        "    c, h, w = in_shape\n"
        "    hidden = nn.Linear(c * h * w, width)\n"
        "    return nn.Sequential(nn.Flatten(), hidden, nn.ReLU(), nn.Linear(width, num_classes))\n"
    )
    models = [{"arch": "mlp", "width": 16, "depth": 2}, {"arch": "my_nets.models:make", "width": 8}]
    config = write_yaml(
        tmp_path / "sweep.yaml", tiny_sweep("submitted", str(tmp_path / "runs"), seeds=3, models=models)
    )
    cli = [sys.executable, "-m", "repair_ray"]
    submitted = subprocess.run(
        [
            *cli,
            "submit",
            config,
            "--address",
            address,
            "--id",
            "sweep-sdk-1",
            "--follow",
            "--py-module",
            str(package),
            "--allow-import",
            "my_nets",
        ],
        env={**env, "PYTHONPATH": str(package.parent)},  # the laptop validates the config: it imports my_nets
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, out
    assert "[submit] job sweep-sdk-1" in out and "repair-ray logs sweep-sdk-1" in out
    assert "[pairs] 6/6 pairs done" in out and "job sweep-sdk-1 SUCCEEDED" in out
    assert "joined the Ray cluster" in out  # the entrypoint joined the job's cluster by RAY_ADDRESS
    # --follow streamed the running job's log (tail_job_logs, with the token): each line once
    assert submitted.stdout.count("[pairs] 6/6 pairs done") == 1 and "WebSocket closed" not in out

    logs = subprocess.run([*cli, "logs", "sweep-sdk-1", "--address", address], env=env, capture_output=True, text=True)
    assert logs.returncode == 0 and "[pairs] 6/6 pairs done" in logs.stdout
    followed = subprocess.run(
        [*cli, "logs", "sweep-sdk-1", "--address", address, "--follow"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert followed.returncode == 0, followed.stdout + followed.stderr
    # an ended job's stream is its whole log, from the first line, once; then how it ended
    assert followed.stdout == logs.stdout + "[logs] job sweep-sdk-1 SUCCEEDED\n"
    stopped = subprocess.run(
        [*cli, "stop", "sweep-sdk-1", "--address", address], env=env, capture_output=True, text=True
    )
    assert "SUCCEEDED" in stopped.stdout  # a finished job stays finished

    # the job as the cluster keeps it (Jobs API): its runtime environment holds no credential
    probe = (
        "import json, sys; from ray.job_submission import JobSubmissionClient; "
        "print(json.dumps(JobSubmissionClient(sys.argv[1]).get_job_info('sweep-sdk-1').runtime_env))"
    )
    info = subprocess.run([sys.executable, "-c", probe, address], env=env, capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    runtime_env = json.loads(info.stdout.strip().splitlines()[-1]) or {}
    variables = runtime_env.get("env_vars", {})
    assert not {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"} & set(variables)
    assert env["AWS_SECRET_ACCESS_KEY"] not in json.dumps(runtime_env)
    tables = load_tables(str(tmp_path / "runs" / "submitted"))
    assert len(tables["pairs"]) == 2 * 3 * 6 and (tables["pairs"]["status"] == "ok").all()
    assert set(tables["models"].arch) == {"mlp", "my_nets.models:make"}


def jobs_sdk(call: str, address: str, env: dict) -> str:
    """What ``JobSubmissionClient(address).<call>`` returns, asked by a client in ``env`` (with the token)."""
    code = f"import sys; from ray.job_submission import JobSubmissionClient as C; print(C(sys.argv[1]).{call})"
    out = subprocess.run([sys.executable, "-c", code, address], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_stop_ends_a_running_job_on_a_real_head(ray_head_with_token, tmp_path, subprocesses):
    """`repair-ray stop` through the real Jobs API (the other stop tests use a stand-in client): the
    job is STOPPED, and its entrypoint process is gone."""
    import psutil

    address, _, env = ray_head_with_token
    pid_file = tmp_path / "entrypoint.pid"
    sleeper = f"import os, pathlib, time; pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); time.sleep(600)"
    entrypoint = f"python -c {shlex.quote(sleeper)}"
    assert jobs_sdk(f"submit_job(entrypoint={entrypoint!r}, submission_id='sleeper-1')", address, env) == "sleeper-1"
    deadline = time.time() + 120
    while not pid_file.exists() or not pid_file.read_text():  # the job runs: its entrypoint has started
        assert time.time() < deadline, ray_cli(["job", "logs", "sleeper-1", "--address", address], env).stdout
        time.sleep(0.2)
    entrypoint_process = psutil.Process(int(pid_file.read_text()))

    stopped = subprocess.run(
        [sys.executable, "-m", "repair_ray", "stop", "sleeper-1", "--address", address],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "[stop] job sleeper-1 STOPPED" in stopped.stdout
    assert jobs_sdk("get_job_status('sleeper-1')", address, env).rsplit(".", 1)[-1] == "STOPPED"
    gone, _ = psutil.wait_procs([entrypoint_process], timeout=60)
    assert gone, "the stopped job's entrypoint still runs"


# ---------------------------------------------------------------------------------------------
# Clusters that grow: requests judged against what the cluster can ever have, not what is up now
# ---------------------------------------------------------------------------------------------

CPU_HEAD = {"CPU": 1.0}
GPU_NODE = {"CPU": 2.0, "GPU": 1.0}


def shape(
    current: dict, maximum: dict | None, largest: dict | None, *, autoscaling: bool, started_here: bool = False
) -> ClusterShape:
    return ClusterShape(current, maximum, largest, autoscaling, started_here)


# a CPU-only head now; up to two GPU nodes once the autoscaler adds them
GROWING = shape(CPU_HEAD, {"CPU": 5.0, "GPU": 2.0}, {"CPU": 2.0, "GPU": 1.0}, autoscaling=True)


def resolve(cpu: float, gpu: float, cluster: ClusterShape, lines: list[str] | None = None) -> tuple[float, float]:
    say = lines.append if lines is not None else print
    return resolve_resources(ResourceSpec(cpu=cpu, gpu=gpu), "resources.train", say, cluster)


def test_gpu_request_is_kept_when_the_autoscaler_can_add_gpu_nodes_that_are_not_up_yet():
    lines: list[str] = []
    assert resolve(1, 0.5, GROWING, lines) == (1, 0.5)
    assert lines == [
        "[cluster] resources.train.gpu is 0.5: no GPU is up yet; waiting for the autoscaler to add GPU nodes"
    ]


def test_trials_in_flight_follow_the_maximum_size_of_the_cluster_not_the_nodes_up_now():
    assert tasks_in_flight(None, 1, 0.5, GROWING) == 4  # two GPU nodes, two half-GPU trials each
    assert tasks_in_flight(None, 1, 0, GROWING) == 5
    assert tasks_in_flight(None, 1, 0.5, GROWING, per_slot=2) == 8  # the pair stage keeps twice as many
    assert tasks_in_flight(3, 1, 0.5, GROWING) == 3  # max_trials_in_flight / max_pairs_in_flight win


def test_an_autoscaler_that_does_not_say_its_size_gets_every_ready_task_as_demand():
    unknown = shape(CPU_HEAD, None, None, autoscaling=True)
    lines: list[str] = []
    assert resolve(1, 1, unknown, lines) == (1, 1)
    assert any("resources.train.gpu is 1: no GPU is up yet" in line for line in lines)
    assert tasks_in_flight(None, 1, 1, unknown) == MAX_IN_FLIGHT


def test_gpu_request_that_no_node_type_can_hold_is_a_config_error_naming_the_key():
    cpu_only = shape(CPU_HEAD, {"CPU": 9.0}, {"CPU": 4.0}, autoscaling=True)
    with pytest.raises(ConfigError, match=r"^resources\.train\.gpu is 0\.5 but no node type of this cluster has a GPU"):
        resolve(1, 0.5, cpu_only)
    with pytest.raises(
        ConfigError, match=r"resources\.train\.gpu is 2 but no node type of this cluster has more than 1"
    ):
        resolve(1, 2, GROWING)


def test_cpu_request_is_judged_against_the_largest_node_type_not_the_whole_cluster():
    with pytest.raises(
        ConfigError, match=r"resources\.train\.cpu is 3 but no node type of this cluster has more than 2"
    ):
        resolve(3, 0, GROWING)  # the whole cluster can have 5 CPUs, but no one node 3


def test_a_joined_fixed_cluster_without_gpus_is_a_config_error():
    fixed = shape({"CPU": 4.0}, {"CPU": 4.0}, {"CPU": 2.0}, autoscaling=False)
    with pytest.raises(ConfigError, match=r"gpu is 1 but no node of this cluster \(it does not autoscale\) has a GPU"):
        resolve(1, 1, fixed)


def test_a_local_cluster_started_here_falls_back_to_the_cpu_and_cuts_the_cpu_request():
    laptop = shape({"CPU": 2.0}, {"CPU": 2.0}, {"CPU": 2.0}, autoscaling=False, started_here=True)
    lines: list[str] = []
    assert resolve(4, 0.5, laptop, lines) == (2, 0)
    assert any("resources.train.gpu is 0.5 but the cluster has no GPU: running on CPU" in line for line in lines)
    assert any("resources.train.cpu is 4 but the cluster has 2 CPUs" in line for line in lines)


def test_the_shape_of_the_session_cluster_is_fixed_and_started_here(ray_session):
    # a fixed cluster's monitor reports too, a few seconds after the start (its node types named after
    # its nodes): judged once that report is there, or a GPU request would wait for no autoscaler
    import json
    import time

    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    deadline = time.time() + 30
    while time.time() < deadline:
        status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        if status and "autoscaler_report" in json.loads(status):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the session cluster's monitor never reported")
    lines: list[str] = []
    here = cluster_shape(lines.append)
    assert lines == []  # no private Ray API it reads has changed
    assert not here.autoscaling and here.started_here
    assert here.maximum == here.current and here.largest_node["CPU"] == here.current["CPU"]


# A real Ray head with Ray's fake multi-node autoscaler (v1, the launcher's default in 2.60): it
# starts worker "nodes" as local processes when tasks ask for them. ray.cluster_utils.
# AutoscalingCluster would run `ray stop --force` (every Ray cluster of the machine) and reads an
# example.yaml that the 2.60 wheel lacks, so the head is started here the way it does (processes.ray_head).
FAKE_WORKER_ID = re.compile(r"^f{51}0000[1-9]$")  # the fake provider's ids of the nodes it launches
GPU_NODE_TYPE = {
    "gpu_node": {
        "resources": {"CPU": 2, "GPU": 1, "object_store_memory": 100_000_000},
        "node_config": {},
        "min_workers": 0,
        "max_workers": 2,
    }
}


def fake_autoscaling_config(gcs_address: str, worker_types: dict) -> dict:
    head = {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": "fake_multinode",
        "max_workers": 8,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,  # else the fake nodes look for a head on port 6379
        },
        "available_node_types": {**worker_types, "ray.head.default": head},
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@contextlib.contextmanager
def fake_autoscaling_head(start_head, worker_types: dict | None) -> Iterator[tuple[str, dict]]:
    """(GCS address, environment for drivers) of a head with 1 CPU, no GPU and no worker node yet,
    autoscaling to ``worker_types`` (None: a fixed one-node cluster); every process it started, the
    autoscaled nodes included, is killed at the end."""
    import ray

    config_folder = tempfile.mkdtemp(prefix="ras", dir="/tmp")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }

    def options() -> list[str]:
        """The head's port: the fake nodes need it in the autoscaling config, before the head starts."""
        if worker_types is None:
            return []
        port = free_port()  # ray_head starts again with another if it is taken meanwhile
        config_file = Path(config_folder, f"autoscaling-{port}.json")
        address = f"{ray.util.get_node_ip_address()}:{port}"
        config_file.write_text(json.dumps(fake_autoscaling_config(address, worker_types)))
        return ["--port", str(port), "--autoscaling-config", str(config_file)]

    try:
        with start_head(env, options=options) as head:
            wait_for_autoscaler(head.address)
            yield head.address, head.env
    finally:
        shutil.rmtree(config_folder, ignore_errors=True)


def wait_for_autoscaler(address: str, timeout: float = 60) -> None:
    """Until the autoscaler's first status report is in the GCS (how the sweep recognises it)."""
    from ray._raylet import GcsClient

    gcs = GcsClient(address=address)
    deadline = time.time() + timeout
    while b"autoscaler_report" not in (gcs.internal_kv_get(b"__autoscaling_status", None) or b""):
        assert time.time() < deadline, "the autoscaler never reported"
        time.sleep(0.5)


def overlapping(intervals: list[tuple[str, str]]) -> bool:
    """Whether any two of the (start, end) intervals overlap in time."""
    ordered = sorted(intervals)
    return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(ordered))


@pytest.mark.slow
def test_gpu_sweep_on_an_autoscaling_cluster_without_gpu_nodes_yet_brings_them_and_trains_on_them(
    tmp_path, own_ray_head, subprocesses
):
    root = str(tmp_path / "runs")
    config = tiny_sweep(
        "grow",
        root,
        seeds=4,
        resources={"train": {"cpu": 1, "gpu": 0.5}},
        dataset={"name": "synthetic", "shape": [1, 8, 8], "num_classes": 4, "train_size": 2048, "test_size": 256},
    )
    path = write_yaml(tmp_path / "sweep.yaml", config)
    with fake_autoscaling_head(own_ray_head, GPU_NODE_TYPE) as (address, env):
        started = time.time()
        out = subprocess.run(
            [sys.executable, "-m", "repair_ray.cli", "run", path, "--address", address],
            env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path,
        )  # fmt: skip
        seconds = time.time() - started
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "no GPU is up yet" in out.stdout and "running on CPU" not in out.stdout
    tables = load_tables(f"{root}/grow")
    models, pairs = tables["models"], tables["pairs"]
    assert sorted(models["seed"]) == [0, 1, 2, 3] and (models["status"] == "ok").all()
    assert len(pairs) == 6 * 6 and not pairs.duplicated(KEY).any() and (pairs["status"] == "ok").all()
    assert all(FAKE_WORKER_ID.match(node) for node in models["node_id"]), "a trial ran on the CPU-only head"
    intervals = list(zip(models["started_at"].astype(str), models["finished_at"].astype(str), strict=True))
    assert overlapping(intervals), "the trials ran one at a time"
    print(f"autoscaled sweep: {seconds:.0f}s on {models['node_id'].nunique()} GPU node(s)")


def test_gpu_request_on_an_autoscaling_cluster_whose_node_types_have_no_gpu_fails_at_once(
    tmp_path, own_ray_head, subprocesses
):
    """Ray 2.60's autoscalers do not report their node types to the GCS (later ones do); one that
    does, reported here as Ray's own tests do, makes an impossible request a config error (exit 2)."""
    from ray._raylet import GcsClient
    from ray.core.generated import autoscaler_pb2

    path = write_yaml(tmp_path / "sweep.yaml", tiny_sweep("never", str(tmp_path / "runs"), seeds=2,
                                                          resources={"pair": {"gpu": 0.5}}))  # fmt: skip
    cpu_nodes = {"cpu_node": {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0, "max_workers": 2}}
    with fake_autoscaling_head(own_ray_head, cpu_nodes) as (address, env):
        reported = autoscaler_pb2.ClusterConfig()
        for name, count, resources in (("ray.head.default", 1, {"CPU": 1}), ("cpu_node", 2, {"CPU": 2})):
            group = reported.node_group_configs.add(name=name, max_count=count)
            group.resources.update(resources)
        GcsClient(address=address).report_cluster_config(reported.SerializeToString())
        out = subprocess.run(
            [sys.executable, "-m", "repair_ray.cli", "run", path, "--address", address],
            env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    assert "error: resources.pair.gpu is 0.5 but no node type of this cluster has a GPU: " in out.stderr
    assert "[train]" not in out.stdout  # nothing ran


def test_gpu_request_on_a_joined_cluster_without_autoscaler_and_without_gpus_fails_at_once(
    tmp_path, own_ray_head, subprocesses
):
    """Its head's monitor is the read-only one that every Ray head runs: not an autoscaler."""
    path = write_yaml(tmp_path / "sweep.yaml", tiny_sweep("fixed", str(tmp_path / "runs"), seeds=2,
                                                          resources={"train": {"gpu": 1}}))  # fmt: skip
    with fake_autoscaling_head(own_ray_head, None) as (address, env):
        out = subprocess.run(
            [sys.executable, "-m", "repair_ray.cli", "run", path, "--address", address],
            env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    assert "error: resources.train.gpu is 1 but no node of this cluster (it does not autoscale) has a GPU" in out.stderr
