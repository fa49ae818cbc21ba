"""BatchNorm folded into the layer before it (the REPAIR paper's depth sweep), and MNIST's translations."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from repair_ray import PairSettings, analyse_pair, build_model, permutation_spec
from repair_ray.datasets import make_synthetic
from repair_ray.errors import SettingError
from repair_ray.models.fold import fold_batchnorm, fold_problem
from repair_ray.training import TrainConfig, augment_batch

from .helpers import briefly_trained

FOLDABLE = [
    ("mlp", {"width": 16, "depth": 3, "norm": "batch"}, (1, 28, 28)),
    ("vgg", {"width": 0.125, "depth": 11, "norm": "batch"}, (3, 32, 32)),
    ("resnet20", {"width": 0.5, "norm": "batch"}, (3, 16, 16)),
]


def _with_statistics(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random running statistics and affines, so folding has something to fold."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen))
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=gen))
            m.bias.data.copy_(torch.randn(n, generator=gen))
    return model.eval()


@pytest.mark.parametrize(("arch", "kwargs", "shape"), FOLDABLE, ids=lambda v: str(v))
def test_the_folded_network_computes_the_same_function_without_batchnorm(arch, kwargs, shape):
    torch.manual_seed(0)
    model = _with_statistics(build_model(arch, **kwargs, in_shape=shape))
    x = torch.randn(16, *shape)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    with torch.no_grad():
        expected, got = model(x), folded(x)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    # the original is untouched, and the fold's spec is derived from its own graph
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    spec = permutation_spec(folded, x[:2])
    assert spec.repair_points and all(not p.endswith("norm") for p in spec.repair_points)


def test_networks_that_cannot_be_folded_say_why():
    assert "no BatchNorm" in fold_problem(build_model("mlp", width=8, depth=2, norm="none"))

    class NormFirst(torch.nn.Module):  # a BatchNorm on the input follows no layer
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(4)
            self.linear = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.linear(self.norm(x))

    assert "'norm'" in fold_problem(NormFirst())
    with pytest.raises(ValueError, match="cannot fold BatchNorm 'norm'"):
        fold_batchnorm(NormFirst())


def test_a_pair_analysed_with_folded_batchnorm_is_the_pair_of_the_folded_networks():
    """``fold_batchnorm`` analyses the plain networks: the rows equal those of the networks folded by
    hand (spec derived from them), REPAIR acts at the linear outputs, and RESET has nothing to reset."""
    data = make_synthetic(shape=(1, 6, 6), num_classes=4, train_size=300, test_size=200)
    a = briefly_trained("mlp", data.train, seed=1, steps=15, width=16, depth=3, norm="batch")
    b = briefly_trained("mlp", data.train, seed=2, steps=15, width=16, depth=3, norm="batch")
    common = {"aligns": ("none", "activation"), "alphas": 5, "train_samples": 300, "stat_samples": 100}
    settings = PairSettings(corrections=("none", "reset", "repair"), fold_batchnorm=True, **common)
    folded = analyse_pair(copy.deepcopy(a), copy.deepcopy(b), data, settings)
    fa, fb = fold_batchnorm(a), fold_batchnorm(b)
    by_hand = analyse_pair(
        fa,
        fb,
        data,
        PairSettings(corrections=("none", "repair"), **common),
        spec=permutation_spec(fa, data.train.x[:2]),
    )
    assert {r["correction"] for r in folded.pairs} == {"none", "repair"}  # no reset of a folded net
    for x, y in zip(folded.pairs, by_hand.pairs, strict=True):
        assert (x["align"], x["correction"]) == (y["align"], y["correction"])
        assert x["barrier_test_loss"] == pytest.approx(y["barrier_test_loss"], rel=1e-5, abs=1e-7)
    assert {r["layer"] for r in folded.layers} == {f"layers.{i}.linear" for i in range(3)}


def test_translate_shifts_every_input_and_never_flips():
    config = TrainConfig(augment="translate")
    assert config.augmentation((1, 28, 28)) == "translate" and config.uses_augmentation((1, 28, 28))
    assert TrainConfig(augment=True).augmentation((1, 28, 28)) == "crop_flip"
    assert TrainConfig().augmentation((1, 28, 28)) is None
    with pytest.raises(SettingError, match="augment"):
        TrainConfig(augment="rotate")
    x = torch.randn(64, 1, 12, 12)
    out = augment_batch(x, torch.Generator().manual_seed(0), flips=False)
    padded = F.pad(x, (4, 4, 4, 4))
    shifted = 0
    for i in range(len(x)):
        crops = [
            (r, c) for r in range(9) for c in range(9) if torch.equal(out[i], padded[i, :, r : r + 12, c : c + 12])
        ]
        assert crops, f"sample {i} is not a translation of its input"
        shifted += crops != [(4, 4)]
    assert shifted > 48  # almost every sample moved
    flipped = augment_batch(x, torch.Generator().manual_seed(0), flips=True)
    assert not torch.equal(flipped, out)  # with flips the same draws give other images
