"""The pair analysis does the forward work it needs and no more (FLOPs, not seconds)."""

from __future__ import annotations

import pytest
from torch.utils.flop_counter import FlopCounterMode

from repair_ray import PairSettings, analyse_pair, build_model
from repair_ray.datasets import make_synthetic
from repair_ray.pair import sample_forwards


def test_floor_counts_by_hand():
    s = PairSettings(
        aligns=("none", "activation"), corrections=("none", "reset", "repair"), alphas=(0, 0.5, 1), stat_samples=10
    )
    # endpoints: 2 x (100 + 50) eval + 2 x 10 stats; activation matching 2 x 10;
    # per align: none -> the interior alpha, 1 x 150; a correction -> every alpha, endpoints included,
    # 3 x (150 + 10); reset skipped without BatchNorm
    assert sample_forwards(s, 100, 50, batchnorm=False) == 300 + 20 + 20 + 2 * (150 + 480)
    assert sample_forwards(s, 100, 50, batchnorm=True) == 300 + 20 + 20 + 2 * (150 + 480 + 480)


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [("mlp", {"width": 32, "depth": 3}), ("cifar_resnet", {"width": 0.25, "depth": 8, "norm": "batch"})],
)
def test_analyse_pair_stays_at_the_forward_floor(arch, kwargs):
    data = make_synthetic(shape=(3, 16, 16), num_classes=5, train_size=96, test_size=48)
    a = build_model(arch, in_shape=(3, 16, 16), num_classes=5, **kwargs).eval()
    b = build_model(arch, in_shape=(3, 16, 16), num_classes=5, **kwargs).eval()
    settings = PairSettings(
        aligns=("none", "weight", "activation"),
        corrections=("none", "reset", "repair"),
        alphas=(0, 0.25, 0.5, 0.75, 1),
        train_samples=64,
        stat_samples=32,
        stat_batch_size=32,
    )
    with FlopCounterMode(display=False) as counter:
        analyse_pair(a, b, data, settings)
    with FlopCounterMode(display=False) as one:
        a(data.test.x[:8])
    per_sample = one.get_total_flops() / 8
    floor = sample_forwards(settings, 64, 48, batchnorm=kwargs.get("norm") == "batch") * per_sample
    ratio = counter.get_total_flops() / floor
    assert 0.9 < ratio <= 1.05, ratio  # endpoint statistics ride on the endpoint evaluations
