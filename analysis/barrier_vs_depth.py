"""Barrier vs depth, one panel per width, a line per align + correction (mean over pairs, ± SEM).

    python analysis/barrier_vs_depth.py runs/quickstart [--out barrier_vs_depth.png] [--metric barrier_test_error]

A starting point to copy and edit: plain pandas on `repair_ray.load_tables`.
"""

import argparse

import matplotlib

matplotlib.use("Agg")  # write files, no window
import matplotlib.pyplot as plt

import repair_ray

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("sweep", help="the sweep folder, e.g. runs/quickstart (or s3://bucket/prefix/name)")
parser.add_argument("--out", default="barrier_vs_depth.png", help="image to write (.png, .svg, .pdf)")
parser.add_argument("--metric", default="barrier_test_loss", help="any column of the pairs table")
args = parser.parse_args()

pairs = repair_ray.load_tables(args.sweep)["pairs"]
pairs = pairs[pairs["status"] == "ok"]  # failed pairs have no barriers
if pairs.empty:
    raise SystemExit(f"{args.sweep}: no finished pairs yet")

stats = (
    pairs.groupby(["width", "align", "correction", "depth"])[args.metric].agg(["mean", "sem", "count"]).reset_index()
)
print(stats.to_string(index=False))

widths = sorted(stats["width"].unique())
fig, axes = plt.subplots(1, len(widths), figsize=(5 * len(widths), 4), squeeze=False, sharey=True)
for ax, width in zip(axes[0], widths, strict=True):
    for (align, correction), line in stats[stats["width"] == width].groupby(["align", "correction"]):
        ax.errorbar(
            line["depth"],
            line["mean"],
            yerr=line["sem"].fillna(0),
            marker="o",
            capsize=3,
            linestyle="--" if correction != "none" else "-",
            label=f"{align} + {correction}",
        )
    ax.set_xticks(sorted(stats["depth"].unique()))
    ax.set_title(f"width {width:g}")
    ax.set_xlabel("depth")
    ax.grid(alpha=0.3)
axes[0][0].set_ylabel(args.metric)
axes[0][0].legend(fontsize=8)
fig.tight_layout()
fig.savefig(args.out, dpi=120)
print(f"wrote {args.out}")
