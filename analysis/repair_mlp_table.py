"""Print REPAIR's MNIST MLP tables: midpoint accuracy per (width, depth) and the variance-collapse profile.

    python analysis/repair_mlp_table.py runs/repair-mlp-mnist [--align activation] [--model-key KEY]

Table 1, one row per model config (mlps of the sweep, by depth then width): the endpoints' test
accuracy (mean over the networks of its pairs), and the midpoint (alpha = 0.5) test accuracy of the
plain interpolation (``none``), the aligned one (``--align``, no correction) and the aligned one
with REPAIR — mean ± 95% t-interval over pairs; then the aligned and the repaired accuracy barrier
(endpoints' mean minus midpoint), the REPAIR paper's numbers.

Table 2, the variance-collapse profile of one model config (default: the deepest, then widest):
per hidden layer, the ``layers`` table's ``std_ratio`` at alpha = 0.5 (the interpolated network's
per-channel pre-activation std over the interpolation of the endpoints' stds, averaged over
channels) and its square, close to the variance ratio the paper plots (its square is of the
channel mean, so at most the channel mean of the squares), for the three interpolations.
"""

from __future__ import annotations

import argparse

from common import load_ok_pairs, mean_ci95


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="the sweep folder, e.g. runs/repair-mlp-mnist")
    parser.add_argument("--align", default="activation", help="the alignment to compare (default: activation)")
    parser.add_argument("--model-key", help="the model config of the variance profile (a model_key)")
    args = parser.parse_args()
    tables, pairs = load_ok_pairs(args.sweep)
    pairs = pairs[pairs["arch"] == "mlp"]
    methods = {"none": ("none", "none"), "aligned": (args.align, "none"), "+ REPAIR": (args.align, "repair")}
    pairs = pairs.assign(
        endpoint_acc=(pairs["endpoint_test_acc_a"] + pairs["endpoint_test_acc_b"]) / 2,
        acc_barrier=lambda f: (f["endpoint_test_acc_a"] + f["endpoint_test_acc_b"]) / 2 - f["midpoint_test_acc"],
    )
    keys = ["depth", "width"]
    stats = {}
    for name, (align, correction) in methods.items():
        part = pairs[(pairs["align"] == align) & (pairs["correction"] == correction)]
        if part.empty:
            raise SystemExit(f"{args.sweep}: no finished pairs with align {align!r} and correction {correction!r}")
        stats[name] = mean_ci95(part, keys, "midpoint_test_acc").set_index(keys)
        stats[f"{name} barrier"] = mean_ci95(part, keys, "acc_barrier").set_index(keys)
    endpoints = mean_ci95(pairs[pairs["align"] == "none"], keys, "endpoint_acc").set_index(keys)

    def cell(frame, key, scale=100.0):
        if key not in frame.index:
            return ""
        row = frame.loc[key]
        return f"{scale * row['mean']:.1f} ± {scale * row['ci95']:.1f}"

    print(
        "| hidden layers | width | pairs | endpoints | none | aligned | aligned + REPAIR "
        "| barrier aligned | barrier + REPAIR |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in sorted(stats["aligned"].index):
        count = int(stats["aligned"].loc[key, "count"])
        cells = [cell(endpoints, key)] + [cell(stats[n], key) for n in methods]
        cells += [cell(stats["aligned barrier"], key), cell(stats["+ REPAIR barrier"], key)]
        print(f"| {int(key[0])} | {key[1]:g} | {count} | " + " | ".join(cells) + " |")
    print("\nTest accuracy in %, mean ± 95% t-interval over pairs; barrier = endpoints' mean − midpoint.")

    model_key = args.model_key or pairs.sort_values(["depth", "width"]).iloc[-1]["model_key"]
    described = pairs[pairs["model_key"] == model_key].iloc[0]
    ids = ["model_key", "seed_a", "seed_b", "align", "correction"]
    layers = tables["layers"].merge(pairs[ids].drop_duplicates(), on=ids)
    layers = layers[layers["model_key"] == model_key].assign(variance_ratio=lambda f: f["std_ratio"] ** 2)
    print(f"\nVariance collapse, {model_key} (width {described['width']:g}, {int(described['depth'])} hidden layers):")
    print(
        "\n| layer | "
        + " | ".join(f"std ratio {n}" for n in methods)
        + " | "
        + " | ".join(f"variance ratio {n}" for n in methods)
        + " |"
    )
    print("|---:|" + "---:|" * (2 * len(methods)))
    profile = {}
    for name, (align, correction) in methods.items():
        part = layers[(layers["align"] == align) & (layers["correction"] == correction)]
        profile[name] = part.groupby("layer_index")[["std_ratio", "variance_ratio"]].mean()
    for index in sorted(profile["aligned"].index):
        std = [f"{profile[n].loc[index, 'std_ratio']:.3f}" if index in profile[n].index else "" for n in methods]
        var = [f"{profile[n].loc[index, 'variance_ratio']:.3f}" if index in profile[n].index else "" for n in methods]
        print(f"| {int(index)} | " + " | ".join(std + var) + " |")
    print("\nMean over the config's pairs and the layer's channels; variance ratio = the std ratio squared.")


if __name__ == "__main__":
    main()
