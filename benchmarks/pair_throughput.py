"""Pair stage throughput: pairs per minute, the time split (align / statistics / evaluation), and
the forward FLOPs a pair costs against the floor the analysis needs at minimum.

    python benchmarks/pair_throughput.py [--quick]

The floor, in samples pushed through one network: every endpoint evaluated once on the
train-curve and test samples and measured once on the statistics samples; activation matching
runs both networks on the statistics samples; every curve evaluates each interior α once on the
train-curve and test samples, plus one statistics pass per interior α when it is corrected.
FLOPs are counted by ``torch.utils.flop_counter`` (matmuls and convolutions) over a whole
``analyse_pair`` call and divided by the floor's FLOPs.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from repair_ray import PairSettings, analyse_pair, build_model, load_dataset
from repair_ray.correction import has_batchnorm
from repair_ray.datasets import make_synthetic
from repair_ray.models import ModelConfig
from repair_ray.pair import sample_forwards
from repair_ray.training import TrainConfig, train_model

try:
    from .common import table
except ImportError:  # run as a script
    from common import table


def _flops_per_sample(model: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return counter.get_total_flops() / len(x)


def _case(name: str, a, b, dataset, settings: PairSettings, repeats: int, spec=None) -> dict[str, Any]:
    n_train_eval = min(settings.train_samples or len(dataset.train), len(dataset.train))
    times, splits = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        result = analyse_pair(a, b, dataset, settings, spec=spec)
        times.append(time.perf_counter() - started)
        split = {k: sum(r[k] for r in result.pairs) for k in ("stat_seconds", "eval_seconds")}
        # every (align, correction) row repeats its alignment's time: count each alignment once
        split["align_seconds"] = sum({r["align"]: r["align_seconds"] for r in result.pairs}.values())
        splits.append(split)
    best = sorted(range(repeats), key=lambda i: times[i])[repeats // 2]
    with FlopCounterMode(display=False) as counter:
        analyse_pair(a, b, dataset, settings, spec=spec)
    measured = counter.get_total_flops()
    per_sample = _flops_per_sample(a, dataset.test.x[:64])
    floor = sample_forwards(settings, n_train_eval, len(dataset.test), batchnorm=has_batchnorm(a)) * per_sample
    seconds = times[best]
    return {
        "case": name,
        "settings": (
            f"{len(settings.aligns)} aligns x {len(settings.corrections)} corrections, {len(settings.alphas)} alphas, "
            f"train/test/stat samples {n_train_eval}/{len(dataset.test)}/{settings.stat_samples}"
        ),
        "seconds_per_pair": seconds,
        "pairs_per_minute": 60.0 / seconds,
        "align_s": splits[best]["align_seconds"],
        "stat_s": splits[best]["stat_seconds"],
        "eval_s": splits[best]["eval_seconds"],
        "other_s": seconds - sum(splits[best].values()),
        "gflop": measured / 1e9,
        "floor_gflop": floor / 1e9,
        "flops_over_floor": measured / floor,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }


def run(quick: bool = False, device: str = "cpu", threads: int = 1) -> list[dict[str, Any]]:
    """Time one pair of the quickstart MLP, one of ResNet20 x4 on CIFAR-shaped synthetic data and one
    of ResNet-50 at 224 px (ImageNet-shaped synthetic data)."""
    torch.set_num_threads(threads)
    rows = []
    # 1. the quickstart's MLP (width 128, depth 4) on MNIST, trained as the quickstart trains it
    mnist = load_dataset("mnist", device=device)
    config = ModelConfig("mlp", 128, 4, "none")
    train = TrainConfig(epochs=1 if quick else 3, batch_size=256, lr=0.05)
    nets = []
    for seed in (0, 1):
        state = train_model(config, train, mnist, seed=seed, device=device).state_dict
        net = config.build(mnist.num_classes, mnist.in_shape).to(device)
        net.load_state_dict(state)
        nets.append(net.eval())
    quickstart = PairSettings(
        aligns=("none", "weight", "activation"),
        corrections=("none", "repair"),
        alphas=tuple(i / 20 for i in range(21)),
        train_samples=10000,
        stat_samples=5000,
    )
    rows.append(_case("quickstart MLP 128x4, MNIST", nets[0], nets[1], mnist, quickstart, 1 if quick else 3))
    # 2. ResNet20 x4 with BatchNorm on CIFAR-shaped synthetic data (random init: timing, not science)
    n = 64 if quick else 200
    cifar = make_synthetic(shape=(3, 32, 32), num_classes=10, train_size=2 * n, test_size=n).to(device)
    torch.manual_seed(0)
    a = build_model("resnet20", width=4, norm="batch", in_shape=(3, 32, 32)).to(device).eval()
    b = build_model("resnet20", width=4, norm="batch", in_shape=(3, 32, 32)).to(device).eval()
    resnet = PairSettings(
        aligns=("none", "weight", "activation"),
        corrections=("none", "reset", "repair"),
        alphas=(0.0, 0.25, 0.5, 0.75, 1.0),
        train_samples=n,
        stat_samples=n // 2,
        stat_batch_size=n // 2,
        eval_batch_size=100,
    )
    rows.append(_case("ResNet20 x4 BN, synthetic 32x32x3", a, b, cifar, resnet, 1))
    # 3. ResNet-50 (torchvision) at 224 px, the REPAIR paper's ImageNet network (random init: timing only)
    rows.append(_resnet50(device, quick))
    return rows


def _resnet50(device: str, quick: bool) -> dict[str, Any]:
    """One ResNet-50 pair at 224 px with the ImageNet study's methods (activation matching, RESET,
    REPAIR), on few samples: what a pair costs against the forward passes it needs at least."""
    n = 16 if quick else 32
    data = make_synthetic(shape=(3, 224, 224), num_classes=1000, train_size=2 * n, test_size=n).to(device)
    torch.manual_seed(0)
    network = ModelConfig("torchvision:resnet50")
    a, b = (network.build(1000, (3, 224, 224)).to(device).eval() for _ in range(2))
    settings = PairSettings(
        aligns=("none", "activation"),
        corrections=("none", "reset", "repair"),
        alphas=(0.0, 0.5, 1.0),
        train_samples=n,
        stat_samples=n // 2,
        stat_batch_size=n // 2,
        eval_batch_size=n // 2,
    )
    spec = network.permutation_spec(1000, (3, 224, 224))  # derived from the graph, as a sweep derives it
    return _case("ResNet-50 (torchvision) BN, synthetic 224x224x3", a, b, data, settings, 1, spec)


def markdown(rows: list[dict[str, Any]]) -> str:
    columns = [
        ("case", "case"),
        ("pairs_per_minute", "pairs/min (1 worker)"),
        ("seconds_per_pair", "s/pair"),
        ("align_s", "align s"),
        ("stat_s", "statistics s"),
        ("eval_s", "evaluation s"),
        ("other_s", "other s"),
        ("gflop", "GFLOP measured"),
        ("floor_gflop", "GFLOP floor"),
        ("flops_over_floor", "measured / floor"),
    ]
    settings = "\n".join(
        f"- {r['case']}: {r['settings']}; {r['threads']} thread(s), median of {r['repeats']}" for r in rows
    )
    return table(rows, columns) + "\n\n" + settings


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    out = run(quick=args.quick, device=args.device)
    print(markdown(out))
    print(json.dumps(out, indent=1))
