"""Operating a sweep: which Ray cluster a run uses, and exit codes that tell schedulers the truth."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .helpers import tiny_sweep, write_yaml


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "repair_ray", "run", *args], capture_output=True, text=True, timeout=600, env=env
    )


def without_ray_address() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def test_a_diverging_sweep_exits_1_naming_the_failures_on_a_fresh_local_cluster(ray_session, tmp_path, subprocesses):
    """No --address and no RAY_ADDRESS: a fresh local cluster, never the one already running here."""
    data = tiny_sweep("diverges", str(tmp_path), seeds=2, train={"epochs": 2, "lr": 1e12, "momentum": 0.0})
    out = run_cli(write_yaml(tmp_path / "sweep.yaml", data), "--num-cpus", "2", env=without_ray_address())
    assert out.returncode == 1, out.stdout + out.stderr
    assert "started a fresh local Ray cluster for this run" in out.stdout
    assert ray_session.get_runtime_context().gcs_address not in out.stdout
    assert "2 model(s) failed" in out.stderr and "1 pair(s) left out" in out.stderr
    assert out.stderr.count("nan_loss") == 2 and "trial " in out.stderr
    # progress counts a diverged trial as failed, not ok; every progress line starts with its UTC time
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \[train\] 2/2 trials done, 2 failed", out.stdout, re.M)
    assert re.search(r"^\S+Z \[sweep\] 2 model\(s\) failed", out.stderr, re.M)


def test_ray_address_joins_that_cluster_and_a_clean_sweep_exits_0(ray_session, tmp_path, subprocesses):
    address = ray_session.get_runtime_context().gcs_address
    data = tiny_sweep("joins", str(tmp_path), seeds=2, align=["none"], correction=["none"])
    out = run_cli(write_yaml(tmp_path / "sweep.yaml", data), env={**without_ray_address(), "RAY_ADDRESS": address})
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"joined the Ray cluster at {address}" in out.stdout


def test_no_secret_is_written_by_us_or_by_ray_on_our_behalf(s3_bucket, tmp_path, subprocesses):
    """Dummy credentials in the driver's environment; afterwards no file of Ray's temp dir, no object
    of the sweep's storage, and no runtime environment holds them."""
    import shutil
    import uuid

    import boto3

    secret, token = f"leak-check-{uuid.uuid4().hex}", f"leak-token-{uuid.uuid4().hex}"
    ray_tmp = f"/tmp/rrleak-{uuid.uuid4().hex[:6]}"  # short: Ray's socket paths must fit 107 bytes
    root = f"{s3_bucket}/leak-{uuid.uuid4().hex[:6]}"
    data = tiny_sweep("leak", root, seeds=2, align=["none", "activation"], correction=["none"])
    env = {
        **without_ray_address(),
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_SESSION_TOKEN": token,
        "RAY_TMPDIR": ray_tmp,
    }
    try:
        out = run_cli(write_yaml(tmp_path / "sweep.yaml", data), "--num-cpus", "2", env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "started a fresh local Ray cluster" in out.stdout
        files = [p for p in Path(ray_tmp).rglob("*") if p.is_file() and not p.is_socket()]
        assert len(files) > 20  # Ray's logs and session files really are there
        for path in files:
            content = path.read_bytes()
            assert secret.encode() not in content and token.encode() not in content, path
        client = boto3.client("s3")
        bucket, prefix = root.removeprefix("s3://").split("/", 1)
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
        assert any(k.endswith(".pt") for k in keys) and any(k.endswith(".parquet") for k in keys)
        for key in keys:
            content = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert secret.encode() not in content and token.encode() not in content, key
        assert secret not in out.stdout + out.stderr
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_storage_that_cannot_be_written_fails_before_ray_starts_naming_it(s3_bucket, tmp_path, subprocesses):
    """Storage is infrastructure: exit 3 (not 2, a bad config), one line naming the place."""
    data = tiny_sweep("nowhere", "s3://no-such-bucket/runs", seeds=2)
    out = run_cli(write_yaml(tmp_path / "sweep.yaml", data), env=without_ray_address())
    assert out.returncode == 3, out.stdout + out.stderr
    assert out.stderr.startswith("error: storage s3://no-such-bucket/runs/nowhere unreachable: cannot write to it")
    assert len(out.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert "Ray" not in out.stdout


def test_without_an_address_a_run_never_joins_the_ray_start_cluster_of_the_machine(
    tmp_path, own_ray_head, subprocesses
):
    """A real `ray start --head`, the machine's "current" cluster for this test: a plain ray.init()
    would join it. Its Ray temp dir is the test's own (RAY_TMPDIR, for the head and the runs), so
    Ray's machine-wide /tmp/ray/ray_current_cluster, which other runs on this machine use, is never
    touched; the head's processes are ended by their session, never by a name or a port."""
    from ray._common.utils import get_ray_address_file

    machine_wide = Path(get_ray_address_file(None))  # Ray's default, /tmp/ray/ray_current_cluster
    before = machine_wide.read_bytes() if machine_wide.exists() else None
    env = {**without_ray_address(), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    with own_ray_head(env) as head:
        current = Path(head.temp_root, "ray", "ray_current_cluster")  # what ray.init() finds with RAY_TMPDIR set
        assert current.read_text().strip() == head.address
        data = tiny_sweep("alone", str(tmp_path), seeds=2, align=["none"], correction=["none"])
        config = write_yaml(tmp_path / "sweep.yaml", data)
        alone = run_cli(config, "--num-cpus", "2", env=head.env)
        assert alone.returncode == 0, alone.stdout + alone.stderr
        assert "started a fresh local Ray cluster" in alone.stdout and head.address not in alone.stdout
        grown = write_yaml(tmp_path / "grown.yaml", {**data, "align": ["none", "weight"]})  # something to do
        joined = run_cli(grown, "--address", "auto", env=head.env)  # asked for: joins it
        assert joined.returncode == 0, joined.stdout + joined.stderr
        assert f"joined the Ray cluster at {head.address}" in joined.stdout
    assert (machine_wide.read_bytes() if machine_wide.exists() else None) == before
