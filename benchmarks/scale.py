"""Tables and planning at study scale: planning 100,000 pairs, cheap-pair throughput, files per
pair, reading 50,000 pairs from an S3 API, and the time to the first pair row with pipelined stages.

    python benchmarks/scale.py [--quick]

Every figure is measured here, in this run: synthetic tables are written with the project's own
writer (the same schemas and file layout as a sweep), the throughput and first-row figures run the
real stages on a local 2-CPU Ray, and the S3 figure reads through moto's S3 server on loopback.
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
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".bench" / "scale"

try:
    from .common import start_moto, table
except ImportError:
    from common import start_moto, table


def _sweep_dict(name: str, storage: str, *, widths: list[int], seeds: int, **extra: Any) -> dict[str, Any]:
    data = {
        "name": name,
        "storage": storage,
        "dataset": {"name": "synthetic", "shape": [1, 4, 4], "num_classes": 2, "train_size": 128, "test_size": 64},
        "models": [{"arch": "mlp", "width": widths, "depth": 1}],
        "seeds": seeds,
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.05},
        "align": ["none"],
        "correction": ["none"],
        "alphas": 3,
        "eval": {"train_samples": 64, "stat_samples": 32, "stat_batch_size": 64, "eval_batch_size": 64},
    }
    data.update(extra)
    return data


def _fake_models(config, *, write_checkpoints: bool) -> None:
    """``models`` rows (and small checkpoint files) for every trial of ``config``, in one file."""
    from repair_ray.io import storage
    from repair_ray.io.tables import new_stem, table_file, write_rows
    from repair_ray.sweep.layout import checkpoint_path

    rows = []
    for plan in config.models:
        for seed in plan.seeds:
            path = checkpoint_path(plan.model_key, seed)
            size = 128
            if write_checkpoints:
                storage.write_bytes_atomic(storage.join(config.root, path), b"x" * size)
            rows.append(
                {
                    "sweep": config.name,
                    "model_key": plan.model_key,
                    "arch": "mlp",
                    "width": float(plan.model.width),
                    "depth": plan.model.depth,
                    "norm": "none",
                    "seed": seed,
                    "status": "ok",
                    "checkpoint_uri": path,
                    "checkpoint_bytes": size,
                }
            )
    write_rows(table_file(config.root, "models", new_stem("models")), "models", rows)


def _pair_arrays(config, n_pairs: int, methods: list[tuple[str, str]]) -> dict[str, Any]:
    """Arrow tables of ``n_pairs`` finished pairs of ``config`` (every method, every alpha, both splits)."""
    import pyarrow as pa

    from repair_ray.io.tables import SCHEMAS
    from repair_ray.sweep.planning import analysis_key

    key = analysis_key(config.pair_settings, config.dataset.as_dict())
    ids = [(plan.model_key, a, b) for plan in config.models for a, b in plan.pairs][:n_pairs]
    model_keys = np.array([i[0] for i in ids], dtype=object)
    seed_a = np.array([i[1] for i in ids])
    seed_b = np.array([i[2] for i in ids])
    aligns = np.array([m[0] for m in methods], dtype=object)
    corrections = np.array([m[1] for m in methods], dtype=object)
    n, m = len(ids), len(methods)

    def frame(table: str, repeat: int, extra: dict[str, Any]) -> pa.Table:
        per_pair = m * repeat
        columns = {
            "sweep": np.full(n * per_pair, config.name, dtype=object),
            "model_key": np.repeat(model_keys, per_pair),
            "analysis_key": np.full(n * per_pair, key, dtype=object),
            "seed_a": np.repeat(seed_a, per_pair),
            "seed_b": np.repeat(seed_b, per_pair),
            "align": np.tile(np.repeat(aligns, repeat), n),
            "correction": np.tile(np.repeat(corrections, repeat), n),
            **extra,
        }
        schema = SCHEMAS[table]
        return pa.table({f.name: columns.get(f.name, pa.nulls(n * per_pair, f.type)) for f in schema}, schema=schema)

    alphas = np.array(config.pair_settings.alphas)
    splits = np.array(["train", "test"], dtype=object)
    n_curve = len(alphas) * 2
    rng = np.random.default_rng(0)
    return {
        "pairs": frame(
            "pairs",
            1,
            {"status": np.full(n * m, "ok", dtype=object), "barrier_test_loss": rng.random(n * m)},
        ),
        "curves": frame(
            "curves",
            n_curve,
            {
                "split": np.tile(np.repeat(splits, len(alphas)), n * m),
                "alpha": np.tile(alphas, n * m * 2),
                "loss": rng.random(n * m * n_curve),
                "acc": rng.random(n * m * n_curve),
            },
        ),
        "layers": frame(
            "layers",
            1,
            {
                "layer": np.full(n * m, "layers.0.linear", dtype=object),
                "layer_index": np.zeros(n * m, dtype=np.int64),
                "std_ratio": rng.random(n * m),
            },
        ),
    }


def _write_tables(root: str, arrays: dict[str, Any], rows_per_file: int) -> None:
    from repair_ray.io.tables import new_stem, table_file, write_arrow

    for name, data in arrays.items():
        for start in range(0, data.num_rows, rows_per_file):
            write_arrow(table_file(root, name, new_stem("compact")), data.slice(start, rows_per_file))


# ----------------------------------------------------------------------------- planning


_PLAN_PROBE = r"""
import json, resource, sys, time, tracemalloc
from repair_ray.sweep.config import parse_config
from repair_ray.sweep.pair_stage import PairQueue
from repair_ray.sweep.planning import analysis_keys, plan_trials, read_pair_state

config = parse_config(json.loads(sys.argv[1]))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
started = time.perf_counter()
trials = plan_trials(config)
state = read_pair_state(config.root, analysis_keys(config.pair_settings, config.dataset.as_dict()))
queue = PairQueue(config, state)
queue.add_trained(trials.done)
seconds = time.perf_counter() - started
peak = tracemalloc.get_traced_memory()[1]
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
print(json.dumps({"seconds": seconds, "python_peak_mb": peak / 2**20, "rss_growth_mb": rss / 1024,
                  "pairs": config.n_pairs, "done": queue.done, "ready": len(queue.ready)}))
"""


def plan_benchmark(quick: bool) -> dict[str, Any]:
    """Plan a 100,000-pair sweep on storage that holds 50,000 finished pairs (a fresh process)."""
    from repair_ray.sweep.config import parse_config

    widths = list(range(8, 8 + (4 if quick else 20)))
    seeds = 101 if not quick else 41
    data = _sweep_dict("plan", str(WORK), widths=widths, seeds=seeds)
    config = parse_config(data)
    shutil.rmtree(config.root, ignore_errors=True)
    _fake_models(config, write_checkpoints=True)
    half = config.n_pairs // 2
    _write_tables(config.root, _pair_arrays(config, half, [("none", "none")]), 2_000_000)
    from repair_ray.io.tables import write_current_keys
    from repair_ray.sweep.planning import analysis_key

    write_current_keys(
        config.root,
        [p.model_key for p in config.models],
        [analysis_key(config.pair_settings, config.dataset.as_dict())],
    )
    out = subprocess.run(
        [sys.executable, "-c", _PLAN_PROBE, json.dumps(data)], capture_output=True, text=True, check=True
    )
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return {"measure": "plan", **row}


# ----------------------------------------------------------------------------- throughput


def _trained_sweep(name: str, seeds: int, **extra: Any):
    """A cheap sweep whose networks are trained in this process (checkpoints and models rows)."""
    from repair_ray.datasets import load_dataset
    from repair_ray.io.tables import new_stem, table_file, write_rows
    from repair_ray.sweep.config import parse_config
    from repair_ray.sweep.layout import checkpoint_path, checkpoint_uri
    from repair_ray.training import train_model

    config = parse_config(_sweep_dict(name, str(WORK), widths=[4], seeds=seeds, **extra))
    shutil.rmtree(config.root, ignore_errors=True)
    dataset = load_dataset(config.dataset.name, **config.dataset.options)
    rows = []
    for plan in config.models:
        for seed in plan.seeds:
            uri = checkpoint_uri(config.root, plan.model_key, seed)
            train_model(plan.model, config.train, dataset, seed=seed, checkpoint_uri=uri)
            rows.append(
                {
                    "sweep": config.name,
                    "model_key": plan.model_key,
                    "seed": seed,
                    "status": "ok",
                    "checkpoint_uri": checkpoint_path(plan.model_key, seed),
                    "checkpoint_bytes": os.path.getsize(uri),
                }
            )
    write_rows(table_file(config.root, "models", new_stem("models")), "models", rows)
    return config


def _count_files(root: str) -> int:
    return sum(1 for p in Path(root, "tables").rglob("*.parquet") if "_damaged" not in p.parts)


def throughput_benchmark(quick: bool) -> list[dict[str, Any]]:
    """Cheap pairs through the real pair stage on a local 2-CPU Ray: pairs/min and files written."""
    import ray

    from repair_ray.io.tables import compact_tables
    from repair_ray.sweep.pair_stage import run_pair_stage

    rows = []
    for seeds in [21] if quick else [46, 142]:
        config = _trained_sweep(f"cheap-{seeds}", seeds)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                summary = run_pair_stage(config, say=lambda m: None)
            seconds = time.perf_counter() - started
        finally:
            ray.shutdown()
        written = _count_files(config.root)
        compact_tables(config.root)
        rows.append(
            {
                "measure": "throughput",
                "pairs": summary.ran,
                "failed": summary.failed,
                "seconds": seconds,
                "pairs_per_min": 60 * summary.ran / seconds,
                "files_written": written,
                "files_after_compaction": _count_files(config.root),
            }
        )
    return rows


# ----------------------------------------------------------------------------- S3


def s3_benchmark(quick: bool) -> dict[str, Any]:
    """``load_tables`` of a finished 50,000-pair sweep (6 methods, 21 alphas) from moto's S3 server."""
    import tempfile

    import boto3

    from repair_ray import load_tables
    from repair_ray.io.tables import COMPACT_ROWS, write_current_keys
    from repair_ray.sweep.config import parse_config
    from repair_ray.sweep.planning import analysis_key

    log = Path(tempfile.mkdtemp(prefix="moto-"), "server.log")
    server, port = start_moto(log)  # port 0: the port it got, never one another process may take first
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for _ in range(100):
            with contextlib.suppress(Exception):
                boto3.client("s3").create_bucket(Bucket="bench")
                break
            time.sleep(0.1)
        widths = list(range(8, 18))
        data = _sweep_dict(
            "s3read",
            "s3://bench/runs",
            widths=widths,
            seeds=101,
            align=["none", "weight", "activation"],
            correction=["none", "repair"],
            alphas=21,
        )
        config = parse_config(data)
        n = 5_000 if quick else 50_000
        methods = [(a, c) for a in data["align"] for c in data["correction"]]
        arrays = _pair_arrays(config, n, methods)
        _fake_models(config, write_checkpoints=False)
        _write_tables(config.root, arrays, COMPACT_ROWS)
        write_current_keys(
            config.root,
            [p.model_key for p in config.models],
            [analysis_key(config.pair_settings, config.dataset.as_dict())],
        )
        started = time.perf_counter()
        tables = load_tables(config.root)
        seconds = time.perf_counter() - started
        return {
            "measure": "s3_load",
            "pairs": n,
            "seconds": seconds,
            "rows": {name: len(frame) for name, frame in tables.items()},
        }
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(log.parent, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ----------------------------------------------------------------------------- first row


def first_row_benchmark(quick: bool) -> dict[str, Any]:
    """Time to the first pair row when one model config trains ~5x longer than the other (real stages)."""
    from repair_ray import load_tables
    from repair_ray.sweep.config import parse_config
    from repair_ray.sweep.runner import run_sweep

    data = _sweep_dict("firstrow", str(WORK), widths=[8], seeds=2)
    data["models"] = [{"arch": "mlp", "width": 8, "depth": 1}, {"arch": "mlp", "width": 512, "depth": 3}]
    data["dataset"] = {**data["dataset"], "train_size": 2048}
    data["train"] = {"epochs": 2 if quick else 6, "batch_size": 32, "lr": 0.02}
    config = parse_config(data)
    shutil.rmtree(config.root, ignore_errors=True)
    with contextlib.redirect_stdout(io.StringIO()):
        result = run_sweep(config, num_cpus=2, say=lambda m: None)
    models = load_tables(config.root)["models"]
    start = models["started_at"].min()
    per_config = models.groupby("width")["train_seconds"].mean()
    slowest_end = (models["finished_at"].max() - start).total_seconds()
    pairs = load_tables(config.root)["pairs"]
    first_pair_end = (pairs["finished_at"].min() - start).total_seconds()
    return {
        "measure": "first_row",
        "slow_over_fast_training": float(per_config.max() / per_config.min()),
        "first_pair_row_s": first_pair_end,
        "slowest_trial_end_s": slowest_end,
        "sweep_seconds": result.seconds,
    }


# ----------------------------------------------------------------------------- report


def run(quick: bool = False) -> list[dict[str, Any]]:
    WORK.mkdir(parents=True, exist_ok=True)
    rows = [plan_benchmark(quick)]
    print(rows[-1], flush=True)
    rows += throughput_benchmark(quick)
    print(rows[-1], flush=True)
    rows.append(s3_benchmark(quick))
    print(rows[-1], flush=True)
    rows.append(first_row_benchmark(quick))
    print(rows[-1], flush=True)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    plan = next(r for r in rows if r["measure"] == "plan")
    s3 = next(r for r in rows if r["measure"] == "s3_load")
    first = next(r for r in rows if r["measure"] == "first_row")
    plan_met = "met" if plan["seconds"] < 10 and plan["rss_growth_mb"] < 300 else "NOT met"
    lines = [
        f"- **Planning** {plan['pairs']:,} pairs with {plan['done']:,} done: {plan['seconds']:.1f} s, "
        f"{plan['python_peak_mb']:.0f} MB peak Python allocations, {plan['rss_growth_mb']:.0f} MB RSS growth "
        f"(target < 10 s and < 300 MB: {plan_met}).",
        f"- **load_tables from an S3 API** (moto server on loopback) of {s3['pairs']:,} finished pairs "
        f"({s3['rows']['curves']:,} curve rows): {s3['seconds']:.1f} s "
        f"(target < 30 s: {'met' if s3['seconds'] < 30 else 'NOT met'}).",
        f"- **First pair row** with one model config training {first['slow_over_fast_training']:.1f}x longer: "
        f"{first['first_pair_row_s']:.1f} s after the first trial started, against "
        f"{first['slowest_trial_end_s']:.1f} s for the slowest trial to end (where an unpipelined pair stage "
        "would only start).",
        "",
        "Cheap pairs through the real pair stage (local Ray, 2 CPUs; MLP 16-4-2 on 4x4 synthetic data, one "
        "method, 3 alphas), and the files its tables hold:",
        "",
        table(
            [r for r in rows if r["measure"] == "throughput"],
            [
                ("pairs", "pairs"),
                ("seconds", "seconds"),
                ("pairs_per_min", "pairs/min"),
                ("files_written", "files written"),
                ("files_after_compaction", "files after compaction"),
            ],
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    rows = run(quick=args.quick)
    print(markdown(rows))
