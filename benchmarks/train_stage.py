"""Train-stage overhead: efficiency on the quickstart grid and the cost of a trivial trial, with Tune's
trial actors reused across trials and without (a fresh worker process per trial).

    python benchmarks/train_stage.py [--quick]

Efficiency = the trials' own ``train_seconds`` summed / (slots x train-stage wall time), on a local
Ray with 2 CPUs (2 slots of 1 CPU). Per-trial overhead = (slots x wall - sum of train_seconds) /
trials. Every run starts from an empty sweep folder and a fresh Ray, so each trains everything.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".bench" / "train_stage"

try:
    from .common import table
except ImportError:
    from common import table


def _quickstart():
    from repair_ray.sweep.config import parse_config

    data = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    data.update(storage=str(WORK), name="quickstart")
    return parse_config(data, source="examples/quickstart.yaml")


def _trivial(n: int):
    from repair_ray.sweep.config import parse_config

    data = {
        "name": "trivial",
        "storage": str(WORK),
        "dataset": {"name": "synthetic", "shape": [1, 8, 8], "num_classes": 4, "train_size": 64, "test_size": 64},
        "models": [{"arch": "mlp", "width": 8, "depth": 1}],
        "seeds": n,
        "train": {"epochs": 1, "batch_size": 64, "checkpoint_every": 1},
    }
    return parse_config(data, source="trivial")


def _train_stage(config, reuse: bool) -> dict[str, float]:
    import ray

    from repair_ray.io.tables import read_table
    from repair_ray.sweep import train_stage

    shutil.rmtree(config.root, ignore_errors=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    before = train_stage.REUSE_ACTORS
    train_stage.REUSE_ACTORS = reuse
    try:
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            summary = train_stage.run_train_stage(config, say=lambda m: None)
        wall = time.perf_counter() - started
    finally:
        train_stage.REUSE_ACTORS = before
        ray.shutdown()
    models = read_table(config.root, "models")
    own = float(models["train_seconds"].sum())
    trials = summary.ran
    return {
        "trials": trials,
        "wall_s": wall,
        "train_s": own,
        "efficiency": own / (2 * wall),
        "overhead_per_trial_s": (2 * wall - own) / trials,
        "trials_per_min": 60 * trials / wall,
    }


def run(quick: bool = False, device: str = "cpu") -> list[dict[str, Any]]:
    rows = []
    grids = [("quickstart grid (12 trials, 3 epochs)", _quickstart())]
    grids.append(("trivial trials", _trivial(10 if quick else 40)))
    for name, config in grids:
        for reuse in (False, True):
            rows.append({"grid": name, "reuse_actors": reuse, **_train_stage(config, reuse)})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    shown = [
        {
            **r,
            "workers": "reused" if r["reuse_actors"] else "one per trial",
            "efficiency_pct": f"{100 * r['efficiency']:.0f} %",
        }
        for r in rows
    ]
    columns = [
        ("grid", "grid"),
        ("workers", "trial workers"),
        ("trials", "trials"),
        ("wall_s", "train stage wall s"),
        ("train_s", "train_seconds (sum)"),
        ("efficiency_pct", "efficiency"),
        ("overhead_per_trial_s", "overhead per trial s"),
        ("trials_per_min", "trials/min"),
    ]
    return table(shown, columns) + (
        "\n\nEfficiency = the trials' own training time summed / (2 slots x wall); overhead per trial = "
        "(2 x wall - that sum) / trials. Local Ray with 2 CPUs, every trial trained from scratch."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    rows = run(parser.parse_args().quick)
    print(markdown(rows))


if __name__ == "__main__":
    main()
