"""Scaling of the pair stage: the quickstart's pair stage on 1 worker vs 2 workers, and Ray's
overhead per task (a no-op pair task's round trip vs a real pair).

    python benchmarks/scaling.py [--quick]

Trains the quickstart's networks once into .bench/scaling (3 epochs), then times the pair stage
(``run_pair_stage``, every pair recomputed) on a local Ray with 1 CPU and then with 2 CPUs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".bench" / "scaling"

try:
    from .common import table
except ImportError:
    from common import table


def _config(quick: bool):
    from repair_ray.sweep.config import parse_config

    data = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    if quick:  # two model configs, fewer alphas: a smoke run
        data["models"][0]["width"] = [32]
        data["alphas"] = 5
    data["storage"] = str(WORK)
    data["name"] = "quickstart-quick" if quick else "quickstart"
    return parse_config(data, source="examples/quickstart.yaml")


def _forget_pairs(root: str) -> None:
    for table_name in ("pairs", "curves", "layers"):
        shutil.rmtree(Path(root, "tables", table_name), ignore_errors=True)


def _noop(context: Any, job: Any) -> int:
    return int(job.seed_a)


def _pair_stage(config, cpus: int) -> dict[str, float]:
    """One timed pair stage (every pair recomputed) on a fresh local Ray with ``cpus`` CPUs."""
    import ray

    from repair_ray.io.tables import read_table
    from repair_ray.sweep.pair_stage import run_pair_stage

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        _forget_pairs(config.root)
        started = time.perf_counter()
        summary = run_pair_stage(config, say=lambda m: None)
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    pairs = read_table(config.root, "pairs")
    # the time the tasks spent computing: statistics + evaluation, and each alignment once
    compute = pairs["stat_seconds"].sum() + pairs["eval_seconds"].sum()
    compute += pairs.drop_duplicates(["model_key", "seed_a", "seed_b", "align"])["align_seconds"].sum()
    return {"seconds": seconds, "pairs": summary.ran, "compute_s": float(compute)}


def _ray_overhead(config) -> dict[str, float]:
    """A no-op task with the pair task's resources and job, round trip on a warm worker, vs a real pair."""
    import ray

    from repair_ray.sweep.pair_stage import PairQueue, make_remote_pair_task, stage_context
    from repair_ray.sweep.planning import plan_trials, read_pair_state

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        _forget_pairs(config.root)
        context = stage_context(config, 1.0)
        pairs = PairQueue(config, read_pair_state(config.root, context.analysis_keys))
        pairs.add_trained(plan_trials(config).done)
        job = pairs.ready[0]
        context_ref = ray.put(context)
        noop = ray.remote(num_cpus=1, max_calls=0)(_noop)
        ray.get(noop.remote(context_ref, job))
        trips = []
        for _ in range(30):
            t = time.perf_counter()
            ray.get(noop.remote(context_ref, job))
            trips.append(time.perf_counter() - t)
        real_task = make_remote_pair_task(1.0, 0.0, 0)
        ray.get(real_task.remote(context_ref, job))  # warm the worker's dataset cache
        t = time.perf_counter()
        ray.get(real_task.remote(context_ref, job))
        real = time.perf_counter() - t
    finally:
        ray.shutdown()
    trip = statistics.median(trips)
    return {"noop_round_trip_ms": 1000 * trip, "real_pair_s": real, "overhead_share": trip / real}


def run(quick: bool = False, device: str = "cpu") -> list[dict[str, Any]]:
    from repair_ray.sweep.runner import run_sweep

    config = _config(quick)
    with contextlib.redirect_stdout(io.StringIO()):
        run_sweep(config, num_cpus=2, say=lambda m: None)  # trains once; later runs skip everything
    repeats = 1 if quick else 2
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    for _ in range(repeats):  # alternate, so a slow spell of the machine hits both
        for cpus in (1, 2):
            runs[cpus].append(_pair_stage(config, cpus))
    rows = []
    for cpus, measured in runs.items():
        seconds = statistics.median(m["seconds"] for m in measured)
        compute = statistics.median(m["compute_s"] for m in measured)
        rows.append(
            {
                "workers": cpus,
                "pairs": measured[0]["pairs"],
                "seconds": seconds,
                "all_seconds": [round(m["seconds"], 1) for m in measured],
                "pairs_per_minute": 60 * measured[0]["pairs"] / seconds,
                "compute_s": compute,
                "utilisation": compute / (seconds * cpus),
            }
        )
    rows[1]["speedup"] = rows[0]["seconds"] / rows[1]["seconds"]
    rows[1].update(_ray_overhead(config))
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = table(
        rows,
        [
            ("workers", "workers (CPUs)"),
            ("pairs", "pairs"),
            ("seconds", "pair stage s (median)"),
            ("all_seconds", "each run s"),
            ("pairs_per_minute", "pairs/min"),
            ("speedup", "speedup"),
            ("compute_s", "task compute s (sum)"),
            ("utilisation", "compute / (wall x workers)"),
        ],
    )
    two = rows[1]
    return (
        f"{head}\n\nRay overhead per pair task: a no-op task's round trip takes {two['noop_round_trip_ms']:.2f} ms "
        f"(median of 30, warm worker), a real quickstart pair task {two['real_pair_s']:.1f} s: "
        f"{100 * two['overhead_share']:.3f}% of it. 'Task compute' sums the time the pair tasks measured "
        "themselves; when it grows from 1 to 2 workers, the same work ran slower per core (two workers "
        "share this machine's cores with the driver and Ray's own processes, which a single worker leaves "
        "a core to)."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(markdown(run(quick=args.quick)))
