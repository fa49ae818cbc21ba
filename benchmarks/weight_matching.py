"""Weight matching: repair_ray against the PyPI package ``rebasin`` (snimu's Git Re-Basin for PyTorch).

For every model, two networks of the zoo (He init with seeds 0 and 1, then a few SGD steps on a
synthetic task, cached under ``.bench/models``) are aligned by

* ours: ``repair_ray.weight_matching(spec, a, b, seed=r)``;
* rebasin: ``PermutationCoordinateDescent(a, b_copy, x)`` (traces the model on a small random
  batch ``x``), then ``.rebasin()`` (coordinate descent + permuting ``b_copy`` in place), with
  ``torch.manual_seed(r)`` seeding its group order.

Both use at most 100 sweeps. Repeat ``r`` runs both on the same two networks, one after the
other (alternating which goes first); every figure is the median over the repeats, and the
speedup is the ratio of the two medians of the same run. The objective is ours for both,
``sum_params <W_A, π(W_B)>`` over the parameters our spec permutes (BN running statistics
excluded): for rebasin it is read from the permuted copy of B it returns.

Run it in the benchmark environment (``benchmarks/bench_env.sh`` builds ``.bench/venv``)::

    .bench/venv/bin/python benchmarks/weight_matching.py [--quick] [--device cpu|cuda] [--out FILE.json]

or from Python: ``import benchmarks.weight_matching as wm; print(wm.markdown(wm.run()))``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
MODEL_CACHE = ROOT / ".bench" / "models"
DEFAULT_OUT = ROOT / ".bench" / "results" / "weight_matching.json"
SPEEDUP_TARGET = 3.0
MAX_ITER = 100
TRACE_BATCH = 4  # rebasin traces the model on a random batch of this size

# The "slightly trained" networks: SGD steps on a synthetic 10-class task of the model's input shape.
TRAIN = {"steps": 10, "batch_size": 16, "lr": 0.01, "momentum": 0.9, "train_size": 512, "data_seed": 0}
SEED_A, SEED_B = 0, 1


@dataclass(frozen=True)
class Case:
    """One model of the benchmark."""

    name: str
    arch: str
    width: float
    depth: int | None
    norm: str
    in_shape: tuple[int, int, int]
    repeats: int
    quick: bool = False

    def build(self) -> nn.Module:
        from repair_ray import build_model

        return build_model(
            self.arch, width=self.width, depth=self.depth, norm=self.norm, num_classes=10, in_shape=self.in_shape
        )


MNIST, CIFAR = (1, 28, 28), (3, 32, 32)
CASES = [
    Case("mlp 3x512", "mlp", 512, 3, "none", MNIST, repeats=5, quick=True),
    Case("resnet20 x1", "resnet20", 1, 20, "batch", CIFAR, repeats=5, quick=True),
    Case("resnet20 x4", "resnet20", 4, 20, "batch", CIFAR, repeats=5),
    Case("resnet20 x16", "resnet20", 16, 20, "batch", CIFAR, repeats=3),
    Case("vgg11 x1", "vgg", 1, 11, "batch", CIFAR, repeats=5),
    Case("resnet18 x1", "resnet18", 1, 18, "batch", CIFAR, repeats=5),
    Case("resnet50 x1", "resnet50", 1, 50, "batch", CIFAR, repeats=3),
]


# ----------------------------------------------------------------------------------------------
# the two networks of a case


def _train_briefly(case: Case, seed: int) -> dict[str, torch.Tensor]:
    from repair_ray.datasets import make_synthetic

    data = make_synthetic(
        shape=case.in_shape, num_classes=10, train_size=TRAIN["train_size"], test_size=1, seed=TRAIN["data_seed"]
    ).train
    torch.manual_seed(seed)
    model = case.build()
    opt = torch.optim.SGD(model.parameters(), lr=TRAIN["lr"], momentum=TRAIN["momentum"])
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(TRAIN["steps"]):
        idx = torch.randint(0, len(data.y), (TRAIN["batch_size"],), generator=gen)
        loss = F.cross_entropy(model(data.x[idx]), data.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise RuntimeError(f"{case.name}: training diverged (non-finite {bad[0]})")
    return state


def model_pair(case: Case, device: str) -> tuple[nn.Module, nn.Module]:
    """The case's two networks, A and B, in eval mode on ``device`` (trained on the CPU once, then cached)."""
    key = json.dumps([asdict(case) | {"repeats": None, "quick": None}, TRAIN, SEED_A, SEED_B], sort_keys=True)
    path = MODEL_CACHE / f"{case.arch}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"
    states = None
    if path.exists():
        try:
            states = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a truncated or stale cache file: train again
            states = None
    if states is None:
        print(f"[weight_matching] training {case.name} briefly (cached in {path.relative_to(ROOT)})", flush=True)
        states = [_train_briefly(case, SEED_A), _train_briefly(case, SEED_B)]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(states, tmp)
        tmp.replace(path)
    models = []
    for state in states:
        model = case.build()
        model.load_state_dict(state)
        models.append(model.to(device).eval())
    return models[0], models[1]


# ----------------------------------------------------------------------------------------------
# timing


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _ours(spec, a, b, seed: int, device: str) -> tuple[float, float, dict[str, torch.Tensor]]:
    from repair_ray.permutation import weight_matching

    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    perm = weight_matching(spec, a, b, max_iter=MAX_ITER, seed=seed)
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu, perm


def _rebasin(rebasin, a, b, x, seed: int, device: str) -> tuple[float, float, float, nn.Module, Any]:
    """(total, trace, search seconds, permuted copy of B, the PermutationCoordinateDescent)."""
    b_copy = copy.deepcopy(b)
    _sync(device)
    start = time.perf_counter()
    pcd = rebasin.PermutationCoordinateDescent(a, b_copy, x, device_a=device, device_b=device)
    _sync(device)
    traced = time.perf_counter()
    torch.manual_seed(seed)  # rebasin draws its group order from the global generator
    begin = time.perf_counter()
    pcd.calculate_permutations(max_iterations=MAX_ITER)
    _sync(device)
    searched = time.perf_counter()
    pcd.apply_permutations()
    _sync(device)
    end = time.perf_counter()
    return (traced - start) + (end - begin), traced - start, searched - begin, b_copy, pcd


def _lap_share(spec, a, b, device: str) -> float:
    """Fraction of one run of ours (seed 0) spent in ``linear_sum_assignment``."""
    module = sys.modules["repair_ray.permutation.weight_matching"]
    original = module.linear_sum_assignment
    spent = [0.0]

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    module.linear_sum_assignment = timed
    try:
        total, _, _ = _ours(spec, a, b, 0, device)
    finally:
        module.linear_sum_assignment = original
    return spent[0] / total if total > 0 else float("nan")


# ----------------------------------------------------------------------------------------------
# what rebasin did, in our terms


def _logits(model: nn.Module, x: torch.Tensor, train: bool) -> torch.Tensor:
    model = copy.deepcopy(model).train(train)  # a train-mode forward would update the running statistics
    with torch.no_grad():
        return model(x).double()


def _function_gap(reference: nn.Module, permuted: nn.Module, x: torch.Tensor, train: bool = False) -> float:
    """max |Δlogit| / max |logit| between two networks: ~1e-7 when they compute the same function.

    ``train``: BatchNorm normalises with the batch's statistics, so running statistics play no part.
    """
    ref = _logits(reference, x, train)
    return float((_logits(permuted, x, train) - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def _rebasin_notes(spec, b: nn.Module, b_rebasin: nn.Module, pcd: Any, x: torch.Tensor) -> list[str]:
    notes = []
    try:
        names = {id(p): n for n, p in b_rebasin.named_parameters()}
        entries = Counter(
            (names[id(info.parameter_b)], info.axis)
            for _, infos in pcd.pinit.model_graph.permutation_to_info
            for info in infos
        )
        members = {g: [(n, ax) for n, ax in pairs if n not in spec.buffers] for g, pairs in spec.groups.items()}
        ours = {pair for pairs in members.values() for pair in pairs}
        untouched = [g for g, pairs in members.items() if not any(p in entries for p in pairs)]
        partial = [g for g, pairs in members.items() if g not in untouched and not all(p in entries for p in pairs)]
        extra = sorted(set(entries) - ours)
        n_groups = len(pcd.pinit.model_graph.permutation_to_info)
        if untouched or partial or extra:
            text = f"rebasin finds {n_groups} permutation groups to our {len(spec.sizes)}"
            if untouched:
                shown = ", ".join(f"{g} ({spec.sizes[g]} units)" for g in sorted(untouched)[:3])
                text += f"; leaves {len(untouched)} of ours at identity: {shown}"
            if partial:
                text += f"; covers {len(partial)} of ours only in part"
            if extra:
                text += f"; also permutes {len(extra)} (param, axis) pairs our spec does not"
            notes.append(text)
        else:
            notes.append(f"rebasin permutes the same {len(ours)} (param, axis) pairs in {n_groups} groups as ours")
        repeated = Counter(entries.values())
        if set(repeated) != {1}:
            counts = "/".join(f"{k}x" for k in sorted(repeated))
            notes.append(f"rebasin's cost counts each (param, axis) {counts}: a reweighted objective")
    except Exception as err:  # noqa: BLE001 - internals of rebasin: informative only
        notes.append(f"could not read rebasin's permutation groups ({type(err).__name__}: {err})")
    buffers_b, buffers_r = dict(b.named_buffers()), dict(b_rebasin.named_buffers())
    stats = [n for n in spec.buffers if n.endswith(("running_mean", "running_var"))]
    if stats and all(torch.equal(buffers_b[n], buffers_r[n]) for n in stats):
        notes.append("rebasin leaves BN running statistics unpermuted")
    gap = f"function gap of rebasin's B (eval) {_function_gap(b, b_rebasin, x):.1e}"
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in b.modules()):
        gap += f", (train mode) {_function_gap(b, b_rebasin, x, train=True):.1e}"
    notes.append(gap)
    return notes


# ----------------------------------------------------------------------------------------------
# the benchmark


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _first_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()[0]
    return text[:300]


def bench_case(case: Case, *, device: str, repeats: int, rebasin: Any, rebasin_error: str | None) -> dict[str, Any]:
    from repair_ray import permutation_spec
    from repair_ray.permutation import apply_permutation, identity_permutation, matching_objective

    a, b = model_pair(case, device)
    spec = permutation_spec(a)
    identity = identity_permutation(spec, device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(TRACE_BATCH, *case.in_shape, generator=gen).to(device)
    row: dict[str, Any] = {
        "model": case.name,
        "arch": case.arch,
        "width": case.width,
        "depth": case.depth,
        "norm": case.norm,
        "params": sum(p.numel() for p in a.parameters()),
        "groups": len(spec.sizes),
        "device": device,
        "threads": torch.get_num_threads() if device == "cpu" else None,
        "repeats": repeats,
        "identity_objective": matching_objective(spec, a, b, identity),
    }
    notes = [f"norm={case.norm}"]

    # Warm-up (not timed): first calls pay for thread pools, allocator growth, lazy imports.
    _ours(spec, a, b, 0, device)
    if rebasin is not None:
        try:
            _rebasin(rebasin, a, b, x, 0, device)
        except Exception as err:  # noqa: BLE001 - the peer's failure is a result to report, not ours to raise
            rebasin_error = f"rebasin failed: {_first_line(err)}"

    ours_s, ours_cpu, ours_obj, reb_s, reb_trace, reb_search, reb_obj = [], [], [], [], [], [], []
    perm = b_rebasin = pcd = None
    for r in range(repeats):
        for side in ("ours", "rebasin") if r % 2 == 0 else ("rebasin", "ours"):
            if side == "ours":
                wall, cpu, perm = _ours(spec, a, b, r, device)
                ours_s.append(wall)
                ours_cpu.append(cpu)
                ours_obj.append(matching_objective(spec, a, b, perm))
            elif rebasin_error is None:
                try:
                    total, trace, search, b_rebasin, pcd = _rebasin(rebasin, a, b, x, r, device)
                except Exception as err:  # noqa: BLE001 - the peer's failure is a result to report
                    rebasin_error = f"rebasin failed: {_first_line(err)}"
                    continue
                reb_s.append(total)
                reb_trace.append(trace)
                reb_search.append(search)
                reb_obj.append(matching_objective(spec, a, b_rebasin.state_dict(), identity))

    aligned = copy.deepcopy(b)
    aligned.load_state_dict(apply_permutation(spec, perm, b))
    notes.append(f"function gap of our B (eval) {_function_gap(b, aligned, x):.1e}")
    if rebasin_error is not None:
        notes.append(rebasin_error)
    elif b_rebasin is not None:
        notes.extend(_rebasin_notes(spec, b, b_rebasin, pcd, x))

    o, rb = _median(ours_s), _median(reb_s)
    row.update(
        ours_seconds=o,
        ours_cpu_seconds=_median(ours_cpu),
        ours_lap_share=_lap_share(spec, a, b, device),
        rebasin_seconds=rb,
        rebasin_trace_seconds=_median(reb_trace),
        rebasin_search_seconds=_median(reb_search),
        speedup=rb / o if rb is not None and o else None,
        speedup_search=_median(reb_search) / o if reb_search and o else None,
        ours_objective=_median(ours_obj),
        rebasin_objective=_median(reb_obj),
        ours_seconds_all=ours_s,
        rebasin_seconds_all=reb_s,
        ours_objective_all=ours_obj,
        rebasin_objective_all=reb_obj,
    )
    if rb is not None:
        fast = row["speedup"] >= SPEEDUP_TARGET
        good = row["ours_objective"] >= row["rebasin_objective"]
        row["target_met"] = fast and good
    else:
        row["target_met"] = None
    row["notes"] = "; ".join(notes)
    return row


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("rebasin", "scipy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _hardware(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, {torch.get_num_threads()} torch threads"


def run(
    quick: bool = False,
    device: str = "cpu",
    *,
    models: list[str] | None = None,
    repeats: int | None = None,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Benchmark every case (``quick``: one repeat of the small models); returns one row per model.

    ``rebasin`` is imported here: without it, rows still carry our numbers and say why rebasin's are missing.
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    if threads:
        torch.set_num_threads(threads)
    try:
        import rebasin

        rebasin_error = None
    except ImportError as err:
        rebasin, rebasin_error = None, f"rebasin not installed ({err}); run benchmarks/bench_env.sh"
    cases = [c for c in CASES if (c.quick or not quick) and (models is None or c.name in models)]
    if models is not None and len(cases) != len(models):
        known = ", ".join(c.name for c in CASES)
        raise ValueError(f"unknown model in {models}; known: {known}")
    command = ".bench/venv/bin/python benchmarks/weight_matching.py" + (" --quick" if quick else "")
    command += f" --device {device}"
    if models is not None:
        command += " --models " + " ".join(f"'{m}'" for m in models)
    command += (f" --repeats {repeats}" if repeats else "") + (f" --threads {threads}" if threads else "")
    meta = {"command": command, "hardware": _hardware(device), "versions": _versions()}
    rows = []
    for case in cases:
        n = repeats or (1 if quick else case.repeats)
        print(f"[weight_matching] {case.name}: {n} repeat(s) on {device}", flush=True)
        row = bench_case(case, device=device, repeats=n, rebasin=rebasin, rebasin_error=rebasin_error)
        rows.append(row | meta)
        print(f"[weight_matching] {_summary(row)}", flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# reporting


def _summary(row: dict[str, Any]) -> str:
    def fmt(v, spec=".3f"):
        return "n/a" if v is None else format(v, spec)

    return (
        f"{row['model']}: ours {fmt(row['ours_seconds'])} s, rebasin {fmt(row['rebasin_seconds'])} s, "
        f"speedup {fmt(row['speedup'], '.1f')}x; objective ours {fmt(row['ours_objective'], '.1f')}, "
        f"rebasin {fmt(row['rebasin_objective'], '.1f')}, identity {fmt(row['identity_objective'], '.1f')}"
    )


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown section: the table, how it was measured and the exact command."""

    def num(v, spec):
        return "n/a" if v is None else format(v, spec)

    def times(v):
        return "n/a" if v is None else f"{v:.1f}x"

    def target(row):
        if row.get("target_met") is None:
            return "n/a"
        if row["target_met"]:
            return "yes"
        why = []
        if row["speedup"] < SPEEDUP_TARGET:
            why.append(f"< {SPEEDUP_TARGET:g}x")
        if row["ours_objective"] < row["rebasin_objective"]:
            why.append("lower objective")
        return "no (" + ", ".join(why) + ")"

    lines = [
        "| model | norm | params | ours (s) | rebasin (s) | speedup | speedup vs search only | "
        "objective: ours | rebasin | identity | target | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        notes = "; ".join(n for n in row["notes"].split("; ") if not n.startswith("norm="))
        lines.append(
            f"| {row['model']} | {row['norm']} | {row['params'] / 1e6:.2f}M | {num(row['ours_seconds'], '.3f')} | "
            f"{num(row['rebasin_seconds'], '.3f')} | {times(row['speedup'])} | "
            f"{times(row['speedup_search'])} | {num(row['ours_objective'], '.2f')} | "
            f"{num(row['rebasin_objective'], '.2f')} | {num(row['identity_objective'], '.2f')} | {target(row)} | "
            f"{notes} |"
        )
    if not rows:
        return "(no weight matching rows)\n"
    first = rows[0]
    versions = ", ".join(f"{k} {v}" for k, v in first["versions"].items())
    repeats = sorted({row["repeats"] for row in rows})
    lines += [
        "",
        f"Device: {first['device']} ({first['hardware']}); {versions}. Times are medians over "
        f"{'/'.join(map(str, repeats))} repeats (seed r for repeat r); speedup = rebasin's median over ours, "
        "both measured in the same run on the same two networks. Ours is `weight_matching(spec, a, b, seed=r)`; "
        "rebasin's time is `PermutationCoordinateDescent(a, b, x)` (tracing a random batch) plus `.rebasin()`; "
        "'search only' leaves out rebasin's tracing and in-place permuting. Objective: "
        "`sum_params <W_A, π(W_B)>` over the parameters our spec permutes (BN running statistics excluded), "
        "median over the repeats; identity = no matching. Networks: He init (seeds 0 and 1) plus "
        f"{TRAIN['steps']} SGD steps (batch {TRAIN['batch_size']}, lr {TRAIN['lr']}) on a synthetic 10-class task; "
        "conv nets with BatchNorm. Function gap: max |Δlogit| / max |logit| of the permuted B against B in "
        f"eval mode. Target: at least {SPEEDUP_TARGET:g}x faster with an objective at least rebasin's.",
        "",
        "```",
        first["command"],
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat of the small models: a smoke run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON rows (default {DEFAULT_OUT})")
    parser.add_argument("--models", nargs="+", help=f"a subset of: {', '.join(repr(c.name) for c in CASES)}")
    parser.add_argument("--repeats", type=int, help="override the repeats of every model")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    rows = run(quick=args.quick, device=args.device, models=args.models, repeats=args.repeats, threads=args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows))
    print(f"rows written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
