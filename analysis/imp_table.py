"""Print a Markdown table of IMP with rewinding per round: sparsity, accuracy and instability.

    python analysis/imp_table.py runs/imp-lenet-mnist [--columns barrier_test_error ...]

Frankle et al. (2020): each round of iterative magnitude pruning keeps fewer weights; a round is
*matching* when its children reach the dense round's test accuracy, and *stable* when two children
(same mask, different data orders) end linearly connected (``barrier_test_error`` of unaligned,
uncorrected pairs ~ 0). One row per (network, rewind epoch, round), every trunk pooled with the
trunk as the unit (children and pairs of one trunk share its rewind point: they are averaged per
trunk first); ± is the 95% t-interval over the trunks' means, or over the children / pairs of the
only trunk (marked ``*``: an interval for that trunk alone). The table REPRODUCTION.md shows for
the lottery-ticket study.
"""

from __future__ import annotations

import argparse

from common import load_ok_pairs, trunk_mean_ci95

DEFAULT = ("barrier_test_error", "barrier_test_loss")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="the sweep folder, e.g. runs/imp-lenet-mnist")
    parser.add_argument("--columns", nargs="+", default=list(DEFAULT), help="columns of the pairs table")
    parser.add_argument("--align", default="none", help="the alignment of the pairs (default: none)")
    parser.add_argument("--correction", default="none", help="the correction of the pairs (default: none)")
    args = parser.parse_args()
    tables, pairs = load_ok_pairs(args.sweep)
    models = tables["models"]
    if "imp_round" not in models.columns or models["imp_round"].isna().all():
        raise SystemExit(f"{args.sweep}: no rounds of IMP (the sweep has no imp section)")
    models = models[(models["status"] == "ok") & models["imp_round"].notna()]
    pairs = pairs[(pairs["align"] == args.align) & (pairs["correction"] == args.correction)]
    pairs = pairs[pairs["imp_round"].notna()]

    def described(frame):
        return frame.assign(network=frame["layer_widths"].fillna(frame["width"].map(lambda w: f"{w:g}")))

    keys = ["arch", "network", "depth", "norm", "branch_epoch", "imp_round"]
    accuracy = trunk_mean_ci95(described(models), keys, "test_acc").set_index(keys)
    sparsity = described(models).groupby(keys)["sparsity"].first()
    stats = {c: trunk_mean_ci95(described(pairs), keys, c).set_index(keys) for c in args.columns} if len(pairs) else {}
    print(
        "| network | rewind epoch | round | weights remaining | children | test accuracy | Δ vs dense | pairs | "
        + " | ".join(args.columns)
        + " |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(args.columns))
    for key in sorted(accuracy.index, key=lambda k: (str(k[:5]), k[5])):
        acc = accuracy.loc[key]
        dense = accuracy.loc[(*key[:5], 0), "mean"] if (*key[:5], 0) in accuracy.index else float("nan")
        first = stats.get(args.columns[0])
        count = int(first.loc[key, "count"]) if first is not None and key in first.index else 0
        one = first is not None and key in first.index and first.loc[key, "trunks"] < 2
        cells = [
            f"{stats[c].loc[key, 'mean']:.4f} ± {stats[c].loc[key, 'ci95']:.4f}{' *' if one else ''}" if count else ""
            for c in args.columns
        ]
        name = f"{key[0]} {key[1]} ({key[3]})"
        print(
            f"| {name} | {int(key[4])} | {int(key[5])} | {100 * (1 - sparsity.loc[key]):.1f} % | {int(acc['count'])} | "
            f"{acc['mean']:.4f} ± {acc['ci95']:.4f}{' *' if acc['trunks'] < 2 else ''} | {acc['mean'] - dense:+.4f} | "
            f"{count} | " + " | ".join(cells) + " |"
        )
    print(
        "\n± is the 95% t-interval over trunks (each trunk's children or pairs averaged first: they share its "
        "rewind point); * over the children (accuracy) or pairs (barriers) of the only trunk, an interval for "
        "that trunk alone (nan with one)."
    )


if __name__ == "__main__":
    main()
