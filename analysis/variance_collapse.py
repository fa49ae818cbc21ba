"""Variance collapse: std ratio per layer at alpha = 0.5, a line per align + correction, one model config.

    python analysis/variance_collapse.py runs/quickstart [--out variance_collapse.png] [--model-key KEY]

std_ratio = the interpolated net's per-channel pre-activation std over (1-a)*std_A + a*std_B:
1 means no collapse. Mean over pairs, ± 95% CI. Default model config: the deepest (then widest)
one with finished pairs.
A starting point to copy and edit: plain pandas and matplotlib on `repair_ray.load_tables`; the
command line, the loading and the mean ± 95% t-interval (the report's) are in `common.py`.
"""

import matplotlib

matplotlib.use("Agg")  # write files, no window
import matplotlib.pyplot as plt
from common import draw_methods, load_ok_pairs, mean_ci95, parse_args, save

args = parse_args(
    __doc__,
    "variance_collapse.png",
    ("--model-key", {"help": "which model config (a model_key of the pairs table)"}),
)
tables, pairs = load_ok_pairs(args.sweep)
model_key = args.model_key or pairs.sort_values(["depth", "width"]).iloc[-1]["model_key"]
config = pairs[pairs["model_key"] == model_key].iloc[0]

# only the layer rows of finished (ok) pairs and methods of this model config
ids = ["model_key", "seed_a", "seed_b", "align", "correction"]
layers = tables["layers"].merge(pairs[ids].drop_duplicates(), on=ids)
layers = layers[layers["model_key"] == model_key]
stats = mean_ci95(layers, ["align", "correction", "layer_index"], "std_ratio")
print(stats.to_string(index=False))

fig, ax = plt.subplots(figsize=(6.5, 4.2))
draw_methods(ax, stats, "layer_index")
ax.axhline(1.0, color="gray", linestyle=":", linewidth=1)
ax.set_ylim(bottom=0)
ax.set_xticks(sorted(stats["layer_index"].unique()))
ax.set_xlabel("layer index")
ax.set_ylabel("std ratio at alpha = 0.5")
layered = config.get("layer_widths")
width = f"widths {layered}" if isinstance(layered, str) else f"width {config['width']:g}"
ax.set_title(f"{config['arch']} {width} depth {config['depth']} ({model_key})", fontsize=9)
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
save(fig, args.out)
