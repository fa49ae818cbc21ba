"""Variance collapse: std ratio per layer at alpha = 0.5, a line per align + correction, one model config.

    python analysis/variance_collapse.py runs/quickstart [--out variance_collapse.png] [--model-key KEY]

std_ratio = the interpolated net's per-channel pre-activation std over (1-a)*std_A + a*std_B:
1 means no collapse. Default model config: the deepest (then widest) one with finished pairs.
A starting point to copy and edit: plain pandas on `repair_ray.load_tables`.
"""

import argparse

import matplotlib

matplotlib.use("Agg")  # write files, no window
import matplotlib.pyplot as plt

import repair_ray

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("sweep", help="the sweep folder, e.g. runs/quickstart (or s3://bucket/prefix/name)")
parser.add_argument("--out", default="variance_collapse.png", help="image to write (.png, .svg, .pdf)")
parser.add_argument("--model-key", help="which model config (a model_key of the pairs table)")
args = parser.parse_args()

tables = repair_ray.load_tables(args.sweep)
pairs = tables["pairs"][tables["pairs"]["status"] == "ok"]
if pairs.empty:
    raise SystemExit(f"{args.sweep}: no finished pairs yet")
model_key = args.model_key or pairs.sort_values(["depth", "width"]).iloc[-1]["model_key"]
config = pairs[pairs["model_key"] == model_key].iloc[0]

# only the layer rows of finished (ok) pairs and methods of this model config
ids = ["model_key", "seed_a", "seed_b", "align", "correction"]
layers = tables["layers"].merge(pairs[ids].drop_duplicates(), on=ids)
layers = layers[layers["model_key"] == model_key]
stats = layers.groupby(["align", "correction", "layer_index"])["std_ratio"].agg(["mean", "sem"]).reset_index()
print(stats.to_string(index=False))

fig, ax = plt.subplots(figsize=(6.5, 4.2))
for (align, correction), line in stats.groupby(["align", "correction"]):
    linestyle = "--" if correction != "none" else "-"
    label = f"{align} + {correction}"
    ax.errorbar(
        line["layer_index"],
        line["mean"],
        yerr=line["sem"].fillna(0),
        marker="o",
        capsize=3,
        linestyle=linestyle,
        label=label,
    )
ax.axhline(1.0, color="gray", linestyle=":", linewidth=1)
ax.set_ylim(bottom=0)
ax.set_xticks(sorted(stats["layer_index"].unique()))
ax.set_xlabel("layer index")
ax.set_ylabel("std ratio at alpha = 0.5")
ax.set_title(f"{config['arch']} width {config['width']:g} depth {config['depth']} ({model_key})", fontsize=9)
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(args.out, dpi=120)
print(f"wrote {args.out}")
