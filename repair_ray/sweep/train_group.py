"""A trial whose network trains data-parallel over several workers (``train.workers_per_trial``), with Ray Train.

Ray Train's ``TorchTrainer`` reserves all the trial's workers at once (a placement group: the trial
starts only when every worker has its resources, and never holds part of them while it waits),
sets up ``torch.distributed`` among them (NCCL on GPUs, gloo on CPUs) and runs
:func:`worker_loop` in each. The loop is the one-worker trial (:func:`~.train_worker.run_trial`)
unchanged: the core's :class:`~repair_ray.training.Trainer` sees the process group and trains
with DistributedDataParallel on slices of each global batch; rank 0 writes the checkpoints and the
``models`` row. This module is the only glue: the training core knows nothing of Ray.

The task that runs the ``TorchTrainer`` (:func:`group_trial_task`) holds no resources of its own,
so waiting trials never hold what their workers need. It is a streaming generator like the
one-worker trial task: rank 0 sends a :class:`~.messages.TrialStarted` when the group is up, an
:class:`~.messages.EpochReport` after every epoch and the :class:`~.messages.TrialOutcome` at the
end, through a Ray queue. A worker that dies fails the group (no restart inside Ray Train); the
driver retries the trial, which resumes from its last checkpoint, as for one worker.
"""

from __future__ import annotations

import queue as local_queue
import threading
from collections.abc import Iterator
from typing import Any

from ..io import storage
from .messages import EpochReport, Trial, TrialOutcome, TrialStarted

POLL_SECONDS = 0.5  # how often the task looks for its workers' messages while they train
TRAIN_RUNS_DIR = "ray_train"  # Ray Train's own run records, under the sweep's folder (shared storage)


def make_remote_group_trial_task() -> Any:
    """The group trial task as a Ray remote function: no CPU or GPU of its own (its workers have them;
    a task holding a CPU while its workers wait for theirs could starve them), reused workers, no
    retries (the driver retries a trial, which resumes from its checkpoints)."""
    import ray

    return ray.remote(num_cpus=0, num_gpus=0, max_calls=0, max_retries=0, num_returns="streaming")(group_trial_task)


def worker_loop(config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: the trial on this worker's device, messages from rank 0."""
    import ray.train
    import ray.train.torch
    import torch

    from .train_worker import run_trial

    trial: Trial = config["trial"]
    messages = config["queue"]
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device() if trial.worker_gpu > 0 else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)

    def report(item: EpochReport) -> None:
        if rank == 0:
            messages.put(item)

    if rank == 0:
        messages.put(TrialStarted(trial.model_key, trial.seeds))
    outcomes = run_trial(trial, report, device=device)
    if rank == 0:
        messages.put(TrialOutcome(outcomes))


def group_trial_task(trial: Trial) -> Iterator[TrialStarted | EpochReport | TrialOutcome]:
    """A group trial as a Ray streaming generator: runs a ``TorchTrainer`` of ``trial.workers`` workers
    (each with ``trial.threads`` CPUs and ``trial.worker_gpu`` GPUs) and yields what rank 0 sends."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    messages = Queue(actor_options={"num_cpus": 0})
    resources = {"CPU": trial.threads, **({"GPU": trial.worker_gpu} if trial.worker_gpu > 0 else {})}
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"trial": trial, "queue": messages},
        scaling_config=ScalingConfig(
            num_workers=trial.workers, use_gpu=trial.worker_gpu > 0, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=run_name(trial),
            storage_path=storage.join(trial.root, TRAIN_RUNS_DIR),
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    ended: local_queue.Queue[BaseException | None] = local_queue.Queue()

    def fit() -> None:
        try:
            trainer.fit()
            ended.put(None)
        except BaseException as error:  # noqa: BLE001 - raised in the task below
            ended.put(error)

    thread = threading.Thread(target=fit, name="group-trial", daemon=True)
    thread.start()
    outcome: TrialOutcome | None = None
    try:
        while True:
            try:
                item = messages.get(timeout=POLL_SECONDS)
            except Empty:
                if not thread.is_alive():
                    break
                continue
            if isinstance(item, TrialOutcome):
                outcome = item
            else:
                yield item
        while not messages.empty():  # what rank 0 sent after the last look
            item = messages.get()
            if isinstance(item, TrialOutcome):
                outcome = item
            else:
                yield item
        error = ended.get()
        if error is not None:
            raise error
        if outcome is None:
            raise RuntimeError(f"{trial.name}: the workers ended without the trial's outcome")
        yield outcome
    finally:
        messages.shutdown(force=True)


def run_name(trial: Trial) -> str:
    """Ray Train's name of a trial's run: its model key and seeds (no ``/``)."""
    return f"{trial.model_key}__seed-{'-'.join(str(s) for s in trial.seeds)}"
