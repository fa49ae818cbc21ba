"""``make bench``: run every benchmark and write its sections of BENCHMARKS.md (never edited by hand).

    .bench/venv/bin/python benchmarks/run.py [--quick] [--only SECTION ...]

Runs in the benchmarks' own environment (benchmarks/bench_env.sh), which adds the peer we compare
with (rebasin) to the project. Raw rows go to .bench/results.json. Only the sections run (and the
header naming the run) are replaced, between their markers (benchmarks/sections.py); the others, and
the GPU section of benchmarks/gpu.py, stay as they were.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import (  # noqa: E402
    ddp,
    loader,
    pair_throughput,
    scale,
    scaling,
    sections,
    seeds_per_trial,
    spec_derivation,
    train_stage,
    training,
    tune_overhead,
    weight_matching,
)
from benchmarks.common import machine  # noqa: E402

SECTIONS = {
    "weight_matching": (
        "Weight matching vs rebasin",
        weight_matching,
        "Target: at least 3x faster than `rebasin` with an equal or higher matching objective, on every model.",
    ),
    "pair_throughput": (
        "Pair throughput and FLOPs over the floor",
        pair_throughput,
        "Target: measured FLOPs within 1.5x of the floor (one statistics pass per endpoint, one statistics and "
        "one evaluation pass per α per corrected net, one evaluation per α otherwise; activation matching's two "
        "passes count as alignment).",
    ),
    "spec_derivation": (
        "Permutation specs derived from the graph",
        spec_derivation,
        "Targets: deriving resnet50's spec < 2 s on this CPU; weight matching on derived specs as fast as on the "
        "hand-written ones (derived / hand-written time ~1).",
    ),
    "scaling": ("Scaling: 1 vs 2 workers, Ray overhead per task", scaling, "Target: 2 workers at least 1.8x faster."),
    "training": ("Training throughput and thread settings", training, ""),
    "loader": ("Image loading: streamed from disk vs in memory", loader, ""),
    "ddp": ("Data-parallel training: 1 vs 2 processes per network", ddp, ""),
    "train_stage": (
        "Train stage: efficiency and per-trial overhead",
        train_stage,
        "Targets (issue 15): per-trial overhead <= 0.3 s; efficiency >= 80 % on the quickstart grid.",
    ),
    "tune_overhead": (
        "Tune's per-trial overhead in `tune` against the train stage's",
        tune_overhead,
        "No target (issue 32, item 6): the ratio says what a trial of `repair-ray tune` costs beyond its training, "
        "against a trial of the train stage that a seed study runs on.",
    ),
    "seeds_per_trial": (
        "Seeds trained together (train.seeds_per_trial)",
        seeds_per_trial,
        "Target (issue 15): at least 2x faster per seed at width 32-128 (narrow MLPs), N seeds together vs one "
        "at a time.",
    ),
    "scale": (
        "Study scale: planning, cheap-pair throughput, files, S3 reads, first pair row",
        scale,
        "Targets: plan 100,000 pairs (50,000 done) in < 10 s and < 300 MB; >= 1,500 cheap pairs/min on 2 CPUs; "
        "files under tables/ <= pairs/1,000 + a small constant; load_tables of 50,000 pairs from S3 < 30 s.",
    ),
}


def verdicts(name: str, rows: list[dict]) -> list[str]:
    """Whether each target is met, computed from the measured rows."""
    out = []
    if name == "weight_matching":
        for r in rows:
            met = r.get("target_met")
            out.append(f"{r['model']}: {'met' if met else 'NOT met' if met is not None else 'not measured'}")
    elif name == "pair_throughput":
        for r in rows:
            ratio = r["flops_over_floor"]
            out.append(f"{r['case']}: {ratio:.3f}x the floor ({'met' if ratio <= 1.5 else 'NOT met'})")
    elif name == "scale":
        for r in rows:
            if r["measure"] == "throughput":
                # the small constant: each of the 4 tables may hold COMPACT_AFTER files before a run compacts it
                from repair_ray.io.tables import COMPACT_AFTER, TABLES

                constant = len(TABLES) * COMPACT_AFTER
                rate, files, limit = r["pairs_per_min"], r["files_after_compaction"], r["pairs"] / 1000 + constant
                out.append(f"{r['pairs']} cheap pairs: {rate:,.0f} pairs/min ({'met' if rate >= 1500 else 'NOT met'})")
                out.append(
                    f"{r['pairs']} pairs: {files} files after compaction, limit {limit:.0f} = pairs/1,000 + {constant} "
                    f"({'met' if files <= limit else 'NOT met'})"
                )
    elif name == "spec_derivation":
        for r in rows:
            if r.get("target_met") is not None:
                out.append(
                    f"{r['network']} on {r['device']}: {r['seconds']:.2f} s ({'met' if r['target_met'] else 'NOT met'})"
                )
            if r["measure"] == "matching":
                out.append(f"{r['network']}: derived / hand-written = {r['ratio']:.2f}x")
    elif name == "train_stage":
        for r in rows:
            if r["grid"].startswith("quickstart"):
                eff = r["efficiency"]
                verdict = "met" if eff >= 0.8 else "NOT met"
                out.append(f"{r['grid']}, {r['stage']}: efficiency {100 * eff:.0f} % ({verdict})")
            else:
                cost = r["overhead_per_trial_s"]
                out.append(f"{r['grid']}, {r['stage']}: {cost:.2f} s per trial ({'met' if cost <= 0.3 else 'NOT met'})")
    elif name == "tune_overhead":
        for r in rows:
            if "ratio" in r:
                out.append(
                    f"round {r['round']}: {r['overhead_per_trial_s']:.2f} s per trial in tune, {r['ratio']:.1f}x the "
                    "train stage's"
                )
    elif name == "seeds_per_trial":
        for r in rows:
            if r["seeds"] > 1 and r["model"].startswith("mlp"):
                met = "met" if r["speedup"] >= 2 else "NOT met"
                out.append(f"{r['model']}, {r['threads']} thread(s), N={r['seeds']}: {r['speedup']:.2f}x ({met})")
    elif name == "scaling":
        speedup = rows[1]["speedup"]
        out.append(f"2 workers: {speedup:.2f}x ({'met' if speedup >= 1.8 else 'NOT met'})")
    return out


OWNER = "benchmarks/run.py"


def key(name: str) -> str:
    """The marker key of one of this renderer's sections (``header``: the command, machine and date)."""
    return f"{OWNER}: {name}"


ORDER = [key("header"), *(key(name) for name in SECTIONS)]


def render(path: Path, header: str, rendered: dict[str, str]) -> None:
    """Write the header and the ``rendered`` sections (by name) into BENCHMARKS.md at ``path``,
    replacing only this renderer's sections of those names: every other section, and every section
    not run (``--only``), stays byte for byte as it was (each says when it ran)."""
    text = path.read_text() if path.exists() else sections.PREAMBLE
    text = sections.put(text, key("header"), header, ORDER, first=True)
    for name, body in rendered.items():
        text = sections.put(text, key(name), body, ORDER)
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer models, repeats and samples")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    args = parser.parse_args()

    command = "make bench" if not args.quick and args.only == list(SECTIONS) else " ".join(["python", *sys.argv])
    started = time.time()
    results: dict[str, list[dict]] = {}
    rendered: dict[str, str] = {}
    today = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    for name in args.only:
        title, module, target = SECTIONS[name]
        print(f"== {title}", flush=True)
        t = time.time()
        rows = module.run(quick=args.quick)
        results[name] = rows
        lines = [f"## {title}", "", f"Command: `python benchmarks/{name}.py{' --quick' if args.quick else ''}`"]
        lines += ["", (module.__doc__ or "").strip().split("\n\n")[0], "", module.markdown(rows), ""]
        if target:
            lines += [target, ""] + [f"- {v}" for v in verdicts(name, rows)] + [""]
        lines.append(f"_({time.time() - t:.0f} s; run {today})_\n")
        rendered[name] = "\n".join(lines)
    header = [
        "Sections of `benchmarks/run.py` (`make bench`); its last run:",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine()}",
        f"- Date: {today}; total {time.time() - started:.0f} s"
        + ("" if not args.only or args.only == list(SECTIONS) else f" (sections run: {', '.join(args.only)})"),
        "- Each comparison is a ratio measured in the same run.",
    ]
    render(Path(args.out), "\n".join(header), rendered)
    raw = REPO / ".bench" / "results.json"
    raw.parent.mkdir(exist_ok=True)
    raw.write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {args.out} and {raw}")


if __name__ == "__main__":
    main()
