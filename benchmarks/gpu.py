"""The GPU figures of issue 22, on one GPU, in one run of a few minutes.

    python benchmarks/gpu.py --out DIR [--quick] [--device cpu] [--budget SECONDS]
    python benchmarks/gpu.py --render DIR/gpu_results.json   # writes BENCHMARKS.md's GPU section

Sections, in order of importance (a section that would start after ``--budget`` seconds is skipped,
one that fails is recorded with its error and the rest go on; results are written after each):

- ``pair_quickstart``: one quickstart pair (MLP 128x4 on MNIST-shaped data, 10k train-curve / 10k test
  / 5k statistics samples, 21 α, aligns none/weight/activation x corrections none/repair), one α per
  forward pass (the path before issue 22) vs several (``alphas_per_pass`` automatic), and how far
  their rows differ.
- ``ray_sweep``: a Ray sweep on this GPU with ``resources: {train: {gpu: 0.25}, pair: {gpu: 0.25}}``:
  the device its rows name and how many pairs (and trials) ran at once, read from the rows' times.
- ``train_resnet``: ResNet20 x4 (BatchNorm) training throughput on CIFAR-shaped data, batch 500:
  fp32, bf16 NCHW, bf16 channels-last (with and without CIFAR's crops and flips), ``train.compile``,
  and 4 seeds stacked.
- ``seeds_mlp``: ``seeds_per_trial`` on MLPs of width 32-512: N seeds together vs one at a time.
- ``stack_probe``: which networks train stacked (``seeds_per_trial``, vmap) on this device.
- ``pair_resnet``: a ResNet20 x4 BN pair, 3 aligns x 3 corrections: at 2,000 samples and 11 α (the
  size measured before) per variant, then at 10,000 test / 5,000 statistics and train-curve samples
  and 21 α, with the arithmetic it needs at least (``sample_forwards`` x FLOPs per sample).

Data is generated (``make_synthetic``): speed does not depend on it, and no dataset file travels to
a GPU machine. Every time is wall time around synchronised CUDA work, median of the repeats.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks import sections  # noqa: E402
from benchmarks.common import machine, table  # noqa: E402

SECTION = "GPU (issue 22)"
KEY = "benchmarks/gpu.py: gpu"  # the markers of its section in BENCHMARKS.md (benchmarks/sections.py)
DEADLINE = [float("inf")]  # time.time() after which no long case starts (main sets it from --budget)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls (after the work on the device is done) and the last result."""
    times, out = [], None
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def _trained(model: str, width: float, depth: int | None, norm: str, data, device, seeds, epochs=1, lr=0.05):
    from repair_ray.models import ModelConfig
    from repair_ray.training import TrainConfig, Trainer

    config = ModelConfig(model, width, depth, norm, {})
    nets = []
    for seed in seeds:
        trainer = Trainer(config, TrainConfig(epochs=epochs, batch_size=256, lr=lr), data, seed=seed, device=device)
        trainer.run(checkpoint_uri=None)
        nets.append(trainer.model.eval())
    return nets


def pair_quickstart(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    from repair_ray import PairSettings, analyse_pair
    from repair_ray.datasets import make_synthetic

    n = 600 if quick else 10000
    data = make_synthetic(shape=(1, 28, 28), num_classes=10, train_size=n + 2000, test_size=n, seed=0).to(device)
    a, b = _trained("mlp", 128, 4, "none", data, device, (0, 1), epochs=2)
    settings = PairSettings(
        aligns=("none", "weight", "activation"),
        corrections=("none", "repair"),
        alphas=21,
        train_samples=n,
        stat_samples=n // 2,
    )
    rows, results = [], {}
    # eval_batch_size only changes the rounding of the curves (evaluation is in eval mode): what a
    # bigger one gives on top of several α per pass
    big_batches = dataclasses.replace(settings, eval_batch_size=n)
    variants = (
        ("one α per pass (before)", 1, settings),
        ("alphas_per_pass automatic", None, settings),
        (f"alphas_per_pass automatic, eval_batch_size {n}", None, big_batches),
    )
    for label, per_pass, how in variants:
        analyse_pair(a, b, data, how, alphas_per_pass=per_pass)  # warm-up: kernels, caches
        run = functools.partial(analyse_pair, a, b, data, how, alphas_per_pass=per_pass)
        seconds, result = _timed(run, device, 3)
        results[label] = result
        rows.append(
            {
                "case": "quickstart pair, MLP 128x4",
                "variant": label,
                "alphas_per_pass": result.pairs[0]["alphas_per_pass"],
                "seconds": seconds,
                "align_s": sum({r["align"]: r["align_seconds"] for r in result.pairs}.values()),
                "stat_s": sum(r["stat_seconds"] for r in result.pairs),
                "eval_s": sum(r["eval_seconds"] for r in result.pairs),
            }
        )
    before = results[variants[0][0]]
    for row, (label, _, _) in zip(rows[1:], variants[1:], strict=True):
        after = results[label]
        row["speedup"] = rows[0]["seconds"] / row["seconds"]
        gaps = [abs(x["loss"] - y["loss"]) for x, y in zip(before.curves, after.curves, strict=True)]
        row["max_curve_loss_gap"] = max(gaps)
    return rows


def ray_sweep(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    import pandas as pd

    from repair_ray import load_tables
    from repair_ray.sweep.config import parse_config
    from repair_ray.sweep.runner import run_sweep

    gpu = 0.25 if device.type == "cuda" else 0.0
    n = 1000 if quick else 10000
    with tempfile.TemporaryDirectory() as storage:
        config = parse_config(
            {
                "name": "gpu-sweep",
                "storage": storage,
                "dataset": {"name": "synthetic", "shape": [1, 28, 28], "train_size": n, "test_size": n // 2},
                "models": [{"arch": "mlp", "width": 128, "depth": 4}],
                "seeds": 4 if quick else 6,
                "train": {"epochs": 2, "batch_size": 256, "lr": 0.05},
                "align": ["none", "weight", "activation"],
                "correction": ["none", "repair"],
                "alphas": 21,
                "eval": {"train_samples": n // 2, "stat_samples": n // 4},
                "resources": {"train": {"cpu": 1, "gpu": gpu}, "pair": {"cpu": 1, "gpu": gpu}},
            }
        )
        lines: list[str] = []
        started = time.perf_counter()
        result = run_sweep(config, num_cpus=8, say=lines.append)
        seconds = time.perf_counter() - started
        tables = load_tables(config.root)
    pairs, models = tables["pairs"], tables["models"]

    def most_at_once(frame: pd.DataFrame) -> int:
        events = sorted(
            [(t, 1) for t in frame["started_at"].dropna()] + [(t, -1) for t in frame["finished_at"].dropna()],
            key=lambda e: (e[0], e[1]),
        )
        now = best = 0
        for _, step in events:
            now += step
            best = max(best, now)
        return best

    one_row_per_pair = pairs.drop_duplicates(["seed_a", "seed_b"])
    return [
        {
            "case": f"Ray sweep, {len(models)} MLPs 128x4, {len(one_row_per_pair)} pairs, gpu 0.25 per task",
            "seconds": seconds,
            "pairs_ok": int((pairs["status"] == "ok").sum()),
            "pair_rows": len(pairs),
            "pair_devices": ", ".join(sorted(set(pairs["device"].astype(str)))),
            "model_devices": ", ".join(sorted(set(models["device"].astype(str)))),
            "pairs_at_once": most_at_once(one_row_per_pair),
            "trials_at_once": most_at_once(models),
            "failed": result.pairs.failed + result.train.failed,
            "first_error": next(iter(pairs.loc[pairs["status"] != "ok", "error"].astype(str)), None),
        }
    ]


def train_resnet(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    from repair_ray.datasets import make_synthetic
    from repair_ray.models import ModelConfig
    from repair_ray.training import TrainConfig, Trainer

    batch, steps = (16, 3) if quick else (500, 20)
    width = 0.25 if quick else 4
    shape = (3, 16, 16) if quick else (3, 32, 32)
    data = make_synthetic(shape=shape, num_classes=10, train_size=batch * steps, test_size=batch, seed=0)
    data = dataclasses.replace(data, num_classes=10, in_shape=shape).to(device)
    model = ModelConfig("resnet20", width, None, "batch", {})
    bf16, augmented = {"precision": "bf16", "augment": False}, {"precision": "bf16", "augment": True}
    variants: list[tuple[str, dict[str, Any], dict[str, Any], int]] = [
        ("fp32, NCHW", {"precision": "fp32", "augment": False}, {"channels_last": False}, 1),
        ("bf16, NCHW", bf16, {"channels_last": False}, 1),
        ("bf16, channels-last", bf16, {"channels_last": True}, 1),
        ("bf16, channels-last, crops and flips (CIFAR's recipe)", augmented, {"channels_last": True}, 1),
        ("bf16, 4 seeds stacked", bf16, {}, 4),
        # compiled last: its first epoch compiles (tens of seconds)
        ("bf16, channels-last, train.compile", bf16, {"channels_last": True, "compile": True}, 1),
    ]
    rows = []
    for label, train_kw, trainer_kw, seeds in variants:
        config = TrainConfig(epochs=3, batch_size=batch, lr=0.05, **train_kw)
        try:
            trainers = [Trainer(model, config, data, seed=s, device=device, **trainer_kw) for s in range(seeds)]
            warm_started = time.perf_counter()
            _epoch(trainers)  # warm-up epoch: cuDNN autotuning, compilation
            _sync(device)
            warm = time.perf_counter() - warm_started
            seconds, _ = _timed(lambda t=trainers: _epoch(t), device, 1)
            images = batch * steps * seeds
            rows.append(
                {
                    "case": f"ResNet20 x{width:g} BN training, batch {batch}",
                    "variant": label,
                    "images_per_s": images / seconds,
                    "step_ms": 1000 * seconds / steps,
                    "first_epoch_s": warm,
                }
            )
        except Exception as error:  # noqa: BLE001 - one variant's failure is a finding, the rest go on
            rows.append({"case": f"ResNet20 x{width:g} BN training", "variant": label, "error": _short(error)})
    return rows


def _epoch(trainers: list) -> None:
    """One training epoch (no evaluation): a lone trainer's, or the stack of several (as train_together runs it)."""
    if len(trainers) == 1:
        trainers[0].train_epoch()
        return
    from repair_ray.multiseed import Stack  # the stacked loop's epoch alone, without train_together's evaluations

    Stack(trainers).train_epoch()


def seeds_mlp(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    from repair_ray.datasets import make_synthetic
    from repair_ray.models import ModelConfig
    from repair_ray.multiseed import train_together
    from repair_ray.training import TrainConfig, Trainer

    batch, batches = 128, (5 if quick else 40)
    data = make_synthetic(shape=(1, 28, 28), num_classes=10, train_size=batch * batches, test_size=1000, seed=0)
    data = dataclasses.replace(data, num_classes=10, in_shape=(1, 28, 28)).to(device)
    config = TrainConfig(epochs=2, batch_size=batch, lr=0.05)
    counts = (1, 4) if quick else (1, 16, 64)
    rows = []
    for width in (32, 128) if quick else (32, 128, 512):
        model = ModelConfig("mlp", width, 2, "none", {})

        def trainers(n: int, model: Any = model) -> list:
            return [Trainer(model, config, data, seed=s, device=device) for s in range(n)]

        train_together(trainers(2))  # warm-up
        alone = trainers(4)
        lone, _ = _timed(lambda alone=alone: [t.run() for t in alone], device, 1)
        lone /= 4
        for n in counts:
            stack = trainers(n)
            seconds, _ = _timed(lambda stack=stack: train_together(stack), device, 1)
            rows.append(
                {
                    "case": f"mlp {width}x2, {batches} batches of {batch}, 2 epochs",
                    "seeds": n,
                    "s_per_seed": seconds / n,
                    "lone_s_per_seed": lone,
                    "speedup_per_seed": lone / (seconds / n),
                }
            )
    return rows


def pair_resnet(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    from torch.utils.flop_counter import FlopCounterMode

    from repair_ray import PairSettings, analyse_pair
    from repair_ray.correction import has_batchnorm
    from repair_ray.datasets import make_synthetic
    from repair_ray.pair import sample_forwards

    width = 0.25 if quick else 4
    big, small = (400, 200) if quick else (10000, 2000)
    full = make_synthetic(shape=(3, 32, 32), num_classes=10, train_size=big, test_size=big, seed=0).to(device)
    a, b = _trained("resnet20", width, None, "batch", full, device, (0, 1), epochs=1, lr=0.02)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        a(full.test.x[:8])
    per_sample = counter.get_total_flops() / 8
    aligns, corrections = ("none", "weight", "activation"), ("none", "reset", "repair")
    cases = [
        (
            f"{small} samples, 11 α",
            dataclasses.replace(full, test=full.test.head(small), num_classes=10),
            PairSettings(aligns, corrections, alphas=11, train_samples=small, stat_samples=small),
        ),
        (
            f"{big} test / {big // 2} statistics and train-curve samples, 21 α",
            full,
            PairSettings(aligns, corrections, alphas=21, train_samples=big // 2, stat_samples=big // 2),
        ),
    ]
    # (name, analyse_pair keywords, cuDNN autotuning, channels-last, eval.precision)
    variants = [
        ("one α per pass", {"alphas_per_pass": 1}, False, False, "fp32"),
        ("one α per pass, cuDNN autotuned", {"alphas_per_pass": 1}, True, False, "fp32"),
        ("one α per pass, cuDNN autotuned, channels-last", {"alphas_per_pass": 1}, True, True, "fp32"),
        ("one α per pass, cuDNN autotuned, channels-last, TF32", {"alphas_per_pass": 1}, True, True, "tf32"),
        ("alphas_per_pass automatic", {}, False, False, "fp32"),
        ("all α in one pass", {"alphas_per_pass": 11}, False, False, "fp32"),
    ]
    from repair_ray.stacked import auto_alphas_per_pass

    auto = auto_alphas_per_pass(a, full.test.x, batch_size=1000, points=11)
    if auto == 1:  # the automatic choice is the one-α path: measured once, under that name
        variants = [v for v in variants if v[0] != "alphas_per_pass automatic"]
        variants[0] = ("one α per pass (= alphas_per_pass automatic)", *variants[0][1:])
    rows: list[dict[str, Any]] = []
    for case, (label, data, settings) in enumerate(cases):
        floor = sample_forwards(settings, settings.train_samples, len(data.test), batchnorm=has_batchnorm(a))
        if case == 1:  # the big case only with the fastest variant of the small one (it takes a while)
            if time.time() + 60 > DEADLINE[0]:
                rows.append({"case": label, "variant": "skipped: the time budget was spent"})
                break
            timed = [r for r in rows if "seconds" in r]
            fastest = min(timed, key=lambda r: r["seconds"])["variant"] if timed else variants[0][0]
            variants = [v for v in variants if v[0] == fastest]
        for name, kwargs, autotune, channels_last, precision in variants:
            torch.backends.cudnn.benchmark = autotune
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            x, y = a.to(memory_format=fmt), b.to(memory_format=fmt)
            try:
                how = dataclasses.replace(settings, precision=precision)
                run = functools.partial(analyse_pair, x, y, data, how, **kwargs)
                seconds, result = _timed(run, device, 1)
            except Exception as error:  # noqa: BLE001 - recorded, the other variants go on
                rows.append({"case": label, "variant": name, "error": _short(error)})
                continue
            rows.append(
                {
                    "case": label,
                    "variant": name,
                    "alphas_per_pass": result.pairs[0]["alphas_per_pass"],
                    "seconds": seconds,
                    "floor_pflop": floor * per_sample / 1e15,
                    "tflop_per_s": floor * per_sample / seconds / 1e12,
                }
            )
    torch.backends.cudnn.benchmark = False
    a.to(memory_format=torch.contiguous_format)
    return rows


def stack_probe(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    """Which networks train stacked (vmap) on this device: 4 seeds, one epoch of 5 steps each."""
    from repair_ray.datasets import make_synthetic
    from repair_ray.models import ModelConfig
    from repair_ray.multiseed import Stack
    from repair_ray.training import TrainConfig, Trainer

    cases = [
        ("mlp 128x2, BatchNorm", ModelConfig("mlp", 128, 2, "batch", {}), (1, 28, 28), True),
        ("vgg11 x0.25, no norm", ModelConfig("vgg", 0.25, 11, "none", {}), (3, 32, 32), True),
        ("resnet20 x1, LayerNorm", ModelConfig("resnet20", 1, None, "layer", {}), (3, 32, 32), True),
        ("resnet20 x1, BatchNorm", ModelConfig("resnet20", 1, None, "batch", {}), (3, 32, 32), True),
        ("resnet20 x1, BatchNorm, cuDNN off", ModelConfig("resnet20", 1, None, "batch", {}), (3, 32, 32), False),
        ("resnet20 x1, BatchNorm, NCHW trainers", ModelConfig("resnet20", 1, None, "batch", {}), (3, 32, 32), None),
    ]
    rows = []
    for label, model, shape, cudnn in cases:
        data = make_synthetic(shape=shape, num_classes=10, train_size=128 * 5, test_size=128, seed=0)
        data = dataclasses.replace(data, num_classes=10, in_shape=shape).to(device)
        config = TrainConfig(epochs=2, batch_size=128, lr=0.05, augment=False)
        layout = {"channels_last": False} if cudnn is None else {}
        try:
            trainers = [Trainer(model, config, data, seed=s, device=device, **layout) for s in range(4)]
            with torch.backends.cudnn.flags(enabled=cudnn is not False):
                Stack(trainers).train_epoch()  # warm-up
                seconds, _ = _timed(lambda t=trainers: Stack(t).train_epoch(), device, 1)
            rows.append({"network": label, "ok": True, "ms_per_step": 1000 * seconds / 5})
        except Exception as error:  # noqa: BLE001 - which networks fail is the finding
            rows.append({"network": label, "ok": False, "error": _short(error)})
    return rows


SECTIONS: dict[str, Callable[[torch.device, bool], list[dict[str, Any]]]] = {
    "pair_quickstart": pair_quickstart,
    "ray_sweep": ray_sweep,
    "train_resnet": train_resnet,
    "seeds_mlp": seeds_mlp,
    "pair_resnet": pair_resnet,
    "stack_probe": stack_probe,
}

COLUMNS = {
    "stack_probe": [("network", "network"), ("ok", "trains stacked"), ("ms_per_step", "ms/step"), ("error", "error")],
    "pair_quickstart": [
        ("variant", "variant"),
        ("alphas_per_pass", "α per pass"),
        ("seconds", "s/pair"),
        ("align_s", "align s"),
        ("stat_s", "statistics s"),
        ("eval_s", "evaluation s"),
        ("speedup", "speedup"),
        ("max_curve_loss_gap", "max |Δ loss| of the curves"),
    ],
    "ray_sweep": [
        ("case", "sweep"),
        ("seconds", "wall s"),
        ("pairs_ok", "ok pair rows"),
        ("pair_rows", "pair rows"),
        ("pair_devices", "pairs' device"),
        ("model_devices", "models' device"),
        ("pairs_at_once", "pairs at once (most)"),
        ("trials_at_once", "networks training at once (most)"),
        ("first_error", "first failure"),
    ],
    "train_resnet": [
        ("case", "case"),
        ("variant", "variant"),
        ("images_per_s", "images/s"),
        ("step_ms", "ms/step"),
        ("first_epoch_s", "first epoch s (warm-up)"),
        ("error", "error"),
    ],
    "seeds_mlp": [
        ("case", "network"),
        ("seeds", "N"),
        ("s_per_seed", "s per seed"),
        ("lone_s_per_seed", "alone, s per seed"),
        ("speedup_per_seed", "speedup per seed"),
    ],
    "pair_resnet": [
        ("case", "case"),
        ("variant", "variant"),
        ("alphas_per_pass", "α per pass"),
        ("seconds", "s/pair"),
        ("floor_pflop", "PFLOP needed (floor)"),
        ("tflop_per_s", "TFLOP/s achieved"),
        ("error", "error"),
    ],
}


def _short(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:300]


def markdown(results: dict[str, Any], numbered: bool = False) -> str:
    """BENCHMARKS.md's GPU section from a results file (``numbered``: rows say which run made them)."""
    lines = [
        f"## {SECTION}",
        "",
        "Command (on the GPU machine): `python benchmarks/gpu.py --out DIR`; then, here, "
        "`python benchmarks/gpu.py --render DIR/gpu_results.json`.",
        "",
        (__doc__ or "").strip().split("\n\n")[0],
        "",
        f"- Machine: {results['machine']}",
        f"- Date: {results['date']}; total {results['seconds']:.0f} s",
        "",
    ]
    for name, section in results["sections"].items():
        lines += [f"### {name}", ""]
        if "error" in section:
            lines += [f"Failed: `{section['error']}`", ""]
            continue
        if "skipped" in section:
            lines += [f"Skipped: {section['skipped']}", ""]
            continue
        columns = [("run", "run"), *COLUMNS[name]] if numbered else COLUMNS[name]
        lines += [table(section["rows"], columns), "", f"_({section['seconds']:.0f} s)_", ""]
    return "\n".join(lines)


def render(results_paths: list[Path], benchmarks: Path) -> None:
    """Put the GPU section of ``results_paths`` into ``benchmarks``: the text between its markers is
    replaced (the section is added at the end where absent), every other byte stays. Several files
    (runs on the same machine, each lease its own) are shown together, each row with its run."""
    runs = [json.loads(path.read_text()) for path in results_paths]
    results = {**runs[0], "sections": {}, "seconds": sum(r["seconds"] for r in runs)}
    results["date"] = "; ".join(f"run {i}: {r['date']}" for i, r in enumerate(runs, 1))
    for i, run in enumerate(runs, 1):
        for name, section in run["sections"].items():
            merged = results["sections"].setdefault(name, {"rows": [], "seconds": 0.0})
            if "rows" in section:
                merged["rows"] += [{"run": i, **row} for row in section["rows"]]
                merged["seconds"] += section["seconds"]
            elif not merged["rows"]:
                merged.update(section)
    text = benchmarks.read_text() if benchmarks.exists() else sections.PREAMBLE
    benchmarks.write_text(sections.put(text, KEY, markdown(results, numbered=len(runs) > 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="folder for gpu_results.json and gpu_section.md")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every section")
    parser.add_argument("--budget", type=float, default=330.0, help="start no section after this many seconds")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--render", nargs="+", help="gpu_results.json file(s): write the section into BENCHMARKS.md")
    args = parser.parse_args()
    if args.render:
        render([Path(p) for p in args.render], REPO / "BENCHMARKS.md")
        return
    out = Path(args.out or REPO / ".bench")
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    started = time.time()
    DEADLINE[0] = started + args.budget
    results: dict[str, Any] = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["python", *sys.argv]),
        "sections": {},
    }
    for name in args.only:
        elapsed = time.time() - started
        if elapsed > args.budget:
            results["sections"][name] = {"skipped": f"the budget of {args.budget:.0f} s was spent"}
            continue
        print(f"== {name} (at {elapsed:.0f} s)", flush=True)
        section_started = time.time()
        try:
            rows = SECTIONS[name](device, args.quick)
            results["sections"][name] = {"rows": rows, "seconds": time.time() - section_started}
            print(table(rows, COLUMNS[name]), flush=True)
        except Exception as error:  # noqa: BLE001 - a failed section is reported; the others still run
            traceback.print_exc()
            results["sections"][name] = {"error": _short(error), "seconds": time.time() - section_started}
        results["seconds"] = time.time() - started
        (out / "gpu_results.json").write_text(json.dumps(results, indent=1, default=str))
        (out / "gpu_section.md").write_text(markdown(results))
    print(f"wrote {out / 'gpu_results.json'} in {time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
