"""One writer per sweep: the lease taken by `run`, on local disk and on S3 (moto's server); refused URIs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from repair_ray.io import storage
from repair_ray.sweep.config import ConfigError, parse_config
from repair_ray.sweep.lease import LEASE_NAME, Holder, Lease, LeaseHeld, LeaseLost, _S3Store, read_holder
from repair_ray.sweep.runner import run_sweep

from .helpers import list_names, tiny_sweep, write_yaml

REPO = Path(__file__).resolve().parents[1]
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY"  # AWS secrets may hold '/' and '+'
TOKEN = "ghp_EXAMPLETOKEN123"


def small_sweep(name: str, root: str) -> dict:
    return tiny_sweep(
        name,
        root,
        seeds=2,
        align=["none"],
        correction=["none"],
        alphas=3,
        train={"epochs": 1, "batch_size": 64, "lr": 0.05},
    )


def fake_lease(root: str, *, host: str = "elsewhere", pid: int = 1, age: float = 0.0, ttl: float = 60.0) -> Holder:
    """A lease of another run, with its last heartbeat ``age`` seconds ago."""
    now = time.time()
    holder = Holder(host, pid, "0123456789ab", now - age - 5, now - age, ttl)
    storage.makedirs(root)
    storage.write_bytes_atomic(storage.join(root, LEASE_NAME), holder.to_bytes())
    return holder


@pytest.fixture
def address(ray_session):
    return ray_session.get_runtime_context().gcs_address


# --------------------------------------------------------------------------------------------
# Runs


def test_two_runs_racing_on_one_sweep_one_proceeds_the_other_names_the_holder(address, tmp_path, subprocesses):
    config_path = write_yaml(tmp_path / "race.yaml", small_sweep("race", str(tmp_path / "runs")))
    drivers = [subprocesses.start_cli("run", config_path, "--address", address) for _ in range(2)]
    outputs = [driver.communicate(timeout=300)[0] for driver in drivers]
    codes = sorted(driver.returncode for driver in drivers)
    assert codes == [0, 3], outputs
    refused = outputs[[d.returncode for d in drivers].index(3)]
    assert "is being run by another `repair-ray run`: host" in refused and "--take-over" in refused
    assert "last heartbeat" in refused and "pid" in refused
    root = tmp_path / "runs" / "race"
    assert not (root / LEASE_NAME).exists()  # released when the winner ended
    assert len(list((root / "configs").iterdir())) == 1  # the refused run wrote nothing


def test_a_stale_lease_is_taken_over_and_the_lease_is_gone_when_the_run_ends(ray_session, tmp_path):
    config = parse_config(small_sweep("stale", str(tmp_path)))
    fake_lease(config.root, age=600, ttl=120)  # a run that died ten minutes ago elsewhere
    said: list[str] = []
    run_sweep(config, say=said.append)
    assert any("took over the lease" in line and "stale" in line and "host elsewhere" in line for line in said)
    assert not os.path.exists(os.path.join(config.root, LEASE_NAME))


def test_a_live_lease_refuses_run_sweep_before_anything_is_written(ray_session, tmp_path):
    config = parse_config(small_sweep("live", str(tmp_path)))
    fake_lease(config.root, age=1, ttl=120)
    with pytest.raises(LeaseHeld, match="host elsewhere, pid 1"):
        run_sweep(config, say=lambda _: None)
    assert set(os.listdir(config.root)) <= {".lease.lock", LEASE_NAME}  # no sweep.yaml, no current_keys.json
    assert read_holder(config.root).host == "elsewhere"  # left as it was


def test_the_lease_is_released_when_the_run_is_interrupted(ray_session, tmp_path):
    config = parse_config(small_sweep("interrupted", str(tmp_path)))

    def say(line: str) -> None:
        if "trials" in line:  # after the lease, sweep.yaml and the cluster: Ctrl+C
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, say=say)
    assert os.path.exists(os.path.join(config.root, "sweep.yaml"))
    assert not os.path.exists(os.path.join(config.root, LEASE_NAME))


def test_ctrl_c_of_a_running_cli_releases_the_lease(address, tmp_path, subprocesses):
    data = tiny_sweep("ctrlc", str(tmp_path), seeds=4, train={"epochs": 20, "batch_size": 16, "lr": 0.05})
    driver = subprocesses.start_cli("run", write_yaml(tmp_path / "ctrlc.yaml", data), "--address", address)
    root = tmp_path / "ctrlc"
    deadline = time.time() + 120
    while not (root / "tables" / "models").exists() and not list(root.glob("checkpoints/*/*")):
        assert driver.poll() is None and time.time() < deadline, driver.stdout.read()
        time.sleep(0.1)
    assert (root / LEASE_NAME).exists()
    os.killpg(driver.pid, signal.SIGINT)
    driver.communicate(timeout=120)
    assert driver.returncode != 0
    assert not (root / LEASE_NAME).exists()


def test_a_killed_run_on_this_host_leaves_a_lease_the_next_run_takes_over(tmp_path, subprocesses):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    fake_lease(str(tmp_path), host=socket.gethostname(), pid=dead.pid, age=1, ttl=120)
    said: list[str] = []
    with Lease(str(tmp_path), say=said.append) as lease:
        assert read_holder(str(tmp_path)).run_id == lease.holder.run_id
    assert "no longer runs on this host" in said[0]


# --------------------------------------------------------------------------------------------
# The lease itself


RACER = """
import os, sys, time
from pathlib import Path
from repair_ray.sweep.lease import Lease, LeaseHeld
signals, root = Path(sys.argv[1]), sys.argv[2]
(signals / f"ready-{os.getpid()}").touch()
deadline = time.monotonic() + 120
while not (signals / "go").exists() and time.monotonic() < deadline:
    time.sleep(0.002)
lease = Lease(root, say=lambda _: None)
try:
    lease.acquire()
except LeaseHeld:
    print("held", flush=True)
else:
    print("won", flush=True)
    while not (signals / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    lease.release()
"""


def test_many_processes_racing_for_one_local_lease_exactly_one_wins(tmp_path, subprocesses):
    """Six processes try at once (each imported and waiting for the same signal), and the winner
    holds the lease until every racer has answered: a slow start cannot make a second winner by
    coming after the first one released it."""
    signals, root = tmp_path / "signals", tmp_path / "sweep"
    signals.mkdir()
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(signals), str(root)], stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        for _ in range(6)
    ]
    try:
        deadline = time.monotonic() + 120
        while len(list(signals.glob("ready-*"))) < len(racers):
            assert time.monotonic() < deadline and all(r.poll() is None for r in racers), "a racer never got ready"
            time.sleep(0.05)
        (signals / "go").touch()
        results = sorted(racer.stdout.readline().strip() for racer in racers)
        (signals / "release").touch()
        assert results == ["held"] * 5 + ["won"]
        for racer in racers:
            racer.communicate(timeout=60)
            assert racer.returncode == 0
        assert not (root / LEASE_NAME).exists()
    finally:
        for racer in racers:  # only ours, by handle
            if racer.poll() is None:
                racer.kill()
                racer.wait()


def test_the_heartbeat_renews_the_lease(tmp_path):
    """Renewed every quarter of its ttl, a lease stays live past its ttl. A ttl of 5 s: the heartbeat
    thread may be late by nearly 4 s (a loaded machine) before the lease would look stale."""
    ttl = 5.0
    with Lease(str(tmp_path), ttl=ttl) as lease:
        taken = read_holder(str(tmp_path))
        deadline = time.time() + 120
        while (holder := read_holder(str(tmp_path))).heartbeat < taken.expires_at:  # renewed past the first ttl
            assert time.time() < deadline and not lease.lost.is_set(), "the lease was not renewed"
            time.sleep(0.2)
        assert holder.run_id == taken.run_id and holder.expires_at > taken.expires_at
        with pytest.raises(LeaseHeld):  # more than a ttl after it was taken, still live
            Lease(str(tmp_path), ttl=ttl).acquire()
        assert not lease.lost.is_set()
    assert read_holder(str(tmp_path)) is None


@pytest.fixture
def ctrl_c():
    """SIGINT raising KeyboardInterrupt in this process, as in a terminal (a session started in the
    background by a non-interactive shell has it ignored)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_a_run_whose_lease_was_taken_over_stops_with_a_clear_error(tmp_path, ctrl_c):
    lost = threading.Event()
    other = Lease(str(tmp_path), ttl=0.3, take_over=True, say=lambda _: None)
    mine = Lease(str(tmp_path), ttl=0.3, say=lambda _: None, on_lost=lost.set)
    with pytest.raises(LeaseLost, match="was taken by host .* this run stopped") as caught, mine:
        other.acquire()
        time.sleep(10)  # the heartbeat interrupts this (KeyboardInterrupt in the main thread)
    assert lost.is_set()
    assert isinstance(caught.value.__cause__, KeyboardInterrupt)
    assert read_holder(str(tmp_path)).run_id == other.holder.run_id  # the loser leaves the winner's lease
    other.release()


def test_a_run_whose_lease_was_deleted_stops(tmp_path, ctrl_c):
    with pytest.raises(LeaseLost, match="was deleted"), Lease(str(tmp_path), ttl=0.3, say=lambda _: None):
        os.remove(tmp_path / LEASE_NAME)
        time.sleep(10)


def test_the_lease_file_names_its_holder_in_utc(tmp_path):
    with Lease(str(tmp_path), ttl=30) as lease:
        data = json.loads((tmp_path / LEASE_NAME).read_text())
    assert data["run_id"] == lease.holder.run_id and data["pid"] == os.getpid()
    assert data["ttl_s"] == 30 and data["heartbeat"].endswith("Z") and data["expires_at"].endswith("Z")
    assert set(data) == {"host", "pid", "run_id", "started_at", "heartbeat", "expires_at", "ttl_s", "space"}


# --------------------------------------------------------------------------------------------
# S3 (a real S3 HTTP API on loopback)


def test_s3_conditional_create_race_between_clients_exactly_one_wins(s3_bucket):
    uri = storage.join(s3_bucket, "race-create", LEASE_NAME)
    stores = [_S3Store(uri) for _ in range(8)]  # a client each, as separate machines would have
    barrier = threading.Barrier(len(stores))
    versions: list = [None] * len(stores)

    def create(i: int) -> None:
        barrier.wait()
        versions[i] = stores[i].create(f"writer {i}".encode())

    threads = [threading.Thread(target=create, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [i for i, v in enumerate(versions) if v is not None]
    assert len(winners) == 1
    assert stores[0].read()[0] == f"writer {winners[0]}".encode()


def test_s3_take_over_race_of_a_stale_lease_exactly_one_wins(s3_bucket):
    uri = storage.join(s3_bucket, "race-take", LEASE_NAME)
    stores = [_S3Store(uri) for _ in range(4)]
    stale = stores[0].create(b"old")
    results = [stores[i].replace(f"taker {i}".encode(), stale) for i in range(4)]
    assert sum(r is not None for r in results) == 1
    assert not stores[1].delete(stale)  # the old version is gone: a conditional delete refuses
    assert stores[0].delete(next(r for r in results if r is not None))
    assert stores[0].read() is None


def test_s3_lease_refuses_a_second_run_takes_over_a_stale_one_and_is_released(s3_bucket):
    root = storage.join(s3_bucket, "leased")
    with Lease(root, ttl=30, say=lambda _: None), pytest.raises(LeaseHeld, match=f"host {socket.gethostname()}"):
        Lease(root, ttl=30).acquire()
    assert read_holder(root) is None and LEASE_NAME not in list_names(root)
    fake_lease(root, age=100, ttl=30)
    said: list[str] = []
    with Lease(root, ttl=30, say=said.append) as lease:
        assert read_holder(root).run_id == lease.holder.run_id
    assert "stale" in said[0] and read_holder(root) is None


def test_s3_heartbeat_notices_a_take_over(s3_bucket):
    root = storage.join(s3_bucket, "stolen")
    lost = threading.Event()
    with (
        pytest.raises(LeaseLost, match="was taken by host"),
        Lease(root, ttl=0.5, say=lambda _: None, on_lost=lost.set),
    ):
        Lease(root, ttl=30, take_over=True, say=lambda _: None).acquire()
        assert lost.wait(timeout=20)  # the holder's next heartbeat notices, and says so on leaving


# --------------------------------------------------------------------------------------------
# Storage URIs: queries and credentials are refused, redacted, before anything is written


@pytest.mark.parametrize(
    "uri",
    [
        f"s3://AKIAEXAMPLE:{SECRET}@bucket/runs",
        f"gs://user:{SECRET}@bucket/runs",
        f"s3://{TOKEN}@bucket/runs",
        f"s3://bucket/runs?aws_secret_access_key={SECRET}",
        f"s3://bucket/runs?region=us-east-1&session_token={SECRET}",
    ],
)
def test_credentials_in_a_storage_uri_are_refused_without_echoing_them(uri):
    with pytest.raises(ConfigError, match="holds credentials") as caught:
        parse_config(tiny_sweep("creds", uri))
    assert SECRET not in str(caught.value) and TOKEN not in str(caught.value)
    assert "AWS_ACCESS_KEY_ID" in str(caught.value)
    with pytest.raises(storage.StorageURIError) as caught:
        storage.join(uri, "sweep")
    assert SECRET not in str(caught.value) and TOKEN not in str(caught.value)


@pytest.mark.parametrize("uri", ["s3://bucket/runs?region=eu-west-1", "s3://bucket/runs?endpoint_url=http://x:9000"])
def test_a_query_in_a_storage_uri_is_refused_naming_the_environment(uri):
    with pytest.raises(ConfigError, match="query") as caught:
        parse_config(tiny_sweep("query", uri))
    assert "AWS_DEFAULT_REGION" in str(caught.value) and "AWS_ENDPOINT_URL" in str(caught.value)


def test_local_paths_keep_question_marks_and_at_signs(tmp_path):
    assert storage.refused(str(tmp_path / "a?b@c")) is None
    assert storage.refused("s3://bucket/run@2/x") is None


def test_cli_refuses_a_secret_uri_before_anything_is_written(s3_bucket, tmp_path, subprocesses):
    config_path = write_yaml(tmp_path / "c.yaml", tiny_sweep("creds", str(tmp_path / "unused")))
    bucket = s3_bucket.removeprefix("s3://")
    for uri in (f"s3://testing:{SECRET}@{bucket}/creds", f"{s3_bucket}/creds?secret_key={SECRET}"):
        out = subprocess.run(
            [sys.executable, "-m", "repair_ray.cli", "run", config_path, "--storage", uri],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert out.returncode == 2, out.stdout + out.stderr
        assert "holds credentials" in out.stderr and SECRET not in out.stdout + out.stderr
    assert list_names(f"{s3_bucket}/creds") == [] and not (tmp_path / "unused").exists()
    status = subprocess.run(
        [sys.executable, "-m", "repair_ray.cli", "status", f"s3://testing:{SECRET}@{bucket}/creds/creds"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert status.returncode == 2 and SECRET not in status.stdout + status.stderr


def test_a_holder_of_another_pid_namespace_on_a_host_of_the_same_name_is_judged_by_its_heartbeat():
    """Two containers can share a host name but not their PIDs: a dead PID here says nothing of a
    holder whose lease names another PID namespace (or boot); in this one, it is dead."""
    import dataclasses

    from repair_ray.sweep.lease import process_space

    here = process_space()
    assert here.count(":") >= 1 and here.split(":")[-1].isdigit()  # <boot id>:<pid namespace inode> on Linux
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1
    while _running(pid):  # a PID no process has now
        pid -= 1
    now = time.time()
    holder = Holder(socket.gethostname(), pid, "0123456789ab", now - 5, now, 60.0, here)
    assert holder.dead_here() and not holder.alive(now)
    elsewhere = dataclasses.replace(holder, space="another-boot:4026531836")
    assert not elsewhere.dead_here() and elsewhere.alive(now)  # its heartbeat is fresh
    assert not elsewhere.alive(now + 61)  # and it ends with its heartbeat
    # the lease file carries it; one written before it was recorded reads as unknown (host name only)
    assert Holder.from_bytes(holder.to_bytes()).space == here
    legacy = dataclasses.replace(holder, space="")
    assert "space" not in json.loads(legacy.to_bytes()) and Holder.from_bytes(legacy.to_bytes()).dead_here()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
