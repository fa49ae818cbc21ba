"""Taking a sweep's lease from a holder that is still there, with real processes (docs/resuming.md,
"One writer per sweep"): `run --take-over` takes a live lease, `REPAIR_RAY_LEASE_TTL` decides when
a lease that stopped being renewed is taken without it, `status` shows the holder, and the run
that lost its lease stops with the error the docs name, at once or, when it ignores SIGINT, once
the work in hand is done, starting no new trial or pair."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from repair_ray.cli import main
from repair_ray.sweep.config import parse_config
from repair_ray.sweep.lease import LEASE_NAME, Lease, LeaseHeld, read_holder
from repair_ray.sweep.stored import save_config

from .helpers import tiny_sweep, write_yaml

REPO = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()

# A process that holds the lease of the sweep at argv[1] while it "works" (until the file argv[2]
# exists), touching argv[3] when it learns that its lease was lost. argv[4]: what SIGINT does to it.
HOLDER = """
import signal, sys, time
from pathlib import Path
from repair_ray.sweep.lease import Lease
root, done, lost, sigint = sys.argv[1:5]
signal.signal(signal.SIGINT, signal.SIG_IGN if sigint == "ignore" else signal.default_int_handler)
with Lease(root, say=print, on_lost=lambda: Path(lost).touch()):
    print("holding", flush=True)
    while not Path(done).exists():
        time.sleep(0.05)
    print("work done", flush=True)
"""


def small_sweep(name: str, root: Path) -> dict:
    return tiny_sweep(
        name, str(root), seeds=2, align=["none"], correction=["none"], alphas=3, train={"epochs": 1, "lr": 0.05}
    )


def start_holder(root: Path, tmp_path: Path, *, sigint: str, ttl: float) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root), str(tmp_path / "done"), str(tmp_path / "lost"), sigint],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "REPAIR_RAY_LEASE_TTL": str(ttl)},
        start_new_session=True,
    )
    wait_until(lambda: (h := read_holder(str(root))) is not None and h.pid == holder.pid, holder, "took the lease")
    return holder


def wait_until(condition, process: subprocess.Popen | None, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended before it {what}: {process.communicate()}")
        if time.time() > deadline:
            raise AssertionError(f"it never {what}")
        time.sleep(0.05)


def end(process: subprocess.Popen) -> None:
    """Kill what a test started and is still running (its own process group only)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    try:
        return process.communicate(timeout=timeout)[0]
    finally:
        end(process)


def status_line(root: Path) -> str:
    shown = CliRunner().invoke(main, ["status", str(root)])
    assert shown.exit_code == 0, shown.output
    return next((line for line in shown.output.splitlines() if line.startswith("run:")), "")


@pytest.fixture
def address(ray_session):
    return ray_session.get_runtime_context().gcs_address


def test_run_take_over_takes_a_live_lease_and_its_holder_ignoring_sigint_stops_with_lease_lost_after_its_work(
    address, tmp_path, subprocesses
):
    data = small_sweep("taken", tmp_path / "runs")
    config_path = write_yaml(tmp_path / "sweep.yaml", data)
    save_config(parse_config(data))  # a sweep folder that status can read
    root = tmp_path / "runs" / "taken"
    holder = start_holder(root, tmp_path, sigint="ignore", ttl=6)  # renewed every 1.5 s: live throughout
    try:
        assert status_line(root).startswith(f"run:    running, host {HOST}, pid {holder.pid} (run ")

        refused = subprocesses.start_cli("run", config_path, "--address", address)
        out = finish(refused)
        assert refused.returncode == 3, out
        assert f"is being run by another `repair-ray run`: host {HOST}, pid {holder.pid}" in out
        assert "--take-over" in out

        taker = subprocesses.start_cli("run", config_path, "--address", address, "--take-over")
        out = finish(taker)
        assert taker.returncode == 0, out
        assert f"warning: took over the lease of {root} of host {HOST}, pid {holder.pid}" in out
        assert "(taken over with --take-over)" in out
        assert "[pairs] 1/1 pairs done" in out

        # the holder learnt that it lost the lease, yet works on: it ignores SIGINT
        wait_until(lambda: (tmp_path / "lost").exists(), holder, "learnt of the take-over", timeout=30)
        assert holder.poll() is None
        assert not (root / LEASE_NAME).exists()  # the taker released its lease; the loser wrote none back
        assert status_line(root) == ""  # nobody holds the sweep

        (tmp_path / "done").touch()  # its work in hand is done: it stops with the error
        stdout, stderr = holder.communicate(timeout=60)
    finally:
        end(holder)
    assert holder.returncode == 1
    assert stdout.splitlines()[-1] == "work done"
    assert f"LeaseLost: the lease of {root} was taken by host {HOST}, pid {taker.pid} (run " in stderr
    assert "this run stopped (another run now writes the sweep)" in stderr
    assert not (root / LEASE_NAME).exists()  # leaving, the loser deleted nothing and wrote nothing


def test_lease_ttl_env_a_lease_no_longer_renewed_is_taken_without_take_over_only_once_stale(
    address, tmp_path, subprocesses
):
    data = small_sweep("stale", tmp_path / "runs")
    config_path = write_yaml(tmp_path / "sweep.yaml", data)
    save_config(parse_config(data))
    root = tmp_path / "runs" / "stale"
    holder = start_holder(root, tmp_path, sigint="default", ttl=6)
    try:
        held = read_holder(str(root))
        assert held is not None and held.ttl == 6.0  # REPAIR_RAY_LEASE_TTL of the holder
        os.kill(holder.pid, signal.SIGSTOP)  # hung: its pid lives on this host, but nothing renews the lease
        held = read_holder(str(root))
        assert held is not None and not held.stale(time.time())
        with pytest.raises(LeaseHeld, match=f"host {HOST}, pid {holder.pid}"):
            Lease(str(root), take_over=False, say=lambda _: None).acquire()  # fresh: refused
        assert status_line(root).startswith(f"run:    running, host {HOST}, pid {holder.pid}")

        wait_until(lambda: time.time() > held.expires_at + 0.5, None, "became stale", timeout=30)
        assert status_line(root).startswith(f"run:    stale: its run looks dead, host {HOST}, pid {holder.pid}")
        taker = subprocesses.start_cli("run", config_path, "--address", address)  # no --take-over
        out = finish(taker)
        assert taker.returncode == 0, out
        assert f"warning: took over the lease of {root} of host {HOST}, pid {holder.pid}" in out
        assert "(stale: its heartbeat is older than its ttl)" in out

        # woken, the holder finds its lease gone and interrupts itself (SIGINT to its main thread)
        os.kill(holder.pid, signal.SIGCONT)
        stdout, stderr = holder.communicate(timeout=60)
    finally:
        end(holder)
    assert holder.returncode == 1
    assert "work done" not in stdout  # interrupted in the middle of its work
    assert f"LeaseLost: the lease of {root} was deleted; this run stopped" in stderr
    assert "KeyboardInterrupt" in stderr  # how it was interrupted: the cause of the LeaseLost


def test_a_sweep_run_ignoring_sigint_starts_no_new_trial_or_pair_once_its_lease_is_taken(
    address, tmp_path, subprocesses
):
    data = tiny_sweep(
        "ignores",
        str(tmp_path / "runs"),
        seeds=6,
        align=["none"],
        correction=["none"],
        alphas=3,
        max_trials_in_flight=1,
        dataset={"name": "synthetic", "shape": [1, 8, 8], "num_classes": 4, "train_size": 2048, "test_size": 256},
        train={"epochs": 4, "batch_size": 16, "lr": 0.02, "checkpoint_every": 1},
    )
    root = tmp_path / "runs" / "ignores"
    # as `nohup repair-ray run ... &` from a script: SIGINT ignored; a short ttl so it notices soon
    loser = subprocesses.start_cli(
        "run",
        write_yaml(tmp_path / "sweep.yaml", data),
        "--address",
        address,
        env={"REPAIR_RAY_LEASE_TTL": "2"},
        sigint=signal.SIG_IGN,
    )
    try:
        wait_until(lambda: any(root.glob("checkpoints/*/seed-*.pt")), loser, "started training", timeout=300)
        taker = Lease(str(root), take_over=True, ttl=600, say=lambda _: None)
        taker.acquire()  # another run takes the sweep while the first trial trains
        models_at_take_over = len(list(root.glob("tables/models/*.parquet")))
        out = finish(loser, timeout=300)
    finally:
        end(loser)
    assert loser.returncode == 3, out
    assert f"was taken by host {HOST}, pid {os.getpid()}" in out and "this run stopped" in out
    models = len(list(root.glob("tables/models/*.parquet")))
    # the trial in hand finished (one in flight; one more where it began before the loss was seen)
    assert models <= models_at_take_over + 2 and models < 6, out
    assert not list(root.glob("tables/pairs/*.parquet")), out  # no pair started after the loss
    assert "[train] stopped after" in out and "the rest were not started" in out
    assert "left out" not in out  # the pairs not reached are the next run's, not failures
    assert read_holder(str(root)).run_id == taker.holder.run_id  # the winner's lease, untouched
    taker.release()
