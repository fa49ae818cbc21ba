"""Compare two sweeps of the same model configs and seeds, network by network and pair by pair.

    python analysis/compare_runs.py runs/quickstart /tmp/spt/quickstart [--column barrier_test_loss]

For checking that a change of *how* networks are trained (``train.seeds_per_trial``, another device,
``precision``) leaves the science where it was: for each network both sweeps trained (same model key
and seed), the relative weight difference ``|W_b - W_a| / |W_a|`` over all parameters and the test
accuracy difference; then, per (align, correction), the mean of ``--column`` over the pairs both
have, with the standard deviation over those pairs (all configs pooled) for scale. A chaotic
training run can end as a different (but equally good) network from rounding alone: compare the
differences with the spread between seeds, not with zero.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from common import load_ok_pairs

from repair_ray.io.checkpoint import load_checkpoint
from repair_ray.report import to_markdown


def weight_difference(a: str, b: str) -> float:
    """``|W_b - W_a| / |W_a|`` over every tensor of two checkpoints' state dicts."""
    wa, wb = load_checkpoint(a).state_dict, load_checkpoint(b).state_dict
    num = sum(float(((wa[n].double() - wb[n].double()) ** 2).sum()) for n in wa)
    den = sum(float((wa[n].double() ** 2).sum()) for n in wa)
    return (num / den) ** 0.5 if den else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="the reference sweep folder")
    parser.add_argument("b", help="the sweep to compare with it")
    parser.add_argument("--column", default="barrier_test_loss", help="a column of the pairs table")
    args = parser.parse_args()
    (ta, pa), (tb, pb) = load_ok_pairs(args.a), load_ok_pairs(args.b)
    ids = ["model_key", "seed"]
    ma = ta["models"][ta["models"]["status"] == "ok"].set_index(ids)
    mb = tb["models"][tb["models"]["status"] == "ok"].set_index(ids)
    both = ma.index.intersection(mb.index).sort_values()
    if both.empty:
        raise SystemExit(f"{args.a} and {args.b} share no trained network (same model key and seed)")
    rows = []
    for key, seed in both:
        uri_a, uri_b = (
            Path(args.a, ma.loc[(key, seed), "checkpoint_uri"]),
            Path(args.b, mb.loc[(key, seed), "checkpoint_uri"]),
        )
        rows.append(
            {
                "model_key": key,
                "seed": seed,
                "relative_weight_difference": weight_difference(str(uri_a), str(uri_b)),
                "test_acc_a": ma.loc[(key, seed), "test_acc"],
                "test_acc_b": mb.loc[(key, seed), "test_acc"],
            }
        )
    networks = pd.DataFrame(rows)
    networks["test_acc_difference"] = networks["test_acc_b"] - networks["test_acc_a"]
    print(f"## Networks ({len(networks)} in both)\n")
    networks["relative_weight_difference"] = networks["relative_weight_difference"].map(lambda d: f"{d:.2e}")
    print(to_markdown(networks.round(4)))
    spread = ma.loc[both].groupby(level="model_key")["test_acc"].std()
    print(f"\nseed-to-seed sd of test accuracy within a model config (a): {spread.min():.4f} .. {spread.max():.4f}")
    keys = ["model_key", "seed_a", "seed_b", "align", "correction"]
    pairs = pa.set_index(keys)[[args.column]].join(pb.set_index(keys)[[args.column]], lsuffix="_a", rsuffix="_b")
    pairs = pairs.dropna()
    pairs["difference"] = pairs[f"{args.column}_b"] - pairs[f"{args.column}_a"]
    methods = pairs.groupby(level=["align", "correction"]).agg(
        pairs=("difference", "size"),
        mean_a=(f"{args.column}_a", "mean"),
        mean_b=(f"{args.column}_b", "mean"),
        sd_over_pairs_a=(f"{args.column}_a", "std"),
        max_abs_difference=("difference", lambda d: d.abs().max()),
    )
    print(f"\n## {args.column} per method (pairs in both)\n")
    print(to_markdown(methods.reset_index().round(4)))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
