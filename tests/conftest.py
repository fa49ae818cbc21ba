"""Shared fixtures: data root, seeds, and ONE local Ray cluster per pytest session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("REPAIR_RAY_DATA", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Dummy storage credentials in the environment of every Ray process the tests start, as a cluster
# provides them to its nodes: repair_ray forwards no credential to workers (only endpoints).
for _key, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}.items():
    os.environ.setdefault(_key, _value)

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray cluster (2 CPUs, no dashboard), started once and shut down at the end."""
    import ray

    # address="local": a cluster of its own, never a `ray start` cluster someone runs on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def free_port() -> int:
    """A port free now. Another process may take it before the caller's server binds it: only for
    servers that must be told a port, by callers that start again with another when the bind fails
    (a server that can bind port 0 and say which port it got is better; an address where nothing
    may listen is :func:`closed_port`)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def closed_port():
    """A port on 127.0.0.1 where nothing listens for the whole test: it is bound here without
    listening (a connection is refused), so no other process can take it meanwhile."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30) -> None:
    import socket
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


def start_moto_server(log: Path, timeout: float = 60) -> tuple[object, int]:
    """moto's standalone server on a port the OS picks (``-p 0``): (its process, the port it says it
    listens on). Its log goes to ``log``, a file, so a busy server never blocks on a full pipe."""
    import re
    import subprocess
    import sys
    import time

    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-u", "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"], stdout=out, stderr=out
        )
    deadline = time.time() + timeout
    while not (found := re.search(r"Running on http://127\.0\.0\.1:(\d+)", log.read_text())):
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            server.wait()
            raise RuntimeError(f"moto's server did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return server, int(found.group(1))


@pytest.fixture(scope="session")
def s3_bucket(tmp_path_factory):
    """A real S3 API on loopback (moto's standalone server) and a bucket in it; yields ``s3://bucket``.

    The endpoint and credentials go into this process's environment, where pyarrow and every
    process started from here (drivers, and through them their Ray workers) find them.
    """
    server, port = start_moto_server(tmp_path_factory.mktemp("moto") / "server.log")
    wait_for_port(port)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    boto3.client("s3").create_bucket(Bucket="repair-ray-test")
    try:
        yield "s3://repair-ray-test"
    finally:
        server.terminate()
        server.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
