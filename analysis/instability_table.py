"""Print a Markdown table of instability per branch epoch: barriers between children of one trunk.

    python analysis/instability_table.py runs/stability-lenet-mnist [--columns barrier_test_error ...]

Frankle et al. (2020)'s instability is the error barrier between two children that share the
trunk's first k epochs (``barrier_test_error`` of unaligned, uncorrected pairs: ``align none``,
``correction none``). One row per (model config, branch epoch), every trunk's pairs pooled with the
trunk as the unit: the pairs of one trunk share its first k epochs, so they are averaged per trunk
first and ± is the 95% t-interval over the trunks' means (over the pairs, marked ``*``, where a
branch epoch has one trunk: an interval for that trunk alone). The table REPRODUCTION.md shows for
the stability study.
"""

from __future__ import annotations

import argparse

from common import load_ok_pairs, trunk_mean_ci95

DEFAULT = ("barrier_test_error", "barrier_test_loss", "midpoint_test_acc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="the sweep folder, e.g. runs/stability-lenet-mnist")
    parser.add_argument("--columns", nargs="+", default=list(DEFAULT), help="columns of the pairs table")
    parser.add_argument("--align", default="none", help="the alignment of the pairs (default: none)")
    parser.add_argument("--correction", default="none", help="the correction of the pairs (default: none)")
    args = parser.parse_args()
    tables, pairs = load_ok_pairs(args.sweep)
    pairs = pairs[(pairs["align"] == args.align) & (pairs["correction"] == args.correction)]
    pairs = pairs[pairs["branch_epoch"].notna()]
    if "imp_round" in pairs.columns:  # rounds of IMP: analysis/imp_table.py
        pairs = pairs[pairs["imp_round"].isna()]
    if pairs.empty:
        raise SystemExit(f"{args.sweep}: no finished pairs of branched children with align {args.align!r}")
    described = pairs.assign(network=pairs["layer_widths"].fillna(pairs["width"].astype(str)))
    keys = ["arch", "network", "depth", "norm", "branch_epoch"]
    stats = {c: trunk_mean_ci95(described, keys, c).set_index(keys) for c in args.columns}
    print("| network | branch epoch | trunks | pairs | " + " | ".join(args.columns) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(args.columns))
    trunks = described.groupby(keys)["trunk_seed"].nunique()
    for key in sorted(stats[args.columns[0]].index, key=lambda k: (str(k[:4]), k[4])):
        mark = "" if trunks.loc[key] >= 2 else " *"
        cells = [f"{stats[c].loc[key, 'mean']:.4f} ± {stats[c].loc[key, 'ci95']:.4f}{mark}" for c in args.columns]
        count = int(stats[args.columns[0]].loc[key, "count"])
        name = f"{key[0]} {key[1]} ({key[3]})"
        print(f"| {name} | {int(key[4])} | {trunks.loc[key]} | {count} | " + " | ".join(cells) + " |")
    models = tables["models"]
    ok = models[models["status"] == "ok"]
    print(
        f"\n{len(ok)} children, test accuracy {ok['test_acc'].mean():.4f} "
        f"(min {ok['test_acc'].min():.4f}, max {ok['test_acc'].max():.4f}); ± is the 95% t-interval over "
        "trunks (their pairs averaged first: the pairs of one trunk are not independent); * over the pairs "
        "of the only trunk, an interval for that trunk alone."
    )


if __name__ == "__main__":
    main()
