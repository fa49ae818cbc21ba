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
def test_alignment_then_repair_lower_the_test_loss_barrier(mnist_pair_result, align, mnist):
    pairs, _ = mnist_pair_result
    unaligned = pairs.loc[("none", "none"), "barrier_test_loss"]
    aligned = pairs.loc[(align, "none"), "barrier_test_loss"]
    repaired = pairs.loc[(align, "repair"), "barrier_test_loss"]
    assert unaligned > aligned > repaired > 0
    # and the midpoint network is really more accurate
    assert pairs.loc[(align, "repair"), "midpoint_test_acc"] > pairs.loc[(align, "none"), "midpoint_test_acc"]


def test_repair_removes_the_variance_collapse_that_grows_with_depth(mnist_pair_result, mnist):
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


def test_endpoints_are_shared_by_every_curve(mnist_pair_result, mnist):
    pairs, _ = mnist_pair_result
    assert pairs["endpoint_test_acc_a"].nunique() == 1
    assert pairs["endpoint_test_acc_b"].nunique() == 1


def test_imp_tickets_of_a_lenet_on_mnist_match_the_dense_accuracy_and_stay_stable(tmp_path, mnist):
    """Frankle et al. on real MNIST, small: IMP rewound to initialisation (k = 0) keeps a LeNet-style
    mlp's accuracy at 75 % sparsity, while a random mask of the same sparsity on the same
    initialisation loses more; two children of the sparsest round end linearly connected."""
    from repair_ray.pruning import mask_sparsity
    from repair_ray.training import next_imp_mask

    dataset = load_dataset("mnist")
    config = ModelConfig("mlp", width=(300, 100), depth=2, norm="none")
    train = TrainConfig(epochs=1, batch_size=60, lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant")
    kw = {"init_seed": 0, "branch_epoch": 0}
    dense = train_model(config, train, dataset, seed=0, imp_round=0, checkpoint_uri=str(tmp_path / "r0.pt"), **kw)
    mask_of = next_imp_mask(str(tmp_path / "r0.pt"), 0.5)
    round1 = train_model(
        config, train, dataset, seed=0, imp_round=1, mask=mask_of, checkpoint_uri=str(tmp_path / "r1.pt"), **kw
    )
    mask_of = next_imp_mask(str(tmp_path / "r1.pt"), 0.5)
    children = [
        train_model(config, train, dataset, seed=seed, data_seed=seed, imp_round=2, mask=mask_of, **kw)
        for seed in (0, 1)
    ]
    mask = mask_of(config.build(10, (1, 28, 28)))
    assert mask_sparsity(mask) == pytest.approx(0.75, abs=1e-3)
    # a random mask of the same sparsity (per tensor, as many kept as the ticket keeps there)
    generator = torch.Generator().manual_seed(0)
    random_mask = {}
    for name, keep in mask.items():
        order = torch.randperm(keep.numel(), generator=generator)[: int(keep.sum())]
        random_mask[name] = torch.zeros(keep.numel(), dtype=torch.bool).index_fill_(0, order, True).reshape(keep.shape)
    random = train_model(config, train, dataset, seed=0, imp_round=2, mask=random_mask, **kw)
    accuracy = {
        "dense": dense.metrics["test_acc"],
        "round 1": round1.metrics["test_acc"],
        "ticket": children[0].metrics["test_acc"],
        "random": random.metrics["test_acc"],
    }
    assert accuracy["dense"] > 0.95, accuracy
    assert accuracy["ticket"] > accuracy["dense"] - 0.01, accuracy  # matching at 75 % sparsity
    assert accuracy["ticket"] > accuracy["random"], accuracy
    models = []
    for child in children:
        net = config.build(10, (1, 28, 28))
        net.load_state_dict(child.state_dict)
        models.append(net.eval())
    settings = PairSettings(
        aligns=("none",), corrections=("none",), alphas=[i / 10 for i in range(11)], train_samples=5000
    )
    with torch.no_grad():
        pair = pd.DataFrame(analyse_pair(models[0], models[1], dataset, settings).pairs).iloc[0]
    assert pair["barrier_test_error"] < 0.02, pair["barrier_test_error"]  # stable at initialisation
