"""Barrier vs width, one panel per depth, a line per align + correction (mean over pairs, ± 95% CI).

    python analysis/barrier_vs_width.py runs/quickstart [--out barrier_vs_width.png] [--metric barrier_test_error]

A starting point to copy and edit: plain pandas and matplotlib on `repair_ray.load_tables`; the
command line, the loading and the mean ± 95% t-interval (the report's) are in `common.py`.
"""

import matplotlib

matplotlib.use("Agg")  # write files, no window
import matplotlib.pyplot as plt
from common import METRIC, draw_methods, load_ok_pairs, mean_ci95, parse_args, save

args = parse_args(__doc__, "barrier_vs_width.png", METRIC)
_, pairs = load_ok_pairs(args.sweep)
stats = mean_ci95(pairs, ["depth", "align", "correction", "width"], args.metric)
print(stats.to_string(index=False))

widths = sorted(stats["width"].unique())
depths = sorted(stats["depth"].unique())
fig, axes = plt.subplots(1, len(depths), figsize=(5 * len(depths), 4), squeeze=False, sharey=True)
for ax, depth in zip(axes[0], depths, strict=True):
    draw_methods(ax, stats[stats["depth"] == depth], "width")
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [f"{w:g}" for w in widths])
    ax.minorticks_off()
    ax.set_title(f"depth {depth}")
    ax.set_xlabel("width")
    ax.grid(alpha=0.3)
axes[0][0].set_ylabel(args.metric)
axes[0][0].legend(fontsize=8)
save(fig, args.out)
