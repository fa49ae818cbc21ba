"""Interpolation of state dicts and barrier metrics on hand-made curves."""

from __future__ import annotations

import pytest
import torch

from repair_ray import barrier_metrics, build_model, evaluate, interpolate_state
from repair_ray.datasets import TensorData


def test_barrier_of_a_flat_curve_is_zero():
    curve = {"alpha": [0, 0.5, 1], "loss": [0.3, 0.3, 0.3], "acc": [0.9, 0.9, 0.9]}
    m = barrier_metrics(curve)
    assert m["barrier_loss"] == pytest.approx(0.0)
    assert m["barrier_error"] == pytest.approx(0.0)
    assert m["midpoint_acc"] == pytest.approx(0.9)


def test_barrier_is_measured_against_the_line_between_endpoints():
    # endpoints 1.0 and 2.0: the line is 1.25 at 0.25, 1.5 at 0.5, 1.75 at 0.75
    curve = {
        "alpha": [0.0, 0.25, 0.5, 0.75, 1.0],
        "loss": [1.0, 2.0, 2.5, 2.75, 2.0],
        "acc": [0.9, 0.6, 0.5, 0.7, 0.8],
    }
    m = barrier_metrics(curve)
    assert m["barrier_loss"] == pytest.approx(1.0)  # at 0.5 and at 0.75: 2.5-1.5 = 2.75-1.75 = 1.0
    # errors 0.1, 0.4, 0.5, 0.3, 0.2; line 0.1, 0.125, 0.15, 0.175, 0.2 → max 0.35 at alpha 0.5
    assert m["barrier_error"] == pytest.approx(0.35)
    assert m["midpoint_loss"] == pytest.approx(2.5)
    assert m["midpoint_acc"] == pytest.approx(0.5)
    assert m["midpoint_barrier_loss"] == pytest.approx(2.5 - 1.5)
    assert m["midpoint_barrier_error"] == pytest.approx(0.5 - 0.15)
    # Git Re-Basin's barrier: the curve's maximum minus the endpoints' mean
    assert m["max_barrier_loss"] == pytest.approx(2.75 - 1.5)
    assert m["max_barrier_error"] == pytest.approx(0.5 - 0.15)


def test_barrier_is_never_negative_but_can_be_zero_at_the_endpoints():
    # A convex-below curve: every interior point is under the line, so the max is at an endpoint (0).
    curve = {"alpha": [0, 0.5, 1], "loss": [1.0, 0.2, 1.0], "acc": [0.5, 0.9, 0.5]}
    m = barrier_metrics(curve)
    assert m["barrier_loss"] == pytest.approx(0.0)
    assert m["midpoint_barrier_loss"] == pytest.approx(-0.8)  # the midpoint definition keeps the sign


def test_barrier_metrics_need_endpoints_and_midpoint():
    with pytest.raises(ValueError, match="alpha=0.5"):
        barrier_metrics({"alpha": [0, 0.25, 1], "loss": [1, 2, 1], "acc": [1, 1, 1]})
    with pytest.raises(ValueError, match="same length"):
        barrier_metrics({"alpha": [0, 0.5, 1], "loss": [1, 2], "acc": [1, 1, 1]})


def test_interpolate_state_lerps_floats_and_rounds_integer_buffers():
    a = build_model("mlp", width=8, depth=1, norm="batch").state_dict()
    b = build_model("mlp", width=8, depth=1, norm="batch").state_dict()
    a["layers.0.norm.num_batches_tracked"].fill_(10)
    b["layers.0.norm.num_batches_tracked"].fill_(20)
    mid = interpolate_state(a, b, 0.25)
    torch.testing.assert_close(mid["head.weight"], 0.75 * a["head.weight"] + 0.25 * b["head.weight"])
    assert mid["layers.0.norm.num_batches_tracked"].dtype == torch.long
    assert int(mid["layers.0.norm.num_batches_tracked"]) == 12
    assert torch.equal(interpolate_state(a, b, 0.0)["head.weight"], a["head.weight"])
    assert torch.equal(interpolate_state(a, b, 1.0)["head.weight"], b["head.weight"])


def test_interpolate_state_rejects_different_architectures():
    a = build_model("mlp", width=8, depth=1).state_dict()
    b = build_model("mlp", width=8, depth=2).state_dict()
    with pytest.raises(KeyError, match="layers.1"):
        interpolate_state(a, b, 0.5)
    c = build_model("mlp", width=9, depth=1).state_dict()
    with pytest.raises(ValueError, match="shape"):
        interpolate_state(a, c, 0.5)


def test_evaluate_counts_loss_and_accuracy():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(2))
    x = torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 1, 1, 1])  # 3 of 4 correct
    m = evaluate(model, TensorData(x, y), batch_size=3)
    assert m["acc"] == pytest.approx(0.75)
    expected = torch.nn.functional.cross_entropy(x, y).item()
    assert m["loss"] == pytest.approx(expected, rel=1e-6)
