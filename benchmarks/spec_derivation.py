"""Deriving permutation specs from the graph: time per network, and weight matching on derived vs hand-written specs.

    python benchmarks/spec_derivation.py [--quick]

Derivation: ``repair_ray.permutation_spec(model, example_input)`` on torchvision networks built
on the CPU (input 2x3x224x224) and on the meta device (no compute); the median of 5 runs, each
tracing the graph afresh. Matching: the zoo's networks have hand-written specs that the derived
ones equal (tests/test_derive.py); weight matching runs on the same two networks (seeds 0 and 1)
with each spec, alternating which goes first, median of the repeats; the ratio is derived /
hand-written time in this run, and the objectives must be equal.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

try:
    from .common import median_time, table
except ImportError:
    from common import median_time, table

NETWORKS = ["resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "densenet121", "vgg16"]
QUICK_NETWORKS = ["resnet18", "resnet50"]
ZOO = [
    ("mlp 3x512", "mlp", {"width": 512, "depth": 3, "norm": "none"}, (1, 28, 28)),
    ("vgg11 x1 BN", "vgg", {"width": 1, "depth": 11, "norm": "batch"}, (3, 32, 32)),
    ("resnet20 x4 BN", "resnet20", {"width": 4, "norm": "batch"}, (3, 32, 32)),
    ("resnet50 x0.5 LN", "resnet50", {"width": 0.5, "norm": "layer"}, (3, 32, 32)),
]


def derivation_rows(quick: bool) -> list[dict[str, Any]]:
    import torchvision.models as tvm

    from repair_ray import permutation_spec

    rows = []
    for name in QUICK_NETWORKS if quick else NETWORKS:
        for device in ("cpu", "meta"):
            with torch.device(device):
                model = getattr(tvm, name)(num_classes=1000).eval()
                x = torch.zeros(2, 3, 224, 224)
            spec = permutation_spec(model, x)
            seconds, _ = median_time(lambda model=model, x=x: permutation_spec(model, x), 3 if quick else 5)
            rows.append(
                {
                    "measure": "derivation",
                    "network": f"torchvision:{name}",
                    "device": device,
                    "groups": len(spec.sizes),
                    "state_entries": len(spec.axes),
                    "repair_points": len(spec.repair_points),
                    "seconds": seconds,
                    "target_met": seconds < 2.0 if name == "resnet50" else None,
                }
            )
    return rows


def matching_rows(quick: bool) -> list[dict[str, Any]]:
    from repair_ray import build_model, permutation_spec, weight_matching
    from repair_ray.permutation import matching_objective

    rows = []
    for label, arch, kwargs, shape in ZOO[:2] if quick else ZOO:
        torch.manual_seed(0)
        a = build_model(arch, in_shape=shape, **kwargs)
        torch.manual_seed(1)
        b = build_model(arch, in_shape=shape, **kwargs)
        hand = permutation_spec(a)
        # named as the hand-written groups, so both visit the groups in the same seeded order
        specs = {"hand-written": hand, "derived": _renamed(permutation_spec(a, torch.zeros(2, *shape)), hand)}
        times: dict[str, list[float]] = {k: [] for k in specs}
        objective = {}
        repeats = 2 if quick else 5
        for r in range(repeats):
            for kind in list(specs)[:: 1 if r % 2 == 0 else -1]:
                spec = specs[kind]
                t, _ = median_time(lambda spec=spec, a=a, b=b: weight_matching(spec, a, b, seed=0), 1)
                times[kind].append(t)
                objective[kind] = matching_objective(spec, a, b, weight_matching(spec, a, b, seed=0))
        hand, derived = (sorted(times[k])[len(times[k]) // 2] for k in ("hand-written", "derived"))
        rows.append(
            {
                "measure": "matching",
                "network": label,
                "hand_written_seconds": hand,
                "derived_seconds": derived,
                "ratio": derived / hand,
                "objective_hand_written": objective["hand-written"],
                "objective_derived": objective["derived"],
            }
        )
    return rows


def _renamed(spec, like):
    """``spec`` with its groups named as the groups of ``like`` acting on the same axes."""
    import dataclasses

    by_members = {frozenset(m): g for g, m in like.groups.items()}
    name = {g: by_members[frozenset(m)] for g, m in spec.groups.items()}
    axes = {k: tuple(name.get(e, e) if isinstance(e, str) or e is None else e for e in v) for k, v in spec.axes.items()}
    return dataclasses.replace(
        spec,
        axes=axes,
        sizes={name[g]: n for g, n in spec.sizes.items()},
        activations={name[g]: p for g, p in spec.activations.items()},
    )


def run(quick: bool = False) -> list[dict[str, Any]]:
    return derivation_rows(quick) + matching_rows(quick)


def markdown(rows: list[dict[str, Any]]) -> str:
    derivation = [r for r in rows if r["measure"] == "derivation"]
    matching = [r for r in rows if r["measure"] == "matching"]
    for r in derivation:
        r["network_on"] = f"{r['network']} ({r['device']})"
    first = table(
        derivation,
        [
            ("network_on", "network (built on)"),
            ("groups", "groups"),
            ("state_entries", "state entries"),
            ("repair_points", "REPAIR points"),
            ("seconds", "derivation (s)"),
        ],
    )
    for r in matching:
        r["objectives_equal"] = "yes" if abs(r["objective_derived"] - r["objective_hand_written"]) < 1e-6 else "NO"
    second = table(
        matching,
        [
            ("network", "zoo network"),
            ("hand_written_seconds", "hand-written spec (s)"),
            ("derived_seconds", "derived spec (s)"),
            ("ratio", "derived / hand-written"),
            ("objectives_equal", "objectives equal"),
        ],
    )
    return first + "\n\nWeight matching (seed 0, the same two networks) with either spec:\n\n" + second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = run(quick=args.quick)
    print(markdown(rows))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
