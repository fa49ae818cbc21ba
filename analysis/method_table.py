"""Print a Markdown table of barriers per (align, correction): mean ± 95% CI over a sweep's pairs.

    python analysis/method_table.py runs/method-comparison-mnist [--columns barrier_test_loss ...]
    python analysis/method_table.py runs/resnet20-repair-mnist --diff repair reset

The table REPRODUCTION.md shows for the method comparison (one row per align and correction, in
the order the sweep lists them); any barrier column of the pairs table can be asked for.
``--diff A B`` adds, per align and model config, the per-pair difference correction A minus
correction B (paired: the same two networks; ``align/correction`` methods compare those two):
:func:`repair_ray.paired_differences`'s pairs n, mean difference with its 95% t-interval, p values
of the paired t-test and of the sign test, their q values (adjusted for the false discovery rate,
Benjamini-Hochberg, over every row and column of the printed table: ``report.adjust_p_values``),
and on how many pairs A is better than B (lower on barriers, losses and errors, higher on
accuracies; ``?`` on a column whose name says neither).
"""

from __future__ import annotations

import argparse

import pandas as pd
from common import load_ok_pairs, mean_ci95

from repair_ray import paired_differences
from repair_ray.report import adjust_p_values
from repair_ray.report.cells import format_value

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
    """Per align and model config: correction ``a`` minus ``b`` on the same pairs, for each column.

    ``a`` and ``b`` may also be whole methods, ``align/correction``: then that one comparison.
    """
    if "/" in a or "/" in b:
        comparisons = [(a if "/" in a else f"{b.split('/')[0]}/{a}", b if "/" in b else f"{a.split('/')[0]}/{b}")]
    else:
        comparisons = [(f"{al}/{a}", f"{al}/{b}") for al in sorted(pairs["align"].unique(), key=_align_order)]
    found = pd.concat([paired_differences(pairs, x, y, columns) for x, y in comparisons], ignore_index=True)
    found = adjust_p_values(found, columns)  # the printed table is one family, not one per comparison
    print(f"\n| {a} − {b} | model | pairs | " + " | ".join(columns) + " |")
    print("|---|---|---:|" + "---:|" * len(columns))
    for r in found.to_dict("records"):
        cells = []
        for c in columns:
            low, high = r[f"{c}_diff_low"], r[f"{c}_diff_high"]
            bounds = f" [{low:+.3f}, {high:+.3f}]" if not pd.isna(low) else ""
            cells.append(
                f"{r[f'{c}_diff_mean']:+.3f}{bounds}, p {r[f'{c}_p_t']:.2g} (t) {r[f'{c}_p_sign']:.2g} (sign), "
                f"q {r[f'{c}_q_t']:.2g} (t) {r[f'{c}_q_sign']:.2g} (sign), "
                f"{format_value(r[f'{c}_a_better'])}/{int(r['n'])} better"
            )
        model = r["model_key"] + (f"/{r['analysis_key']}" if r["analysis_key"] else "")
        print(f"| {r['a']} − {r['b']} | {model} | {int(r['n'])} | " + " | ".join(cells) + " |")
    if found.empty:
        print("| (no pair has both methods) | | 0 |" + " |" * len(columns))
    else:
        print(
            "\nq: the p values adjusted for the false discovery rate (Benjamini-Hochberg) over every test of this "
            "table, the t-tests together and the sign tests together (a test without a p value is not counted)."
        )


def _align_order(align: str) -> tuple[int, str]:
    return (ORDER.index(align) if align in ORDER else len(ORDER), align)


if __name__ == "__main__":
    main()
