"""The paper's behaviour on real MNIST: alignment lowers the barrier, REPAIR lowers it further and
removes the variance collapse that grows with depth.

CI always has MNIST at ../shared/data: these tests FAIL (never skip) when it is missing.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from repair_ray import PairSettings, analyse_pair, load_dataset
from repair_ray.models import ModelConfig
from repair_ray.training import TrainConfig, train_model


@pytest.fixture(scope="module")
def mnist_pair_result():
    dataset = load_dataset("mnist")
    config = ModelConfig("mlp", width=128, depth=4, norm="none")
    train = TrainConfig(epochs=2, batch_size=256, lr=0.05, momentum=0.9, weight_decay=5e-4)
    models = []
    for seed in (0, 1):
        result = train_model(config, train, dataset, seed=seed)
        assert result.status == "ok"
        assert result.metrics["test_acc"] > 0.95
        model = config.build(dataset.num_classes, dataset.in_shape)
        model.load_state_dict(result.state_dict)
        models.append(model.eval())
    settings = PairSettings(
        aligns=("none", "weight", "activation"),
        corrections=("none", "repair"),
        alphas=[i / 10 for i in range(11)],
        train_samples=5000,
        stat_samples=2000,
    )
    with torch.no_grad():
        result = analyse_pair(models[0], models[1], dataset, settings)
    return pd.DataFrame(result.pairs).set_index(["align", "correction"]), pd.DataFrame(result.layers)


@pytest.mark.parametrize("align", ["weight", "activation"])
def test_alignment_then_repair_lower_the_test_loss_barrier(mnist_pair_result, align):
    pairs, _ = mnist_pair_result
    unaligned = pairs.loc[("none", "none"), "barrier_test_loss"]
    aligned = pairs.loc[(align, "none"), "barrier_test_loss"]
    repaired = pairs.loc[(align, "repair"), "barrier_test_loss"]
    assert unaligned > aligned > repaired > 0
    # and the midpoint network is really more accurate
    assert pairs.loc[(align, "repair"), "midpoint_test_acc"] > pairs.loc[(align, "none"), "midpoint_test_acc"]


def test_repair_removes_the_variance_collapse_that_grows_with_depth(mnist_pair_result):
    _, layers = mnist_pair_result
    for align in ("weight", "activation"):
        of_align = layers[layers["align"] == align]
        aligned = of_align[of_align["correction"] == "none"].sort_values("layer_index")
        repaired = of_align[of_align["correction"] == "repair"].sort_values("layer_index")
        assert len(aligned) == len(repaired) == 4
        ratios = aligned["std_ratio"].to_numpy()
        assert (ratios[1:] < ratios[:-1]).all(), ratios  # collapse compounds layer after layer
        assert ratios[-1] < 0.8
        assert repaired["std_ratio"].between(0.9, 1.1).all(), repaired["std_ratio"].tolist()


def test_endpoints_are_shared_by_every_curve(mnist_pair_result):
    pairs, _ = mnist_pair_result
    assert pairs["endpoint_test_acc_a"].nunique() == 1
    assert pairs["endpoint_test_acc_b"].nunique() == 1
