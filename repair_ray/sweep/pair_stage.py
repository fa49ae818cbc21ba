"""Pair stage: one Ray task per pair of trained seeds; each finished pair is its own Parquet file.

The driver reads the ``models`` table, forms the pairs of every model config from its seeds that
trained ``ok``, skips pairs whose ``pairs`` file already says ``ok``, and keeps a bounded number
of tasks in flight. Each task loads both checkpoints by URI and calls the core's
:func:`repair_ray.pair.analyse_pair`; the driver writes the rows it returns (``curves`` and
``layers`` first, ``pairs`` last, each atomically), so a crash loses at most the pairs in
flight and the ``pairs`` file doubles as the "done" marker.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..io.checkpoint import load_checkpoint
from ..io.tables import table_file, write_rows
from ..models import ModelConfig
from ..pair import PairSettings, analyse_pair
from .cluster import resolve_resources
from .config import SweepConfig
from .planning import pair_stem, plan_pair_jobs
from .progress import Progress
from .rows import model_columns
from .worker import cached_dataset, error_text, node_id, setup_worker

METRIC_COLUMNS = (
    "barrier_train_loss",
    "barrier_train_error",
    "barrier_test_loss",
    "barrier_test_error",
    "midpoint_test_loss",
    "midpoint_test_acc",
)


def _identity(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "sweep": job["sweep"],
        "model_key": job["model_key"],
        "seed_a": job["seed_a"],
        "seed_b": job["seed_b"],
    }


def failed_rows(job: dict[str, Any], error: str, device: str = "") -> dict[str, list[dict[str, Any]]]:
    """One ``failed`` pairs row per requested (align, correction), with the reason."""
    rows = [
        {
            **_identity(job),
            **model_columns(job["model"], job["dataset"]),
            "align": align,
            "correction": correction,
            **{k: math.nan for k in METRIC_COLUMNS},
            "device": device,
            "status": "failed",
            "error": error,
        }
        for align, correction in PairSettings(**job["settings"]).methods(
            batchnorm=ModelConfig(**job["model"]).has_batchnorm
        )
    ]
    return {"pairs": rows, "curves": [], "layers": []}


def pair_task(job: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Run in a Ray worker: load both checkpoints, analyse the pair, return the table rows.

    Any error of this pair (missing or corrupt checkpoint, a failure inside the analysis) becomes
    ``failed`` rows with the reason; only the death of the worker itself escapes (Ray retries it).
    """
    device = setup_worker(job["threads"])
    try:
        checkpoint_a = load_checkpoint(job["uri_a"], map_location=device)
        checkpoint_b = load_checkpoint(job["uri_b"], map_location=device)
        dataset = cached_dataset(job["dataset"], device)
        model_config = ModelConfig(**job["model"])
        models = []
        for checkpoint in (checkpoint_a, checkpoint_b):
            model = model_config.build(dataset.num_classes, dataset.in_shape).to(device)
            model.load_state_dict(checkpoint.state_dict)
            models.append(model.eval())
        settings = PairSettings(**job["settings"])
        result = analyse_pair(models[0], models[1], dataset, settings)
    except Exception as error:  # noqa: BLE001 - every failure of a pair is data for its row
        return failed_rows(job, error_text(error), str(device))
    ident, desc = _identity(job), model_columns(job["model"], job["dataset"])
    return {
        "pairs": [
            {**ident, **desc, **row, "device": str(device), "node_id": node_id(), "status": "ok"}
            for row in result.pairs
        ],
        "curves": [{**ident, **row} for row in result.curves],
        "layers": [{**ident, **row} for row in result.layers],
    }


def write_pair(root: str, job: dict[str, Any], rows: dict[str, list[dict[str, Any]]]) -> None:
    """Write a pair's rows: ``curves`` and ``layers`` first, then ``pairs``, the done marker."""
    stem = pair_stem(job["model_key"], job["seed_a"], job["seed_b"])
    for table in ("curves", "layers", "pairs"):
        if rows[table] or table == "pairs":
            write_rows(table_file(root, table, stem), table, rows[table])


@dataclass
class PairStageSummary:
    total: int
    already_done: int
    ran: int
    failed: int
    left_out: int
    seconds: float


def make_remote_pair_task(cpu: float, gpu: float, retries: int) -> Any:
    """The pair task as a Ray remote function: reused workers, retried when a worker dies."""
    import ray

    # max_calls=0: a GPU task would otherwise get a fresh worker (torch import, CUDA init) per call
    return ray.remote(num_cpus=cpu, num_gpus=gpu, max_calls=0, max_retries=retries)(pair_task)


def run_pair_stage(
    config: SweepConfig,
    *,
    say: Callable[[str], None] = print,
    remote_task: Any = None,
) -> PairStageSummary:
    """Analyse every pair of the sweep that is not on storage yet; returns counts.

    ``remote_task`` replaces the Ray remote function (tests inject failures with it).
    """
    import ray

    started = time.time()
    cpu, gpu = resolve_resources(config.resources.pair, "resources.pair", say)
    plan = plan_pair_jobs(config, cpu)
    total = config.n_pairs
    for stem in plan.left_out:
        say(f"[pairs] left out {stem}: a model of the pair did not train")
    say(f"[pairs] {plan.done} of {total} pairs already done; {len(plan.jobs)} to run")
    task = remote_task or make_remote_pair_task(cpu, gpu, config.pair_retries)
    limit = config.max_pairs_in_flight or max(2, 2 * _slots(cpu, gpu))
    progress = Progress("pairs", len(plan.jobs), say, unit="pairs")
    pending: dict[Any, dict[str, Any]] = {}
    queue = list(plan.jobs)
    failed = 0
    while queue or pending:
        while queue and len(pending) < limit:
            job = queue.pop(0)
            pending[task.remote(job)] = job
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            job = pending.pop(ref)
            try:
                rows = ray.get(ref)
            except Exception as error:  # noqa: BLE001 - the worker died more often than retries allow
                rows = failed_rows(job, f"worker failed: {error_text(error)}")
            write_pair(config.root, job, rows)
            ok = all(r["status"] == "ok" for r in rows["pairs"])
            failed += 0 if ok else 1
            note = pair_stem(job["model_key"], job["seed_a"], job["seed_b"])
            if not ok:
                note += f" FAILED: {rows['pairs'][0]['error']}"
            progress.advance(ok=ok, note=note)
    seconds = time.time() - started
    if plan.jobs:
        say(f"[pairs] done in {seconds:.0f}s: {len(plan.jobs) - failed} ok, {failed} failed")
    return PairStageSummary(total, plan.done, len(plan.jobs), failed, len(plan.left_out), seconds)


def _slots(cpu: float, gpu: float) -> int:
    import ray

    resources = ray.cluster_resources()
    if gpu > 0:
        return max(1, int(resources.get("GPU", 0) / gpu))
    return max(1, int(resources.get("CPU", 1) / cpu))
