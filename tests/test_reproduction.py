"""REPRODUCTION.md's long runs, end to end through the command line, and the published behaviour
each of them must show: the two whole example sweeps (30-60 minutes each on 2 CPU cores;
``make reproduce``, not CI) and two cells of them that CI's slow tier runs (``make test-slow``).

Each test runs ``repair-ray run --example <name>``, into a temporary folder or, when
``REPAIR_RAY_REPRODUCTION_RUNS`` names a folder that already holds the sweep, there (a finished
sweep is then only checked: a re-run finds every row done), and asserts the paper's claims on the
tables, with margins wide enough for seed noise and narrow enough to fail when the science breaks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from repair_ray import load_tables

# each runs a whole example sweep (30-60 minutes here) in a subprocess it allows 3 hours: the tests get that too
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3 * 3600 + 600)]


def _run_example(name: str, tmp_path: Path) -> dict[str, pd.DataFrame]:
    storage = os.environ.get("REPAIR_RAY_REPRODUCTION_RUNS") or str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "repair_ray", "run", "--example", name, "--storage", storage],
        capture_output=True,
        text=True,
        timeout=3 * 3600,
    )
    # exit code 1: some network failed; only a diverged deep plain mlp may (a NaN loss, recorded as
    # such, and trained again, to the same NaN, by every re-run); nothing else may fail
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    tables = load_tables(str(Path(storage, name)))
    failed = tables["models"][tables["models"]["status"] != "ok"]
    assert failed["error"].str.startswith("nan_loss").all(), failed["error"].tolist()
    assert (done.returncode == 1) == (not failed.empty), done.stdout[-3000:]
    assert (tables["pairs"]["status"] == "ok").all()
    return tables


@pytest.mark.reproduction  # a whole example sweep: `make reproduce`, not CI (see docs/development.md)
def test_repair_mlp_mnist_alignment_collapses_with_depth_and_repair_restores_it(tmp_path, subprocesses):
    """REPAIR's MNIST MLPs: unaligned midpoints of deep MLPs are at chance, aligned ones lose more
    with depth, REPAIR recovers most of it and keeps every layer's std at the endpoints'."""
    tables = _run_example("repair-mlp-mnist", tmp_path)
    pairs = tables["pairs"]
    acc = pairs.groupby(["depth", "width", "align", "correction"])["midpoint_test_acc"].mean()
    endpoints = pairs.assign(e=(pairs["endpoint_test_acc_a"] + pairs["endpoint_test_acc_b"]) / 2)
    endpoint = endpoints.groupby(["depth", "width"])["e"].mean()
    for depth, width in endpoint.index:
        assert endpoint[(depth, width)] > 0.95
        plain, aligned = acc[(depth, width, "none", "none")], acc[(depth, width, "activation", "none")]
        repaired = acc[(depth, width, "activation", "repair")]
        assert repaired > aligned > plain, (depth, width, plain, aligned, repaired)
        if depth >= 8:
            assert plain < 0.2, (depth, width, plain)  # the unaligned midpoint of a deep mlp is at chance
    assert len(endpoint) == 7  # every config has a pair (a diverged seed costs only its own pair)
    barrier = endpoint - acc.xs(("activation", "none"), level=("align", "correction"))
    assert barrier[(16, 128)] > barrier[(2, 128)] + 0.1  # the aligned barrier grows with depth
    repaired_barrier = endpoint - acc.xs(("activation", "repair"), level=("align", "correction"))
    wide = [key for key in repaired_barrier.index if key[1] >= 128]
    assert (repaired_barrier[wide] < 0.03).all(), repaired_barrier.tolist()  # REPAIR: within 3 points
    # the variance collapse of the deepest config: compounding when aligned, gone with REPAIR
    deepest = pairs.sort_values(["depth", "width"]).iloc[-1]["model_key"]
    layers = tables["layers"][tables["layers"]["model_key"] == deepest]
    profile = layers.groupby(["align", "correction", "layer_index"])["std_ratio"].mean()
    aligned, repaired = profile[("activation", "none")], profile[("activation", "repair")]
    assert aligned.iloc[-1] < 0.5 * aligned.iloc[0] and profile[("none", "none")].iloc[-1] < 0.05
    assert repaired.between(0.95, 1.05).all(), repaired.tolist()


@pytest.mark.reproduction  # a whole example sweep: `make reproduce`, not CI (see docs/development.md)
def test_imp_lenet_mnist_tickets_stay_matching_and_stable_as_they_get_sparse(tmp_path, subprocesses):
    """Frankle et al.'s LeNet-300-100: IMP rewound to initialisation gives subnetworks that keep
    the dense accuracy far into sparsity and whose children stay linearly connected (stable)."""
    tables = _run_example("imp-lenet-mnist", tmp_path)
    models, pairs = tables["models"], tables["pairs"]
    assert sorted(models["imp_round"].unique()) == list(range(16))
    accuracy = models.groupby("imp_round")["test_acc"].mean()
    sparsity = models.groupby("imp_round")["sparsity"].first()
    assert sparsity[15] == pytest.approx(1 - 0.8**15, abs=1e-3)
    dense = accuracy[0]
    assert dense > 0.975
    matching = [r for r in accuracy.index if sparsity[r] <= 0.9]  # >= 10 % of the weights left
    assert (accuracy[matching] > dense - 0.005).all(), accuracy.tolist()
    instability = pairs.groupby("imp_round")["barrier_test_error"].mean()
    assert (instability[matching] < 0.02).all(), instability.tolist()  # Frankle's "stable": < 2 points


def test_repair_depth_cell_lands_within_1_5_points_of_the_paper(tmp_path, subprocesses):
    """REPAIR's depth recipe at 6 hidden layers (the notebook's "layers" = 5), 4 seeds = 2 disjoint
    pairs, through the service with the paper's init: the aligned + REPAIR midpoint test accuracy
    lands within 1.5 points of the paper's (its figure data, one pair: 95.87 %). With He init it
    was 92.4 (issue 31), so the margin can fail. About 5 minutes on 2 CPU cores."""
    import json

    import yaml

    from repair_ray.cli import example_text

    config = yaml.safe_load(example_text("repair-mlp-depth-mnist-paper"))
    config["models"][0]["depth"] = [6]
    config |= {
        "seeds": 4,
        "storage": str(tmp_path),
        "resources": {"train": {"cpu": 1, "gpu": 0}, "pair": {"cpu": 1, "gpu": 0}},
    }
    path = tmp_path / "cell.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "repair_ray", "run", str(path), "--num-cpus", "2"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    pairs = load_tables(str(tmp_path / config["name"]))["pairs"]
    repaired = pairs[(pairs["align"] == "activation") & (pairs["correction"] == "repair")]
    assert len(repaired) == 2 and (repaired["status"] == "ok").all()
    published = Path(__file__).resolve().parents[1] / "analysis" / "published" / "repair_mlp_mnist.json"
    paper = json.loads(published.read_text())["depth_sweep"]["rows"]["5"]["permute_correct"][2]  # test acc %
    ours = 100 * repaired["midpoint_test_acc"].mean()
    assert abs(ours - paper) <= 1.5, (ours, paper, repaired["midpoint_test_acc"].tolist())


def test_imp_cell_of_the_lottery_ticket_example_keeps_frankles_claims(tmp_path, subprocesses):
    """imp-lenet-mnist (Frankle et al.'s LeNet-300-100, rewound to initialisation) cut to a CI cell:
    3 rounds of IMP at rate 0.5 (to 12.5 % of the weights) and 8 epochs a network, through the
    command line. Every round stays matching (within half a point of the dense accuracy) and stable
    (its children's error barrier under 2 points), as the whole example shows to 3.5 %. About 80 s
    on 2 CPU cores (measured: dense 98.1 %, rounds 98.0-98.2 %, barriers under 0.04 points)."""
    import yaml

    from repair_ray.cli import example_text

    config = yaml.safe_load(example_text("imp-lenet-mnist"))
    config["imp"] = {"rounds": 3, "rate": 0.5, "rewind_epoch": 0}
    config["train"] |= {"epochs": 8, "checkpoint_every": 8}
    config["storage"] = str(tmp_path)
    path = tmp_path / "cell.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocesses.cli("run", str(path), "--num-cpus", "2", timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tables = load_tables(str(tmp_path / config["name"]))
    models, pairs = tables["models"], tables["pairs"]
    assert (models["status"] == "ok").all() and (pairs["status"] == "ok").all()
    accuracy = models.groupby("imp_round")["test_acc"].mean()
    sparsity = models.groupby("imp_round")["sparsity"].first()
    assert sorted(accuracy.index) == [0, 1, 2, 3] and sparsity[3] == pytest.approx(1 - 0.5**3, abs=1e-3)
    dense = accuracy[0]
    assert dense > 0.975
    assert (accuracy > dense - 0.005).all(), accuracy.tolist()  # matching at every sparsity here
    instability = pairs.groupby("imp_round")["barrier_test_error"].mean()
    assert len(instability) == 4 and (instability < 0.02).all(), instability.tolist()  # stable
