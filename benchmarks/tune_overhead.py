"""Tune's per-trial overhead: ``repair-ray tune`` (Ray Tune, a reused trial actor per slot) against
the train stage (Ray tasks on reused workers) on the same N trivial trials (a width-8 MLP, 1 epoch,
synthetic data, FIFO), in one process on one local Ray with 2 CPUs.

    python benchmarks/tune_overhead.py [--quick]

Two rounds, each stage once per round from an empty folder of its own: in round 1 each stage is
the first of its kind in the cluster (the train stage starts its worker processes, Tune its trial
actors); in round 2 each runs right after a warm-up run of itself (2 trials, another folder), so
the train stage finds its workers started, while Tune starts its actors again, as every
``tune`` of a model config does. Training seconds are each trial's own clock of its epochs' training
and evaluation, the same for both: the ``models`` rows' ``train_seconds``, and the per-epoch
``seconds`` in the ``recipes`` rows' ``history_json``. Overhead per trial = (2 slots x wall -
training seconds) / trials, as benchmarks/train_stage.py counts it (the wall time a trial costs
beyond its training, in slot-seconds); the ratio of the two stages is measured in the same round.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".bench" / "tune_overhead"
SLOTS = 2  # a local Ray of 2 CPUs, 1 CPU a trial (resources.train's default)

try:
    from .common import table
except ImportError:
    from common import table


def _config(n: int, storage: Path):
    """N trivial trials for either stage: ``seeds: N`` for the train stage, ``num_samples: N`` for tune."""
    from repair_ray.sweep.config import parse_config

    data = {
        "name": "tune-overhead",
        "storage": str(storage),
        "dataset": {"name": "synthetic", "shape": [1, 8, 8], "num_classes": 4, "train_size": 128, "test_size": 64},
        "models": [{"arch": "mlp", "width": 8, "depth": 1}],
        "seeds": n,
        "train": {"epochs": 1, "batch_size": 64, "checkpoint_every": 1},
        "tune": {
            "space": {"lr": {"uniform": [0.01, 0.1]}},
            "mode": "max",
            "num_samples": n,
            "seeds": 1,
            "scheduler": "fifo",
            "val_samples": 64,  # trains on the other 64 training samples, validates on these 64
        },
    }
    return parse_config(data, source="tune_overhead")


def _tune_clock(root: str) -> float:
    """Tune's own ``time_total_s`` of every trial, summed: from the trainable's start (its imports,
    dataset and networks built) to its last report."""
    total = 0.0
    for path in Path(root, "tune").glob("*/trial-*/result.json"):
        lines = path.read_text().strip().splitlines()
        if lines:
            total += float(json.loads(lines[-1])["time_total_s"])
    return total


def _row(round_: int, stage: str, trials: int, wall: float, own: float, **extra: Any) -> dict[str, Any]:
    return {
        "round": round_,
        "stage": stage,
        "trials": trials,
        "wall_s": wall,
        "train_s": own,
        "efficiency": own / (SLOTS * wall),
        "overhead_per_trial_s": (SLOTS * wall - own) / trials,
        **extra,
    }


def _tune(n: int, storage: Path) -> dict[str, float]:
    """``run_tune_stage`` of N trivial trials from an empty folder: its wall time and the trials' clocks."""
    from repair_ray.io.tables import read_table
    from repair_ray.sweep.tune_stage import run_tune_stage

    config = _config(n, storage)
    shutil.rmtree(config.root, ignore_errors=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        started = time.perf_counter()
        run_tune_stage(config, say=lambda m: None)
        wall = time.perf_counter() - started
    recipes = read_table(config.root, "recipes")
    if len(recipes) != n or not (recipes["status"] == "ok").all():
        raise RuntimeError(f"tune: {len(recipes)} trials, statuses {sorted(set(recipes['status']))}")
    own = sum(h.get("seconds", 0.0) for text in recipes["history_json"] for h in json.loads(text))
    return {"wall": wall, "own": own, "tune_clock_s": _tune_clock(config.root)}


def _train(n: int, storage: Path) -> dict[str, float]:
    """The train stage of N trivial trials from an empty folder: its wall time and the trials' clocks."""
    from repair_ray.io.tables import read_table
    from repair_ray.sweep.train_stage import run_train_stage

    config = _config(n, storage)
    shutil.rmtree(config.root, ignore_errors=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        started = time.perf_counter()
        summary = run_train_stage(config, say=lambda m: None)
        wall = time.perf_counter() - started
    models = read_table(config.root, "models")
    if summary.ran != n or not (models["status"] == "ok").all():
        raise RuntimeError(f"train stage: {summary.ran} trials, statuses {sorted(set(models['status']))}")
    return {"wall": wall, "own": float(models["train_seconds"].sum())}


def measure(n: int, storage: Path) -> list[dict[str, Any]]:
    """Both stages on N trivial trials, first cold and then right after a warm-up run of the same
    stage (2 trials, another folder), on one fresh 2-CPU Ray; a row per stage and round. Round 2's
    tune row also splits its wall time into a part per experiment and a part per trial, from its
    warm-up's (Tune starts its actors in both)."""
    import ray

    rows = []
    ray.init(num_cpus=SLOTS, include_dashboard=False, log_to_driver=False)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)  # not Tune's "wrote the experiment state" lines
    try:
        for round_, warm in ((1, False), (2, True)):
            warmed = _tune(2, storage / "warm-up-tune") if warm else None
            tuned = _tune(n, storage / f"round-{round_}-tune")
            if warm:
                _train(2, storage / "warm-up-train")
            trained = _train(n, storage / f"round-{round_}-train")
            train = _row(round_, "train stage (Ray tasks)", n, trained["wall"], trained["own"])
            tune = _row(round_, "repair-ray tune (Ray Tune, fifo)", n, tuned["wall"], tuned["own"])
            tune["tune_clock_s"] = tuned["tune_clock_s"]
            tune["ratio"] = tune["overhead_per_trial_s"] / train["overhead_per_trial_s"]
            if warmed is not None:  # two experiments that both start their actors: what one more trial adds
                tune["wall_per_extra_trial_s"] = (tuned["wall"] - warmed["wall"]) / (n - 2)
                tune["wall_fixed_s"] = warmed["wall"] - 2 * tune["wall_per_extra_trial_s"]
            rows += [train, tune]
    finally:
        ray.shutdown()
    return rows


def run(quick: bool = False, device: str = "cpu") -> list[dict[str, Any]]:
    return measure(6 if quick else 16, WORK)


def markdown(rows: list[dict[str, Any]]) -> str:
    shown = [{**r, "efficiency_pct": f"{100 * r['efficiency']:.0f} %"} for r in rows]
    for r in shown:
        if "ratio" in r:
            r["ratio_x"] = f"{r['ratio']:.1f}x"
    columns = [
        ("round", "round"),
        ("stage", "stage"),
        ("trials", "trials"),
        ("wall_s", "wall s"),
        ("train_s", "training s (sum)"),
        ("tune_clock_s", "Tune's time_total_s (sum)"),
        ("efficiency_pct", "efficiency"),
        ("overhead_per_trial_s", "overhead per trial s"),
        ("ratio_x", "tune / train stage overhead"),
    ]
    split = next((r for r in rows if "wall_fixed_s" in r), None)
    fixed = (
        f"\n\nRound 2's tune against its 2-trial warm-up (both start their trial actors): "
        f"{split['wall_fixed_s']:.1f} s of wall time per experiment, whatever its trials, and "
        f"{split['wall_per_extra_trial_s']:.2f} s of wall time per trial beyond it (on 2 slots)."
        if split
        else ""
    )
    return (
        table(shown, columns)
        + fixed
        + (
            "\n\nTraining s: each trial's own clock of its epochs (training and evaluation): the models rows' "
            "train_seconds, the recipes rows' per-epoch seconds. Overhead per trial = (2 slots x wall - training s) / "
            "trials; efficiency = training s / (2 x wall). Round 1: each stage the first of its kind in the cluster; "
            "round 2: each right after a warm-up run of itself (2 trials), so the train stage's workers are started, "
            "while Tune starts its trial actors again (each experiment starts its own). Tune's time_total_s less the "
            "training s is spent inside the trial actors but not training (the trainable's start: torch imported on a "
            "fresh actor, the dataset and networks built; its reports and checkpoints); the rest of Tune's overhead is "
            "outside the trainables (the actors' start, the controller's scheduling, results and experiment snapshots)."
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(markdown(run(args.quick)))


if __name__ == "__main__":
    main()
