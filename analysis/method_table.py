"""Print a Markdown table of barriers per (align, correction): mean ± 95% CI over a sweep's pairs.

    python analysis/method_table.py runs/method-comparison-mnist [--columns barrier_test_loss ...]
    python analysis/method_table.py runs/resnet20-repair-mnist --diff repair reset

The table REPRODUCTION.md shows for the method comparison (one row per align and correction, in
the order the sweep lists them); any barrier column of the pairs table can be asked for.
``--diff A B`` adds, per align, the per-pair difference correction A minus correction B (paired:
the same two networks), mean ± 95% CI, and how many pairs have A below B.
"""

from __future__ import annotations

import argparse

from common import load_ok_pairs, mean_ci95

DEFAULT = ("midpoint_barrier_test_loss", "max_barrier_test_loss", "barrier_test_loss", "barrier_test_error")
ORDER = ("none", "weight", "activation", "ste", "sinkhorn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="the sweep folder, e.g. runs/method-comparison-mnist")
    parser.add_argument("--columns", nargs="+", default=list(DEFAULT), help="barrier columns of the pairs table")
    parser.add_argument("--diff", nargs=2, metavar=("A", "B"), help="per-pair difference of correction A minus B")
    args = parser.parse_args()
    tables, pairs = load_ok_pairs(args.sweep)
    keys = ["align", "correction"]
    stats = {c: mean_ci95(pairs, keys, c).set_index(keys) for c in args.columns}
    rows = sorted(
        stats[args.columns[0]].index,
        key=lambda k: (ORDER.index(k[0]) if k[0] in ORDER else len(ORDER), k[0], k[1] != "none", k[1]),
    )
    print("| align | correction | pairs | " + " | ".join(args.columns) + " |")
    print("|---|---|---:|" + "---:|" * len(args.columns))
    for key in rows:
        cells = []
        for c in args.columns:
            r = stats[c].loc[key]
            cells.append(f"{r['mean']:.3f} ± {r['ci95']:.3f}")
        count = int(stats[args.columns[0]].loc[key, "count"])
        print(f"| {key[0]} | {key[1]} | {count} | " + " | ".join(cells) + " |")
    if args.diff:
        print_differences(pairs, args.columns, *args.diff)
    models = tables["models"]
    ok = models[models["status"] == "ok"]
    print(
        f"\n{len(ok)} networks, test accuracy {ok['test_acc'].mean():.4f} "
        f"(min {ok['test_acc'].min():.4f}, max {ok['test_acc'].max():.4f}); ± is the 95% t-interval over pairs."
    )


def print_differences(pairs, columns, a: str, b: str) -> None:
    """Per align: the per-pair difference correction ``a`` minus ``b`` of each column, mean ± 95% CI."""
    keys = ["model_key", "analysis_key", "seed_a", "seed_b", "align"]
    wide = pairs[pairs["correction"].isin([a, b])].pivot_table(index=keys, columns="correction", values=columns)
    print(f"\n| align | {a} − {b}: pairs | " + " | ".join(columns) + " |")
    print("|---|---:|" + "---:|" * len(columns))
    for align, part in wide.groupby(level="align"):
        cells = []
        for c in columns:
            d = (part[(c, a)] - part[(c, b)]).dropna().reset_index(drop=True).to_frame("d").assign(align=align)
            r = mean_ci95(d, ["align"], "d").iloc[0]
            cells.append(f"{r['mean']:+.3f} ± {r['ci95']:.3f} ({int((d['d'] < 0).sum())}/{len(d)} below)")
        print(f"| {align} | {len(part)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
