"""Real processes for the tests: sweep drivers started, SIGKILLed and re-run; stray Ray processes reaped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time


def start_driver(config_path: str, address: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "repair_ray.cli", "run", config_path, "--address", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so the kill takes all of it
    )


def kill_when(process: subprocess.Popen, condition, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the driver finished before it could be killed:\n{process.stdout.read()}")
        if time.time() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError("the kill condition never came")
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()
    assert process.returncode == -signal.SIGKILL


def wait_for_idle_cluster(ray, timeout: float = 60) -> None:
    """Ray reaps a dead driver's workers and actors; wait until all CPUs are free again."""
    deadline = time.time() + timeout
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0):
        if time.time() > deadline:
            raise AssertionError("the killed driver's workers never went away")
        time.sleep(0.2)


def run_driver(config_path: str, address: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "repair_ray.cli", "run", config_path, "--address", address],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def kill_processes_mentioning(text: str) -> int:
    """SIGKILL every process whose command line contains ``text``, and all their children.

    ``ray stop`` would also stop the test session's own cluster; a Ray head started by a test
    with its own ``--temp-dir`` is found by that folder instead.
    """
    import psutil

    found = set()
    for process in psutil.process_iter(["cmdline"]):
        try:
            if text in " ".join(process.info["cmdline"] or []):
                found.add(process)
                found.update(process.children(recursive=True))
        except psutil.Error:
            continue
    for process in found:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(list(found), timeout=15)
    return len(found)
