"""Weight matching's objective against the barrier it buys, for one pair of a finished sweep.

    python analysis/objective_vs_barrier.py runs/method-comparison-mnist [--seeds 0 1]

For weight matching (forward and identity starts), activation matching, and weight matching
started from activation matching's permutation: the objective ``Σ⟨W_A, π(W_B)⟩`` and the test-loss
midpoint barrier. REPRODUCTION.md uses it to show where weight matching's gap comes from.
"""

from __future__ import annotations

import argparse

import repair_ray as rr
from repair_ray.io import storage
from repair_ray.permutation import matching_objective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="the sweep folder")
    parser.add_argument("--seeds", nargs=2, type=int, default=[0, 1])
    args = parser.parse_args()
    tables = rr.load_tables(args.sweep)
    models = tables["models"][tables["models"]["status"] == "ok"]
    rows = [models[models.seed == s].iloc[0] for s in args.seeds]
    config = rr.ModelConfig(rows[0].arch, rows[0].width, int(rows[0].depth), rows[0].norm)
    data = rr.load_dataset(rows[0].dataset)
    nets = []
    for row in rows:
        net = config.build(data.num_classes, data.in_shape)
        net.load_state_dict(rr.load_checkpoint(storage.join(args.sweep, row.checkpoint_uri)).state_dict)
        nets.append(net.eval())
    a, b = nets
    spec = rr.permutation_spec(a)
    ends = (rr.evaluate(a, data.test)["loss"] + rr.evaluate(b, data.test)["loss"]) / 2
    stat = data.train.subset(10000, seed=0).head(5000)

    def report(name, perm):
        mid = config.build(data.num_classes, data.in_shape)
        mid.load_state_dict(rr.interpolate_state(a.state_dict(), rr.apply_permutation(spec, perm, b), 0.5))
        barrier = rr.evaluate(mid, data.test)["loss"] - ends
        objective = matching_objective(spec, a, b, perm)
        print(f"{name:32s} objective {objective:9.2f}   midpoint test-loss barrier {barrier:.4f}")

    report("weight (forward start)", rr.weight_matching(spec, a, b))
    report("weight (identity start)", rr.weight_matching(spec, a, b, start="identity"))
    act = rr.activation_matching(spec, a, b, stat)
    report("activation", act)
    report("weight from activation's", rr.weight_matching(spec, a, b, init_perm=act))


if __name__ == "__main__":
    main()
