"""Exit statuses that tell a scheduler what happened, and commands that say the truth.

0 done, 1 some trials or pairs failed, 2 a bad config or usage, 3 infrastructure (storage, the Ray
cluster, its dashboard) or a sweep another run holds: one line naming the place, no traceback
unless asked for; 4 a bug of ours: its traceback, always, then one line saying so.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import click
import pytest
from click.testing import CliRunner

from repair_ray.cli import main, stamped
from repair_ray.sweep import jobs

from .helpers import tiny_sweep, write_yaml


@dataclass
class Exited:
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, env: dict[str, str] | None = None) -> Exited:
    """The command line in this process (click's runner: its own stdout, stderr and environment),
    as a scheduler sees it: exit status, stdout, stderr. One test runs it as a process of its own."""
    result = CliRunner().invoke(main, list(args), env={"RAY_ADDRESS": None, **(env or {})})
    return Exited(result.exit_code, result.stdout, result.stderr)


def cli_process(subprocesses, *args: str, env: dict[str, str] | None = None) -> Exited:
    out = subprocesses.cli(*args, env=env)
    return Exited(out.returncode, out.stdout, out.stderr)


def one_error_line(out: Exited) -> str:
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr  # one line, no traceback
    assert lines[0].startswith("error: ")
    return lines[0]


def test_an_unreachable_s3_endpoint_is_exit_3_naming_the_storage(tmp_path, closed_port, subprocesses):
    closed = f"http://127.0.0.1:{closed_port}"  # nothing listens there
    config = write_yaml(tmp_path / "sweep.yaml", tiny_sweep("far", "s3://bucket/prefix", seeds=2))
    for args in (["run", config], ["status", "s3://bucket/prefix/far"]):
        out = cli_process(subprocesses, *args, env={"AWS_ENDPOINT_URL": closed})
        assert out.returncode == 3, out.stdout + out.stderr
        line = one_error_line(out)
        assert line.startswith("error: storage s3://bucket/prefix/far unreachable: "), line
        assert "Ray" not in out.stdout  # a run fails before Ray starts


def test_debug_keeps_the_traceback_of_an_infrastructure_error(closed_port):
    dead = f"http://127.0.0.1:{closed_port}"
    out = cli("--debug", "logs", "some-job", "--address", dead)
    assert out.returncode == 3
    assert "Traceback (most recent call last)" in out.stderr
    assert out.stderr.strip().splitlines()[-1] == f"error: Ray dashboard at {dead} not reachable: " + (
        f"Failed to connect to Ray at address: {dead}."
    )
    assert "Traceback" in cli("logs", "some-job", "--address", dead, env={"REPAIR_RAY_DEBUG": "1"}).stderr


@pytest.mark.parametrize("command", [["logs", "job-1"], ["logs", "job-1", "--follow"], ["stop", "job-1"]])
def test_a_dead_dashboard_is_exit_3_naming_it(command, closed_port):
    dead = f"http://127.0.0.1:{closed_port}"
    out = cli(*command, "--address", dead)
    assert out.returncode == 3, out.stdout + out.stderr
    assert one_error_line(out).startswith(f"error: Ray dashboard at {dead} not reachable")


def test_submit_to_a_dead_dashboard_is_exit_3(tmp_path, closed_port):
    dead = f"http://127.0.0.1:{closed_port}"
    config = write_yaml(tmp_path / "sweep.yaml", tiny_sweep("sent", "s3://bucket/runs", seeds=2))
    out = cli("submit", config, "--address", dead)
    assert out.returncode == 3, out.stdout + out.stderr
    assert one_error_line(out).startswith(f"error: Ray dashboard at {dead} not reachable")


def test_no_ray_cluster_at_the_address_is_exit_3_at_once(tmp_path, closed_port):
    """Ray itself would retry for minutes; a closed port is named at once."""
    address = f"127.0.0.1:{closed_port}"
    config = write_yaml(tmp_path / "sweep.yaml", tiny_sweep("alone", str(tmp_path / "runs"), seeds=2))
    out = cli("run", config, "--address", address)
    assert out.returncode == 3, out.stdout + out.stderr
    assert one_error_line(out).startswith(f"error: no Ray cluster at {address}: ")


def test_a_bad_config_is_still_exit_2(tmp_path):
    config = write_yaml(tmp_path / "sweep.yaml", {**tiny_sweep("bad", str(tmp_path), seeds=2), "seeds": 0})
    assert cli("validate", config).returncode == 2


# ---------------------------------------------------------------------------------------------
# `stop` says the truth: a stand-in for Ray's JobSubmissionClient, whose job stops (or not)
# ---------------------------------------------------------------------------------------------


class FakeJobs:
    """A stand-in for ``ray.job_submission.JobSubmissionClient``: a job that reaches ``final``
    after ``polls`` status queries following the stop request (never, with ``final=None``)."""

    def __init__(self, address=None, *, status="RUNNING", final="STOPPED", polls=2):
        from ray.job_submission import JobStatus

        self.status, self.final, self.polls = JobStatus(status), final, polls
        self.stop_requests = 0
        self.submitted: list[dict] = []  # every submit_job call's arguments

    def submit_job(self, *, entrypoint, runtime_env=None, submission_id=None, **rest):
        self.submitted.append({"entrypoint": entrypoint, "runtime_env": runtime_env, "submission_id": submission_id})
        return submission_id

    def stop_job(self, job_id):
        self.stop_requests += 1
        return self.status.value not in jobs.TERMINAL

    def get_job_status(self, job_id):
        from ray.job_submission import JobStatus

        if self.stop_requests and self.final is not None and self.status.value not in jobs.TERMINAL:
            self.polls -= 1
            if self.polls <= 0:
                self.status = JobStatus(self.final)
        return self.status


def test_stop_waits_until_the_job_has_stopped():
    fake = FakeJobs(polls=3)
    assert jobs.stop("job-1", address=None, timeout=10, poll=0.01, jobs=fake) == "STOPPED"
    assert fake.stop_requests == 1


def test_stop_returns_the_status_a_job_still_has_after_the_timeout():
    assert jobs.stop("job-1", address=None, timeout=0.2, poll=0.05, jobs=FakeJobs(final=None)) == "RUNNING"


@pytest.fixture
def fake_ray_jobs(monkeypatch):
    """Ray's JobSubmissionClient replaced by a FakeJobs made by ``make``."""
    made = {}

    def install(**kwargs):
        def make(address=None):
            made["client"] = FakeJobs(address, **kwargs)
            return made["client"]

        monkeypatch.setattr("ray.job_submission.JobSubmissionClient", make)
        return made

    return install


def test_stop_exits_0_only_when_the_job_stopped(fake_ray_jobs):
    fake_ray_jobs(polls=2)
    result = CliRunner().invoke(main, ["stop", "job-1", "--address", "http://head:8265"])
    assert result.exit_code == 0, result.output
    assert "[stop] job job-1 STOPPED" in result.output


def test_stop_of_a_job_that_keeps_running_exits_1_with_its_status(fake_ray_jobs):
    fake_ray_jobs(final=None)
    result = CliRunner().invoke(main, ["stop", "job-1", "--address", "http://head:8265", "--timeout", "0.5"])
    assert result.exit_code == 1, result.output
    assert "error: job job-1 is still RUNNING 0.5s after it was asked to stop" in result.output


def test_stop_of_a_job_that_had_ended_already_says_how_it_ended(fake_ray_jobs):
    made = fake_ray_jobs(status="SUCCEEDED")
    result = CliRunner().invoke(main, ["stop", "job-1", "--address", "http://head:8265"])
    assert result.exit_code == 0 and "[stop] job job-1 SUCCEEDED" in result.output
    assert made["client"].stop_requests == 1


def test_a_job_the_dashboard_does_not_know_is_a_usage_error(monkeypatch):
    class NoJobs(FakeJobs):
        def get_job_logs(self, job_id):
            raise RuntimeError(f"Request failed with status code 404: Job {job_id} does not exist.")

    monkeypatch.setattr("ray.job_submission.JobSubmissionClient", NoJobs)
    result = CliRunner().invoke(main, ["logs", "job-9", "--address", "http://head:8265"])
    assert result.exit_code == 2
    assert "error: no job job-9 at the Ray dashboard http://head:8265" in result.output


# ---------------------------------------------------------------------------------------------
# Progress lines carry their UTC time
# ---------------------------------------------------------------------------------------------

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def test_progress_lines_start_with_their_utc_time():
    assert re.fullmatch(STAMP + r" \[train\] 1/2 trials done", stamped("[train] 1/2 trials done"))
    assert re.fullmatch(r"\n" + STAMP + r" \[sweep\] finished", stamped("\n[sweep] finished"))


def test_a_process_connected_to_one_cluster_joins_no_other_silently(ray_session, closed_port):
    """In a process already connected (a notebook, this test session), a run naming another
    cluster is refused naming both; naming none, or this one, uses this one; a closed port is
    still 'no Ray cluster there'."""
    import socket

    from repair_ray.errors import InfrastructureError
    from repair_ray.sweep.cluster import connect

    here = ray_session.get_runtime_context().gcs_address
    assert connect(None).endswith(f"connected to ({here})") and connect(here).endswith(f"({here})")
    with socket.socket() as other:  # something listens there, but it is not this cluster
        other.bind(("127.0.0.1", 0))
        other.listen()
        elsewhere = f"127.0.0.1:{other.getsockname()[1]}"
        with pytest.raises(
            InfrastructureError, match=f"connected to the Ray cluster at {here}; it cannot join {elsewhere}"
        ):
            connect(elsewhere)
    with pytest.raises(InfrastructureError, match=f"no Ray cluster at 127.0.0.1:{closed_port}"):
        connect(f"127.0.0.1:{closed_port}")


# ---------------------------------------------------------------------------------------------
# `submit` asks the sweep's lease first: a sweep a live run holds is refused as `run` refuses it
# ---------------------------------------------------------------------------------------------

HEAD = "http://head:8265"


def without_age(text: str) -> str:
    """The lease message without the heartbeat's age in seconds (two commands a moment apart)."""
    return re.sub(r"\(\d+s ago\)", "(Ns ago)", text)


def test_submit_refuses_a_sweep_a_live_run_holds_as_run_does_and_submits_nothing(fake_ray_jobs, tmp_path):
    from repair_ray.sweep.lease import Lease

    made = fake_ray_jobs()
    config = write_yaml(tmp_path / "sweep.yaml", tiny_sweep("held", str(tmp_path / "runs"), seeds=2))
    root = str(tmp_path / "runs" / "held")
    with Lease(root, ttl=60, say=lambda _: None) as lease:  # this very process: alive, on this host
        submitted = cli("submit", config, "--address", HEAD)
        ran = cli("run", config)  # refused before Ray starts
        assert read_holder_pid(root) == lease.holder.pid  # the lease is untouched
    assert submitted.returncode == ran.returncode == 3, submitted.stdout + submitted.stderr
    refusal = submitted.stderr[submitted.stderr.index("error: ") :]  # after the warning about a local path
    assert refusal.startswith(f"error: sweep {root} is being run by another `repair-ray run`: host ")
    assert without_age(refusal) == without_age(ran.stderr)  # run's message, word for word
    assert "Traceback" not in submitted.stderr
    assert made["client"].submitted == []  # no job was submitted
    assert "[submit]" not in submitted.stdout


def read_holder_pid(root: str) -> int | None:
    from repair_ray.sweep.lease import read_holder

    holder = read_holder(root)
    return None if holder is None else holder.pid


def test_submit_submits_when_no_run_holds_the_sweep_or_its_holder_looks_dead(fake_ray_jobs, tmp_path):
    from repair_ray.io import storage
    from repair_ray.sweep.lease import LEASE_NAME, Holder

    made = fake_ray_jobs()
    config = write_yaml(tmp_path / "sweep.yaml", tiny_sweep("free", str(tmp_path / "runs"), seeds=2))
    first = cli("submit", config, "--address", HEAD, "--id", "job-1")
    assert first.returncode == 0, first.stdout + first.stderr
    assert made["client"].submitted[0]["submission_id"] == "job-1"
    assert made["client"].submitted[0]["entrypoint"] == "python -m repair_ray run sweep.yaml"
    assert "[submit] job job-1: sweep free" in first.stdout

    root = str(tmp_path / "runs" / "free")  # a run elsewhere whose heartbeat stopped ten minutes ago
    now = time.time()
    storage.write_bytes_atomic(
        storage.join(root, LEASE_NAME), Holder("elsewhere", 1, "0123456789ab", now - 700, now - 600, 120).to_bytes()
    )
    second = cli("submit", config, "--address", HEAD, "--id", "job-2")
    assert second.returncode == 0, second.stdout + second.stderr
    assert [job["submission_id"] for job in made["client"].submitted] == ["job-2"]  # a client per command


def test_submit_take_over_sends_the_job_that_takes_a_live_lease(fake_ray_jobs, tmp_path):
    from repair_ray.sweep.lease import Lease

    made = fake_ray_jobs()
    config = write_yaml(tmp_path / "sweep.yaml", tiny_sweep("taken", str(tmp_path / "runs"), seeds=2))
    with Lease(str(tmp_path / "runs" / "taken"), ttl=60, say=lambda _: None):
        out = cli("submit", config, "--address", HEAD, "--id", "job-3", "--take-over")
    assert out.returncode == 0, out.stdout + out.stderr
    assert made["client"].submitted[0]["entrypoint"] == "python -m repair_ray run sweep.yaml --take-over"


def test_submit_goes_on_with_a_warning_when_this_machine_cannot_read_the_storage(fake_ray_jobs, tmp_path, closed_port):
    """A laptop without the bucket's credentials (the nodes have their own) still submits; the job's
    run takes the lease itself."""
    made = fake_ray_jobs()
    config = write_yaml(tmp_path / "sweep.yaml", tiny_sweep("far", "s3://bucket/runs", seeds=2))
    out = cli(
        "submit",
        config,
        "--address",
        HEAD,
        "--id",
        "job-4",
        env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port}"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "warning: could not read the lease of s3://bucket/runs/far from here (network: " in out.stderr
    assert [job["submission_id"] for job in made["client"].submitted] == ["job-4"]


# ---------------------------------------------------------------------------------------------
# A bug is not a failed trial: exit 4, the traceback and one line saying it is a bug
# ---------------------------------------------------------------------------------------------


def raising(error: BaseException):
    def broken(*args, **kwargs):
        raise error

    return broken


def test_an_unexpected_exception_is_exit_4_with_its_traceback_and_a_line_saying_it_is_a_bug(monkeypatch, tmp_path):
    # a bug planted in the code `status` calls
    monkeypatch.setattr("repair_ray.sweep.status.sweep_status", raising(RuntimeError("boom\nsecond line")))
    out = cli("status", str(tmp_path))
    assert out.returncode == 4, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):"  # always, without --debug: a bug needs it
    assert "RuntimeError: boom" in out.stderr and "in broken" in out.stderr
    assert lines[-1] == (
        "error: internal error: RuntimeError: boom (a bug in repair-ray: please report it with the traceback above)"
    )
    assert sum(line.startswith("error: ") for line in lines) == 1


def test_an_internal_error_without_a_message_names_its_type(monkeypatch, tmp_path):
    monkeypatch.setattr("repair_ray.sweep.status.sweep_status", raising(AssertionError()))
    out = cli("--debug", "status", str(tmp_path))
    assert out.returncode == 4
    assert out.stderr.count("Traceback (most recent call last)") == 1  # --debug prints it once, not twice
    assert out.stderr.strip().splitlines()[-1].startswith("error: internal error: AssertionError (a bug in repair-ray")


@pytest.mark.parametrize(
    ("raised", "code", "said"),
    [
        (KeyboardInterrupt, 1, "Aborted!"),  # Ctrl+C: click's abort
        (lambda: SystemExit(5), 5, ""),  # a command's own exit status
        (lambda: click.UsageError("bad --thing"), 2, "Error: bad --thing"),  # click's usage error
    ],
)
def test_click_exits_ctrl_c_and_sys_exit_keep_their_meaning(monkeypatch, tmp_path, raised, code, said):
    monkeypatch.setattr("repair_ray.sweep.status.sweep_status", raising(raised()))
    out = cli("status", str(tmp_path))
    assert out.returncode == code, out.stdout + out.stderr
    assert said in out.stderr
    assert "internal error" not in out.stderr and "Traceback" not in out.stderr


def test_a_usage_error_of_click_is_still_exit_2():
    out = cli("status")  # the argument is missing
    assert out.returncode == 2 and "Missing argument" in out.stderr and "internal error" not in out.stderr
