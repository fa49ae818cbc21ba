"""Train stage: the driver's loop over Ray tasks that train (model config, seed)s, resumable from storage.

What is done comes from storage (:func:`~repair_ray.sweep.planning.plan_trials`): a re-run trains
what is missing only, and a trial that was interrupted resumes from its own last checkpoint
(written every ``train.checkpoint_every`` epochs and at the end), which is exact.

The work is split by concern: :mod:`.trials` groups what is left into :class:`~.messages.Trial`
messages, :mod:`.train_worker` is what a task runs in its worker, :mod:`.train_scheduler` releases
the trials that wait for others (children for their trunk, an IMP round for the network it
prunes). This driver keeps as many trials in flight as the cluster has slots, retries a trial that
raised (it resumes from its checkpoints), and prints progress; with ``tracking.mlflow`` it also
logs each network's epochs to MLflow as their reports arrive (:mod:`.tracking`). A task releases
its CPUs when it ends, so pair tasks get them as soon as training no longer fills the cluster.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..datasets import DatasetNotFoundError
from .cluster import cluster_shape, named, resolve_resources, tasks_in_flight
from .config import SweepConfig
from .messages import EpochReport, Trial, TrialOutcome, TrialStarted
from .planning import TrialPlan, plan_trials
from .progress import Progress
from .tracking import LiveTracking
from .train_group import make_remote_group_trial_task
from .train_scheduler import TrialScheduler
from .train_worker import trial_task
from .trials import stack_slots, trial_groups, trial_spec, trunk_specs
from .worker import error_text, error_trace, root_cause

__all__ = ["EPOCH_LINE_SECONDS", "TrainStageSummary", "make_remote_trial_task", "run_train_stage"]

EPOCH_LINE_SECONDS = 30.0  # a running trial prints its epoch at most this often (its last epoch always)


def make_remote_trial_task(cpu: float, gpu: float) -> Any:
    """The trial task as a Ray remote function: reused worker processes (torch imported and the
    dataset loaded once per worker, not once per trial); the driver does the retries (a retried
    trial resumes from its checkpoints)."""
    import ray

    return ray.remote(num_cpus=cpu, num_gpus=gpu, max_calls=0, max_retries=0, num_returns="streaming")(trial_task)


@dataclass
class TrainStageSummary:
    total: int
    already_done: int
    ran: int
    failed: int
    seconds: float


def run_train_stage(
    config: SweepConfig,
    plan: TrialPlan | None = None,
    *,
    say: Callable[[str], None] = print,
    on_trial_done: Callable[[str, int, bool], None] | None = None,
    remote_task: Any = None,
    workers_wanted: threading.Event | None = None,
    stop: threading.Event | None = None,
) -> TrainStageSummary:
    """Train every (model config, seed) of the sweep that is not done yet; returns counts.

    ``on_trial_done(model_key, seed, ok)`` is called as each network ends (the pair stage starts
    that network's pairs at once). ``remote_task`` replaces the Ray remote function (tests inject
    failures with it). ``workers_wanted`` is set while a trial of several workers waits for all of
    them to be placed: the pair stage starts no new task meanwhile, so the resources that pair tasks
    release go to the waiting workers, not to the next pairs. Once ``stop`` is set (the run lost its
    lease) no new trial starts; the trials in flight finish, and the stage returns.
    """
    import ray

    started = time.time()
    plan = plan or plan_trials(config)
    todo = plan.todo
    total = config.n_trials
    for uri in plan.damaged:
        say(f"[train] checkpoint {uri} is missing or not whole: retraining it")
    say(f"[train] {total - len(todo)} of {total} trials already done; {len(todo)} to run")
    if not todo:
        return TrainStageSummary(total, total, 0, 0, time.time() - started)

    shape = cluster_shape(say)
    cpu, gpu = resolve_resources(config.resources.train, "resources.train", say, shape)
    workers = config.workers_per_trial
    limit = tasks_in_flight(config.max_trials_in_flight, cpu * workers, gpu * workers, shape)
    groups = trial_groups(todo, config, plan.together, gpu, stack_slots(config, cpu, gpu, shape))
    trials = [trial_spec(config, model_plan, seeds, cpu, together, gpu) for model_plan, seeds, together in groups]
    trunks = trunk_specs(config, todo, cpu)
    if trunks:
        say(f"[train] {len(trunks)} trunk(s) to train or check before their children branch")
    progress = Progress("train", len(todo), say, unit="trials")
    trunk_progress = Progress("trunks", len(trunks), say, unit="trunks")
    last_line: dict[tuple[str, int], float] = {}
    # MLflow, live from the driver: each network's run grows epoch by epoch (repair_ray.sweep.tracking)
    tracking = LiveTracking(config.mlflow_uri, config.name, say) if config.mlflow_uri else None

    def epoch_done(trial: Trial, report: EpochReport) -> None:
        if tracking is not None:
            tracking.epoch_done(trial, report)
        accuracy = report.metrics.get("test_acc")
        if trial.role == "import":  # its evaluation, once: how well the imported network does here
            say(f"[train] {trial.model_key} network {report.seed} imported: test accuracy {accuracy:.4f}")
            return
        network, now = (trial.model_key, report.seed), time.monotonic()
        # the clock starts at a trial's first epoch: short trials print only their last one
        epochs = trial.train["epochs"]  # the trial's recipe (models[i].train may set its own)
        if now - last_line.setdefault(network, now) < EPOCH_LINE_SECONDS and report.epoch < epochs:
            return
        last_line[network] = now
        say(
            f"[train] {trial.model_key} {trial.kind} {report.seed}: epoch {report.epoch}/{epochs}"
            + (f", test accuracy {accuracy:.4f}" if isinstance(accuracy, (int, float)) else "")
        )

    def seed_done(trial: Trial, seed: int, error: str | None) -> None:
        if tracking is not None:
            tracking.seed_done(trial, seed, error)
        ok = error is None
        note = f"{trial.model_key} {trial.kind} {seed}" + ("" if ok else " FAILED")
        if trial.is_trunk:
            trunk_progress.advance(ok=ok, note=note)
            return
        progress.advance(ok=ok, note=note)
        if on_trial_done is not None:
            on_trial_done(trial.model_key, seed, ok)

    scheduler = TrialScheduler(trunks + trials, seed_done)
    one = remote_task or make_remote_trial_task(cpu, gpu)
    group = remote_task or (make_remote_group_trial_task() if workers > 1 else None)
    running: dict[Any, _Running] = {}
    waiting: set[int] = set()  # trials of several workers not started yet (their workers not all placed)

    def submit(attempt: _Running) -> None:
        trial = attempt.trial
        task = group if trial.workers > 1 else one
        running[named(task, trial.task_name).remote(trial)] = attempt
        if trial.workers > 1:
            waiting.add(id(attempt))
        if workers_wanted is not None and waiting:
            workers_wanted.set()

    def placed(attempt: _Running) -> None:
        waiting.discard(id(attempt))
        if workers_wanted is not None and not waiting:
            workers_wanted.clear()

    completed = False
    missing_data: list[BaseException] = []  # the dataset is not on the workers: every trial would fail alike

    def stopped() -> bool:
        return (stop is not None and stop.is_set()) or bool(missing_data)

    try:
        while running or (scheduler.ready and not stopped()):
            while scheduler.ready and len(running) < limit and not stopped():
                submit(_Running(scheduler.ready.popleft()))
            ready: list[Any]  # streaming generators (ray.wait's stubs say object refs)
            ready, _ = ray.wait(list(running), num_returns=1)
            for gen in ready:
                attempt = running.pop(gen)
                item: TrialStarted | EpochReport | TrialOutcome
                try:
                    item = ray.get(next(gen))
                except StopIteration:  # ended without its outcome: cannot happen unless the task is replaced
                    item = TrialOutcome({})
                except Exception as error:  # noqa: BLE001 - the trial raised, or its worker died
                    placed(attempt)
                    if isinstance(root_cause(error), DatasetNotFoundError):  # no retry: no attempt would find the files
                        scheduler.failed(attempt.trial, error_text(error), error_trace(error))
                        missing_data.append(error)
                    elif attempt.attempts < config.train_retries:
                        attempt.attempts += 1
                        say(f"[train] {attempt.trial.name} failed ({error_text(error)}): retrying from its checkpoint")
                        submit(attempt)
                    else:
                        scheduler.failed(attempt.trial, error_text(error), error_trace(error))
                    continue
                if isinstance(item, TrialOutcome):
                    placed(attempt)
                    scheduler.finished(attempt.trial, {int(k): v for k, v in item.errors.items()})
                    continue
                if isinstance(item, TrialStarted):
                    placed(attempt)
                    say(f"[train] {attempt.trial.name}: its {attempt.trial.workers} workers are training")
                else:
                    epoch_done(attempt.trial, item)
                running[gen] = attempt  # more to come
        completed = True
    finally:
        for gen in running:  # interrupted: the trials in flight stop; they resume from their checkpoints
            ray.cancel(gen, force=True)
        if workers_wanted is not None:
            workers_wanted.clear()
        if tracking is not None and not completed:  # what is queued is dropped: the next sweep run continues it
            tracking.close(wait=False)
    if missing_data:  # a usage error (exit 2), once, not one per trial
        raise DatasetNotFoundError(f"on a worker: {error_text(missing_data[0])}; the trials left were not started")
    failed = progress.failed
    if stopped() and progress.done < len(todo):
        say(f"[train] stopped after {progress.done} of {len(todo)} trials: the rest were not started")
    else:
        say(f"[train] done in {time.time() - started:.0f}s: {total - failed} ok, {failed} failed")
    if tracking is not None:
        tracking.close()  # waits for the MLflow calls still queued
    ran = progress.done if stopped() else len(todo)
    return TrainStageSummary(total, total - len(todo), ran, failed, time.time() - started)


@dataclass
class _Running:
    """A trial in flight, and how often it was retried."""

    trial: Trial
    attempts: int = 0
