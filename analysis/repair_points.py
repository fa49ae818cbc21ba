"""Which points REPAIR renormalises on a residual network, and what each set buys over RESET.

    python analysis/repair_points.py runs/resnet20-repair-mnist [--test-samples 10000]

For every pair of a finished sweep of zoo ResNets (BatchNorm), the same analysis as the sweep's
(activation matching, the sweep's statistics samples and α grid), with ``repair_bn`` (RESET, the
norm outputs renormalised to the endpoints' statistics, and carried points) restricted to one set
of carried points at a time:

- ``norm outputs``: no carried point (REPAIR on the norm outputs only, which RESET nearly equals);
- ``block outputs``: each residual block's output after the add and ReLU (with the norm outputs
  left as RESET makes them, this is the paper's ``repair``);
- ``classifier input``: the pooled features the classifier reads;
- ``blocks + classifier``: both (what ``repair_bn`` does);
- ``junctures``: the REPAIR notebooks' ResNet variant, which gives each identity shortcut an
  explicit 1×1 identity layer and renormalises its output (the skip branch's input to the add).

Prints the midpoint test-loss barrier and the max-over-α test-error barrier per variant and pair,
beside RESET's. Loads the sweep's checkpoints; trains nothing.
"""

from __future__ import annotations

import argparse
import dataclasses

from torch import nn

import repair_ray
from repair_ray.io.checkpoint import load_checkpoint
from repair_ray.io.storage import join
from repair_ray.models import ModelConfig
from repair_ray.sweep.stored import load_sweep_config  # the stored sweep.yaml: no Ray


def junctures(model: nn.Module) -> dict[str, str]:
    """Give ``model``'s identity shortcuts an explicit identity module; their REPAIR points and groups."""
    spec = model.permutation_spec()
    points = {}
    for s, stage in enumerate(model.stages):
        for i, block in enumerate(stage):
            if block.shortcut is None:
                block.shortcut = nn.Identity()  # the block computes the same function
                points[f"stages.{s}.{i}.shortcut"] = spec.carried_points[f"stages.{s}.{i}.act2"]
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="a finished sweep of a zoo ResNet with BatchNorm")
    parser.add_argument("--test-samples", type=int, default=None, help="first N test samples (default: all)")
    args = parser.parse_args()
    config = load_sweep_config(args.sweep)
    settings = dataclasses.replace(config.pair_settings, aligns=("activation",), corrections=("repair_bn",))
    tables = repair_ray.load_tables(args.sweep)
    models = tables["models"][tables["models"]["status"] == "ok"]
    pairs = tables["pairs"]
    pairs = pairs[(pairs["status"] == "ok") & (pairs["align"] == "activation") & (pairs["correction"] == "reset")]
    if pairs.empty:
        raise SystemExit(f"{args.sweep}: no finished pair with an activation/reset row")
    data = repair_ray.load_dataset(config.dataset.name, **config.dataset.options)
    if args.test_samples is not None:
        data = dataclasses.replace(data, test=data.test.head(args.test_samples))
    plans = {plan.model_key: plan.model for plan in config.models}
    header = "| variant | pair | carried points | midpoint test-loss barrier: reset | repair |"
    print(header + " test-error barrier: reset | repair |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in pairs.sort_values(["model_key", "seed_a", "seed_b"]).itertuples():
        model = plans[row.model_key]

        def load(seed: int, key: str = row.model_key, model: ModelConfig = model) -> nn.Module:
            uri = models[(models["model_key"] == key) & (models["seed"] == seed)]["checkpoint_uri"].iloc[0]
            net = model.build(data.num_classes, data.in_shape)
            net.load_state_dict(load_checkpoint(join(config.root, uri)).state_dict)
            return net.eval()

        a, b = load(row.seed_a), load(row.seed_b)
        full = a.permutation_spec()
        ja, jb = load(row.seed_a), load(row.seed_b)
        joints = junctures(ja)
        junctures(jb)
        variants = {
            "norm outputs": ({}, a, b),
            "block outputs": ({k: g for k, g in full.carried_points.items() if k != "flatten"}, a, b),
            "classifier input": ({k: g for k, g in full.carried_points.items() if k == "flatten"}, a, b),
            "blocks + classifier": (dict(full.carried_points), a, b),
            "junctures": (joints, ja, jb),
        }
        reset = None  # RESET on the same samples as the variants (a --test-samples subset too)
        for name, (carried, x, y) in variants.items():
            spec = dataclasses.replace(full, carried_points=carried)
            both = dataclasses.replace(settings, corrections=("reset", "repair_bn"))
            wanted = settings if reset is not None else both
            rows = {r["correction"]: r for r in repair_ray.analyse_pair(x, y, data, wanted, spec=spec).pairs}
            reset = rows.get("reset", reset)
            r = rows["repair_bn"]
            print(
                f"| {name} | {row.seed_a}-{row.seed_b} | {len(carried)} | {reset['midpoint_barrier_test_loss']:.4f} "
                f"| {r['midpoint_barrier_test_loss']:.4f} | {reset['barrier_test_error']:.4f} "
                f"| {r['barrier_test_error']:.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
