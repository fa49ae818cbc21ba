"""Barrier vs depth, one panel per width, a line per align + correction (mean over pairs, ± 95% CI).

    python analysis/barrier_vs_depth.py runs/quickstart [--out barrier_vs_depth.png] [--metric barrier_test_error]

A starting point to copy and edit: plain pandas and matplotlib on `repair_ray.load_tables`; the
command line, the loading and the mean ± 95% t-interval (the report's) are in `common.py`.
"""

import matplotlib

matplotlib.use("Agg")  # write files, no window
import matplotlib.pyplot as plt
from common import METRIC, draw_methods, load_ok_pairs, mean_ci95, parse_args, save

args = parse_args(__doc__, "barrier_vs_depth.png", METRIC)
_, pairs = load_ok_pairs(args.sweep)
stats = mean_ci95(pairs, ["width", "align", "correction", "depth"], args.metric)
print(stats.to_string(index=False))

widths = sorted(stats["width"].unique())
fig, axes = plt.subplots(1, len(widths), figsize=(5 * len(widths), 4), squeeze=False, sharey=True)
for ax, width in zip(axes[0], widths, strict=True):
    draw_methods(ax, stats[stats["width"] == width], "depth")
    ax.set_xticks(sorted(stats["depth"].unique()))
    ax.set_title(f"width {width:g}")
    ax.set_xlabel("depth")
    ax.grid(alpha=0.3)
axes[0][0].set_ylabel(args.metric)
axes[0][0].legend(fontsize=8)
save(fig, args.out)
