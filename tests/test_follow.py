"""`repair-ray logs JOB --follow` (and `submit --follow`) stream a job's logs through the Jobs SDK's
``tail_job_logs``: each chunk printed once, as it comes, nothing downloaded again; the exit status
says how the job ended; a dashboard that goes away mid-follow is exit 3 naming it.

A stand-in for ``ray.job_submission.JobSubmissionClient`` plays the dashboard (as in
tests/test_exit_codes.py); tests/test_clusters.py follows a real job on a real head with token auth.
"""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest
from click.testing import CliRunner

from repair_ray.cli import main
from repair_ray.sweep import jobs

from .helpers import tiny_sweep, write_yaml

HEAD = "http://head:8265"


class StreamingJobs:
    """A stand-in for ``JobSubmissionClient`` whose job writes ``chunks`` while it runs, then ends
    ``final``: the stream yields the chunks, then raises ``breaks`` (the dashboard went away) or
    ends; the job's status turns ``final`` ``lag`` status queries after the stream ended (never,
    with ``final=None``). It counts what a follow asks of it."""

    def __init__(self, address=None, *, chunks=(), final="SUCCEEDED", breaks=None, lag=0, exists=True, during=None):
        self.address, self.chunks, self.final, self.breaks, self.lag = address, list(chunks), final, breaks, lag
        self.exists, self.during = exists, during  # during(i): run before the stream yields chunk i
        self.streamed = False  # the stream has ended (or broke)
        self.closed = False  # the stream's generator was closed (its connection let go)
        self.tails = self.log_downloads = self.status_queries = 0
        self.submitted: list[str] = []

    def submit_job(self, *, entrypoint, runtime_env=None, submission_id=None, **rest):
        self.submitted.append(submission_id)
        return submission_id

    def get_job_status(self, job_id):
        from ray.job_submission import JobStatus

        self.status_queries += 1
        if not self.exists:
            raise RuntimeError(f"Request failed with status code 404: Job {job_id} does not exist.")
        if self.streamed and self.final is not None:
            if self.lag <= 0:
                return JobStatus(self.final)
            self.lag -= 1
        return JobStatus.RUNNING

    def get_job_logs(self, job_id):
        self.log_downloads += 1
        return "".join(self.chunks)

    async def tail_job_logs(self, job_id):
        self.tails += 1
        try:
            for i, chunk in enumerate(self.chunks):
                if self.during is not None:
                    self.during(i)
                await asyncio.sleep(0)  # the next chunk arrives later, over the network
                yield chunk
            if self.breaks is not None:
                raise self.breaks
        finally:
            self.streamed = True
            self.closed = True


@pytest.fixture
def dashboard(monkeypatch):
    """Install a StreamingJobs made with these arguments as Ray's JobSubmissionClient; returns the
    list of the clients made."""
    made: list[StreamingJobs] = []

    def install(**kwargs):
        def make(address=None):
            made.append(StreamingJobs(address, **kwargs))
            return made[-1]

        monkeypatch.setattr("ray.job_submission.JobSubmissionClient", make)
        return made

    return install


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), env={"RAY_ADDRESS": None})


CHUNKS = [
    "2026-12-06T10:00:00Z [sweep] joined the Ray cluster\n",
    "2026-12-06T10:00:05Z [train] 1/2 trials done\n2026-12-06T10:00:06Z [train] 2/2 trials done\n",
    "2026-12-06T10:00:09Z [pairs] 1/1 pa",  # a chunk may end mid-line: the next one goes on with it
    "irs done\n",
]


def test_follow_prints_each_chunk_once_in_order_and_downloads_nothing_again(dashboard):
    printed: list[str] = []

    def during(i):  # what was printed before chunk i arrived: every earlier chunk, in order, once
        assert "".join(printed) == "".join(CHUNKS[:i])

    fake = StreamingJobs(chunks=CHUNKS, during=during)
    assert jobs.follow("job-1", address=HEAD, write=printed.append, jobs=fake) == "SUCCEEDED"
    assert printed == CHUNKS
    assert fake.tails == 1 and fake.log_downloads == 0

    made = dashboard(chunks=CHUNKS)
    out = invoke("logs", "job-1", "--address", HEAD, "--follow")
    assert out.exit_code == 0, out.output
    assert out.stdout == "".join(CHUNKS) + "[logs] job job-1 SUCCEEDED\n"
    (client,) = made
    assert client.address == HEAD and client.tails == 1 and client.log_downloads == 0 and client.closed


def test_the_status_line_starts_a_line_of_its_own_after_a_last_chunk_without_newline(dashboard):
    dashboard(chunks=["[sweep] finished"])
    out = invoke("logs", "job-1", "--address", HEAD, "--follow")
    assert out.stdout == "[sweep] finished\n[logs] job job-1 SUCCEEDED\n"


@pytest.mark.parametrize(("final", "code"), [("SUCCEEDED", 0), ("FAILED", 1), ("STOPPED", 1)])
def test_the_exit_status_of_a_follow_says_how_the_job_ended(dashboard, final, code):
    dashboard(chunks=CHUNKS, final=final, lag=1)  # Ray may report the end a moment after the stream ends
    out = invoke("logs", "job-1", "--address", HEAD, "--follow")
    assert out.exit_code == code, out.output
    assert out.stdout.endswith(f"[logs] job job-1 {final}\n")
    assert out.stdout.count("[pairs] 1/1 pairs done") == 1


def test_submit_follow_streams_through_the_client_it_submitted_with(dashboard, tmp_path):
    made = dashboard(chunks=CHUNKS, final="FAILED")
    config = write_yaml(tmp_path / "sweep.yaml", tiny_sweep("sent", str(tmp_path / "runs"), seeds=2))
    out = invoke("submit", config, "--address", HEAD, "--id", "job-7", "--follow")
    assert out.exit_code == 1, out.output
    assert "".join(CHUNKS) + "[submit] job job-7 FAILED\n" in out.stdout
    (client,) = made  # one client: the one whose headers carry the token
    assert client.submitted == ["job-7"] and client.tails == 1 and client.log_downloads == 0


@pytest.mark.parametrize(
    "broken",
    [
        RuntimeError("WebSocket connection closed unexpectedly with close code 1006"),  # the SDK, head killed
        aiohttp.ServerDisconnectedError(),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
    ids=["websocket-1006", "server-disconnected", "connection-reset"],
)
def test_a_dashboard_that_goes_away_mid_follow_is_exit_3_naming_it(dashboard, broken):
    made = dashboard(chunks=CHUNKS[:2], breaks=broken)
    out = invoke("logs", "job-1", "--address", HEAD, "--follow")
    assert out.exit_code == 3, out.output
    assert out.stdout == "".join(CHUNKS[:2])  # what came before the break, and no status line
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr  # one line, no traceback
    assert lines[0].startswith(f"error: Ray dashboard at {HEAD} broke off the log stream of job job-1: "), lines[0]
    assert made[0].log_downloads == 0


def test_a_stream_that_ends_while_the_job_still_runs_is_exit_3(dashboard, monkeypatch):
    monkeypatch.setattr(jobs, "FOLLOW_SETTLE_S", 0.3)
    dashboard(chunks=CHUNKS, final=None)
    out = invoke("logs", "job-1", "--address", HEAD, "--follow")
    assert out.exit_code == 3, out.output
    assert out.stderr.strip() == (
        f"error: Ray dashboard at {HEAD} ended the log stream of job job-1 while the job is still RUNNING"
    )


def test_following_an_unknown_job_is_exit_2_before_anything_streams(dashboard):
    made = dashboard(chunks=CHUNKS, exists=False)
    out = invoke("logs", "job-9", "--address", HEAD, "--follow")
    assert out.exit_code == 2, out.output
    assert out.stderr.strip() == f"error: no job job-9 at the Ray dashboard {HEAD}"
    assert made[0].tails == 0 and out.stdout == ""


def test_ctrl_c_ends_a_follow_cleanly_and_lets_go_of_the_stream(dashboard):
    def interrupt(i):
        if i == 2:
            signal.raise_signal(signal.SIGINT)  # as a terminal delivers Ctrl+C, while chunks still come

    made = dashboard(chunks=CHUNKS, during=interrupt)
    out = invoke("logs", "job-1", "--address", HEAD, "--follow")
    assert out.exit_code == 1, out.output  # click's Abort, as every command ends on Ctrl+C
    assert out.stdout == "".join(CHUNKS[:2])
    assert "Aborted!" in out.stderr and "Traceback" not in out.output
    assert made[0].closed  # the generator was closed: its connection to the dashboard let go
