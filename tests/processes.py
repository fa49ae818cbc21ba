"""Real processes for the tests: sweep drivers started, SIGKILLed and re-run; Ray heads started in
their own temp dirs and ended by their session, never by a name or a port."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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


def session_processes(session: int) -> list:
    """The live processes of ``session``: the session that a process started with
    ``start_new_session=True`` leads, whose id is that process's PID.

    A ``ray start`` started so has its daemons, and their workers, in its session (workers take a
    process group of their own, not a session), and they stay there after ``ray start`` exits. The
    kernel gives no new process a PID that is still a session's id, so these are exactly the
    processes the test started: never someone else's Ray on the same machine.
    """
    import psutil

    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session:
                found.append(process)
        except OSError:  # gone meanwhile
            continue
    return found


def kill_session(session: int) -> int:
    """SIGKILL every process of ``session`` (see :func:`session_processes`); how many there were."""
    import psutil

    found = session_processes(session)
    for process in found:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(found, timeout=15)
    return len(found)


BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
DASHBOARD_URL = (  # where the head's dashboard listens, as it registered itself in the GCS
    "import sys, time\n"
    "from ray._raylet import GcsClient\n"
    "gcs, deadline = GcsClient(address=sys.argv[1]), time.time() + 120\n"
    "while not (url := gcs.internal_kv_get(b'webui:url', b'dashboard')) and time.time() < deadline:\n"
    "    time.sleep(0.5)\n"
    "print(url.decode() if url else '')\n"
)


@dataclass(frozen=True)
class RayHead:
    """A Ray head a test started: its GCS (``HOST:PORT``), its dashboard (``http://127.0.0.1:PORT``,
    when it has one), its ``RAY_TMPDIR`` (Ray's temp dir is ``<temp_root>/ray``, the
    ``ray_current_cluster`` file in it) and the environment for drivers and ``ray`` commands that
    use it (``RAY_TMPDIR`` included, so ``--address auto`` finds this head and nothing else)."""

    address: str
    dashboard: str | None
    temp_root: str
    env: dict[str, str]


@contextlib.contextmanager
def ray_head(
    env: dict[str, str],
    *,
    num_cpus: int = 1,
    dashboard: bool = False,
    options: Callable[[], list[str]] = list,
    attempts: int = 3,
) -> Iterator[RayHead]:
    """``ray start --head`` in a temp dir of its own, ended at exit by killing its session.

    Its ports are chosen by the OS (``--port 0``, ``--dashboard-port 0``, ...) and read back from
    the head and its GCS. Two cannot be: the Ray client server's (Ray wants a port number; taken
    meanwhile, the head runs without a client server, which no test uses) and a ``--port`` that
    ``options()`` gives (the fake autoscaler needs it in its config): a start that fails (that port
    taken meanwhile) is retried with fresh ones, up to ``attempts`` times; ``options()`` is called
    again for each. Nothing outside the temp dir is written: never Ray's machine-wide ``/tmp/ray``.
    """
    from .conftest import free_port, wait_for_port

    temp_root = tempfile.mkdtemp(prefix="rrh", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**env, "RAY_TMPDIR": temp_root, "PATH": f"{BIN}:{env.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    sessions: list[int] = []
    try:
        for attempt in range(attempts):
            extra = options()
            command = [
                str(BIN / "ray"), "start", "--head", "--num-cpus", str(num_cpus), "--disable-usage-stats",
                *([] if "--port" in extra else ["--port", "0"]),
                "--ray-client-server-port", str(free_port()),
                "--dashboard-agent-listen-port", "0", "--dashboard-agent-grpc-port", "0",
                "--metrics-export-port", "0", "--runtime-env-agent-port", "0",
                *(
                    ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", "0"]
                    if dashboard
                    else ["--include-dashboard", "false"]
                ),
                *extra,
            ]  # fmt: skip
            start = subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
            )
            sessions.append(start.pid)
            output = start.communicate(timeout=300)[0]
            if start.returncode == 0:
                break
            kill_session(start.pid)
            if attempt == attempts - 1:
                raise AssertionError(f"ray start failed {attempts} times; the last said:\n{output}")
        address = Path(temp_root, "ray", "ray_current_cluster").read_text().strip()
        url = None
        if dashboard:
            found = subprocess.run(
                [sys.executable, "-c", DASHBOARD_URL, address], env=env, capture_output=True, text=True, timeout=180
            )
            assert found.stdout.strip(), f"the dashboard never registered:\n{found.stdout}{found.stderr}"
            url = f"http://{found.stdout.strip()}"
            wait_for_port(int(url.rsplit(":", 1)[1]), timeout=60)
        yield RayHead(address, url, temp_root, env)
    finally:
        for session in sessions:
            kill_session(session)
        shutil.rmtree(temp_root, ignore_errors=True)


class Subprocesses:
    """The processes one test starts (conftest's ``subprocesses`` fixture): started through it or
    not, every child this pytest process gains during the test and that still runs at its end is
    killed then (with the session it leads, when it was started with ``start_new_session``)."""

    def __init__(self) -> None:
        import psutil

        self._before = {child.pid for child in psutil.Process().children()}

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 300)
        try:
            return subprocess.run(argv, **kwargs)
        except subprocess.TimeoutExpired as e:  # what it printed says where it hung
            printed = "".join(x.decode() if isinstance(x, bytes) else x for x in (e.stdout, e.stderr) if x)
            raise AssertionError(f"{argv} ran past {e.timeout} s; it printed:\n{printed[-6000:]}") from None

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(argv, **kwargs)

    def cli(self, *args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
        """``python -m repair_ray ARGS`` to its end, in this environment less ``RAY_ADDRESS``, plus ``env``."""
        environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        return self.run([sys.executable, "-m", "repair_ray", *args], env={**environment, **(env or {})}, **kwargs)

    def start_cli(
        self, *args: str, env: dict[str, str] | None = None, sigint: Any = signal.SIG_DFL
    ) -> subprocess.Popen:
        """``python -m repair_ray.cli ARGS`` started (stdout and stderr in one pipe), in a session of
        its own so a signal for it reaches nothing else. SIGINT's disposition is ``sigint``: the
        default one, as a terminal's Ctrl+C meets it, even when this pytest was started in the
        background (a non-interactive shell's ``cmd &`` ignores SIGINT, and children inherit that);
        ``signal.SIG_IGN`` is ``nohup repair-ray run ... &`` from a script."""
        return subprocess.Popen(
            [sys.executable, "-m", "repair_ray.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
        )

    def end(self) -> None:
        import psutil

        for child in psutil.Process().children():
            if child.pid in self._before:
                continue
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(child.pid) == child.pid:
                    kill_session(child.pid)
                else:
                    child.kill()
                    child.wait(timeout=15)
