"""Print REPAIR's MNIST MLP numbers beside ours, each with a verdict by a rule fixed in advance.

    python analysis/repair_paper_table.py runs/repair-mlp-depth-mnist-paper runs/repair-mlp-width-mnist-paper

The published numbers are the authors' saved figure data (``analysis/published/repair_mlp_mnist.json``,
extracted from ``KellerJordan/REPAIR``'s ``notebooks/figure_objects``; each entry names its file):
one pair of networks per config. Ours: the sweeps' ``ok`` pairs (the current config's keys).

The verdict rule, fixed before any number was seen (issue 23): a midpoint test accuracy is
**reproduced** when our mean over pairs lies within 1 point (percentage point of accuracy) of the
paper's number, else **not reproduced**; the table also says whether the paper's single pair lies
within the range of our pairs (a hint that the gap is pair-to-pair spread rather than method).
A variance ratio is reproduced when ours is within a factor of 1.5 of the paper's (ratios span
four orders of magnitude across layers); the rule gives a verdict for the plain (unaligned) and the
aligned interpolation of every layer.

Table 1: per config, the endpoints' test accuracy and the midpoint accuracy of the plain, aligned
(activation matching) and aligned + REPAIR interpolations, ours as mean ± 95% t-interval (n pairs).
Table 2: the paper's variance ratio per layer (``mean_var_ratio`` of the ``layers`` table at
alpha = 0.5) for the configs the paper published one for.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

import repair_ray
from repair_ray.report.intervals import interval

PUBLISHED = Path(__file__).resolve().parent / "published" / "repair_mlp_mnist.json"
WITHIN_POINTS = 1.0
WITHIN_FACTOR = 1.5
METHODS = {"none": ("none", "none"), "aligned": ("activation", "none"), "aligned + REPAIR": ("activation", "repair")}
PAPER_KEYS = {"none": "vanilla", "aligned": "permute", "aligned + REPAIR": "permute_correct"}
# the paper's variance-ratio data per (depth, width), and the key of its aligned and plain series
VARIANCE = {
    (11, 512): ("var_ratios_mlp_h512", "var_ratio_permute", "var_ratio_vanilla"),
    (8, 128): ("var_ratios_mlp_e50_l7_h128", "var_ratio_permute", "var_ratio_vanilla"),
    (16, 128): ("layerwise_var_mlp_e50_l15_h128", "permuted", "vanilla"),
}


def published_row(paper: dict, depth: int, width: int, sweep_kind: str) -> dict | None:
    """The paper's (v1, v2, vanilla, permute, permute_correct) of a config, or None."""
    if sweep_kind == "depth" and width == 128:
        return paper["depth_sweep"]["rows"].get(str(depth - 1))
    if sweep_kind == "width" and depth == 11:
        return paper["width_sweep"]["rows"].get(str(width))
    return None


def verdict(ours: float, low: float, high: float, theirs: float) -> str:
    gap = ours - theirs
    if abs(gap) <= WITHIN_POINTS:
        return f"yes ({gap:+.1f})"
    inside = " (paper within our pairs' range)" if low <= theirs <= high else ""
    return f"**no** ({gap:+.1f}){inside}"


def ratio_verdict(ours: float, theirs: float) -> str:
    """``yes (x1.12)`` when ``ours`` is within a factor of :data:`WITHIN_FACTOR` of ``theirs``, else
    ``**no** (x...)``."""
    ratio = ours / theirs if theirs else float("nan")
    ok = 1 / WITHIN_FACTOR <= ratio <= WITHIN_FACTOR
    return f"{'yes' if ok else '**no**'} (x{ratio:.2f})"


def accuracy_table(pairs: pd.DataFrame, paper: dict, kind: str) -> list[str]:
    lines = [
        "| hidden layers | width | pairs | endpoints: ours / paper | "
        + " | ".join(f"{m}: ours / paper | {m} reproduced?" for m in METHODS)
        + " |",
        "|---:|---:|---:|---:|" + "---:|---|" * len(METHODS),
    ]
    pairs = pairs.assign(endpoint=100 * (pairs["endpoint_test_acc_a"] + pairs["endpoint_test_acc_b"]) / 2)
    for (depth, width), part in pairs.groupby(["depth", "width"]):
        row = published_row(paper, int(depth), int(width), kind)
        base = part[(part["align"] == "none") & (part["correction"] == "none")]
        ends = interval(base["endpoint"].to_numpy())
        paper_ends = "" if row is None else f"{(row['v1'][2] + row['v2'][2]) / 2:.1f}"
        cells = [str(int(depth)), str(int(width)), str(ends.n), f"{ends.mean:.1f} / {paper_ends}"]
        for name, (align, correction) in METHODS.items():
            values = 100 * part[(part["align"] == align) & (part["correction"] == correction)]["midpoint_test_acc"]
            ci = interval(values.to_numpy())
            ours = f"{ci.mean:.1f} ± {(ci.high - ci.mean):.1f}" if ci.n >= 2 else f"{ci.mean:.1f}"
            if row is None:
                cells += [f"{ours} / –", "no published number"]
                continue
            theirs = row[PAPER_KEYS[name]][2]
            cells += [f"{ours} / {theirs:.1f}", verdict(ci.mean, float(values.min()), float(values.max()), theirs)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def variance_table(layers: pd.DataFrame, pairs: pd.DataFrame, paper: dict) -> list[str]:
    lines = []
    configs = pairs[["model_key", "depth", "width"]].drop_duplicates()
    for key, depth, width in configs.itertuples(index=False):
        if (int(depth), int(width)) not in VARIANCE:
            continue
        name, aligned_key, plain_key = VARIANCE[(int(depth), int(width))]
        data = paper["variance_ratio"][name]
        if "v1" in data:  # raw per-layer variances: the ratio over the endpoints' mean
            ends = [(a + b) / 2 for a, b in zip(data["v1"], data["v2"], strict=True)]
            theirs = {s: [x / e for x, e in zip(data[s], ends, strict=True)] for s in (aligned_key, plain_key)}
        else:
            theirs = {s: data[s] for s in (aligned_key, plain_key)}
        mine = layers[layers["model_key"] == key]
        profile = {
            m: mine[(mine["align"] == a) & (mine["correction"] == c)].groupby("layer_index")["mean_var_ratio"].mean()
            for m, (a, c) in METHODS.items()
        }
        lines += [
            "",
            f"Variance ratio, {int(depth)} hidden layers of width {int(width)} ({len(mine['seed_a'].unique())} pairs; "
            f"paper: {name}.pt, one pair). Our layer = the paper's + 1 (it skips the first).",
            "",
            "| layer | plain: ours / paper | plain reproduced? | aligned: ours / paper | aligned reproduced? "
            "| aligned + REPAIR: ours |",
            "|---:|---:|---|---:|---|---:|",
        ]
        for i, (plain, aligned) in enumerate(zip(theirs[plain_key], theirs[aligned_key], strict=True)):
            layer = i + 1
            ours_plain = profile["none"].get(layer, float("nan"))
            ours_aligned = profile["aligned"].get(layer, float("nan"))
            ours_repair = profile["aligned + REPAIR"].get(layer, float("nan"))
            lines.append(
                f"| {layer} | {ours_plain:.3g} / {plain:.3g} | {ratio_verdict(ours_plain, plain)} | "
                f"{ours_aligned:.3g} / {aligned:.3g} | {ratio_verdict(ours_aligned, aligned)} | {ours_repair:.3f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", help="sweep folders of repair-mlp-{depth,width}-mnist-paper")
    args = parser.parse_args()
    paper = json.loads(PUBLISHED.read_text())
    for sweep in args.sweeps:
        tables = repair_ray.report.ok_tables(repair_ray.load_tables(sweep))
        pairs, layers = tables["pairs"], tables["layers"]
        kind = "depth" if pairs["norm"].eq("batch").all() else "width"
        print(f"## {sweep} ({kind} sweep)\n")
        print("\n".join(accuracy_table(pairs, paper, kind)))
        print("\n".join(variance_table(layers, pairs, paper)))
        print()


if __name__ == "__main__":
    main()
