"""Train-stage overhead: efficiency on the quickstart grid and the cost of a trivial trial, for
today's train stage (Ray tasks on reused workers) and for the Ray Tune stage it replaced (a fresh
trial actor per trial: commit f0b6430, checked out from git into .bench/, measured in the same run).

    python benchmarks/train_stage.py [--quick]

Efficiency = the trials' own ``train_seconds`` summed / (slots x train-stage wall time), on a local
Ray with 2 CPUs (2 slots of 1 CPU). Per-trial overhead = (slots x wall - sum of train_seconds) /
trials. Every run starts from an empty sweep folder and a fresh Ray, so each trains everything.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".bench" / "train_stage"
TUNE_COMMIT = "f0b6430"  # the last commit whose train stage ran on Ray Tune (one trial actor per trial)

try:
    from .common import table
except ImportError:
    from common import table


def _config(grid: str, n: int, storage: Path):
    from repair_ray.sweep.config import parse_config

    if grid == "quickstart":
        data = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
        data.update(storage=str(storage), name="quickstart")
        return parse_config(data, source="examples/quickstart.yaml")
    data = {
        "name": "trivial",
        "storage": str(storage),
        "dataset": {"name": "synthetic", "shape": [1, 8, 8], "num_classes": 4, "train_size": 64, "test_size": 64},
        "models": [{"arch": "mlp", "width": 8, "depth": 1}],
        "seeds": n,
        "train": {"epochs": 1, "batch_size": 64, "checkpoint_every": 1},
    }
    return parse_config(data, source="trivial")


def measure(grid: str, n: int, storage: Path, warm: bool = False) -> dict[str, float]:
    """Run the train stage of ``grid`` from scratch on a fresh 2-CPU Ray; its wall time and efficiency.

    ``warm``: first train the same grid in another folder, so the measured stage finds its worker
    processes started (torch, the dataset and torch.optim's first-use imports loaded), as every stage
    after a study's first minute does; the difference to a cold run is the workers' one-time start."""
    import ray

    from repair_ray.io.tables import read_table
    from repair_ray.sweep import train_stage

    config = _config(grid, n, storage)
    shutil.rmtree(config.root, ignore_errors=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        if warm:
            warm_up = _config(grid, n, storage / "warm-up")
            shutil.rmtree(warm_up.root, ignore_errors=True)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                train_stage.run_train_stage(warm_up, say=lambda m: None)
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            summary = train_stage.run_train_stage(config, say=lambda m: None)
        wall = time.perf_counter() - started
    finally:
        ray.shutdown()
    own = float(read_table(config.root, "models")["train_seconds"].sum())
    trials = summary.ran
    return {
        "trials": trials,
        "wall_s": wall,
        "train_s": own,
        "efficiency": own / (2 * wall),
        "overhead_per_trial_s": (2 * wall - own) / trials,
        "trials_per_min": 60 * trials / wall,
    }


def _tune_source() -> Path | None:
    """The package as of TUNE_COMMIT, extracted under .bench (None without git or Ray Tune)."""
    try:
        import ray.tune  # noqa: F401 - the old stage needs it
    except ImportError:
        return None
    target = WORK / f"src-{TUNE_COMMIT}"
    if not (target / "repair_ray").is_dir():
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", TUNE_COMMIT, "repair_ray"], capture_output=True, check=False
        )
        if archive.returncode != 0:
            return None
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(target, filter="data")
    return target


def _measure_tune_stage(grid: str, n: int) -> dict[str, float] | None:
    source = _tune_source()
    if source is None:
        return None
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source), str(REPO / "benchmarks")])}
    out = subprocess.run(
        [sys.executable, __file__, "--measure", grid, "--n", str(n), "--storage", str(WORK / "tune")],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(WORK),
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False, device: str = "cpu") -> list[dict[str, Any]]:
    rows = []
    trivial = 10 if quick else 40
    grids = (("quickstart", "quickstart grid (12 trials, 3 epochs)", 0), ("trivial", "trivial trials", trivial))
    for grid, name, n in grids:
        before = _measure_tune_stage(grid, n)
        if before is not None:
            rows.append({"grid": name, "stage": f"Ray Tune, a trial actor per trial ({TUNE_COMMIT})", **before})
        rows.append({"grid": name, "stage": "Ray tasks on reused workers (now)", **measure(grid, n, WORK / "tasks")})
        rows.append(
            {"grid": name, "stage": "the same, workers already started", **measure(grid, n, WORK / "tasks", warm=True)}
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    shown = [{**r, "efficiency_pct": f"{100 * r['efficiency']:.0f} %"} for r in rows]
    columns = [
        ("grid", "grid"),
        ("stage", "train stage"),
        ("trials", "trials"),
        ("wall_s", "train stage wall s"),
        ("train_s", "train_seconds (sum)"),
        ("efficiency_pct", "efficiency"),
        ("overhead_per_trial_s", "overhead per trial s"),
        ("trials_per_min", "trials/min"),
    ]
    return table(shown, columns) + (
        "\n\nEfficiency = the trials' own training time summed / (2 slots x wall); overhead per trial = "
        "(2 x wall - that sum) / trials. Local Ray with 2 CPUs, every trial trained from scratch; both stages "
        "measured in the same run. Workers already started: the same grid trained once before in another folder "
        "by the same driver, so the stage finds its worker processes with torch, the dataset and torch.optim's "
        "first-use import of torch._dynamo loaded; the cold row's extra time is that one-time start."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--measure", choices=("quickstart", "trivial"), help="measure one grid, print JSON")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--storage", type=Path, default=WORK / "tasks")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.n, args.storage)))
        return
    print(markdown(run(args.quick)))


if __name__ == "__main__":
    main()
