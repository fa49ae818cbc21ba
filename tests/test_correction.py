"""REPAIR and RESET set the interpolated network's statistics to their targets, exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from repair_ray import build_model, interpolate_state, permutation_spec, repair, reset_batchnorm
from repair_ray.correction import batchnorms, correction_plan, repair_moments, target_moments
from repair_ray.hooks import ChannelMoments, channel_moments, output_hooks

from .helpers import briefly_trained, prototype_data

NETS = [
    ("mlp", {"width": 32, "depth": 4, "norm": "none"}, (1, 28, 28)),
    ("mlp", {"width": 32, "depth": 4, "norm": "batch"}, (1, 28, 28)),
    ("mlp", {"width": 32, "depth": 4, "norm": "layer"}, (1, 28, 28)),
    ("vgg", {"width": 0.125, "depth": 11, "norm": "none"}, (3, 16, 16)),
    ("vgg", {"width": 0.125, "depth": 11, "norm": "layer"}, (3, 16, 16)),
    ("resnet20", {"width": 0.5, "norm": "batch"}, (3, 16, 16)),
    ("resnet20", {"width": 0.5, "norm": "layer"}, (3, 16, 16)),
]


def endpoints_and_midpoint(arch, kwargs, shape, alpha=0.4):
    data = prototype_data(shape, n=400)
    a = briefly_trained(arch, data, seed=1, steps=10, **kwargs)
    b = briefly_trained(arch, data, seed=2, steps=10, **kwargs)
    mid = copy.deepcopy(a)
    mid.load_state_dict(interpolate_state(a.state_dict(), b.state_dict(), alpha))
    return a, b, mid, data


def relative_errors(measured, target):
    """Worst relative error of per-channel means (in units of the target std) and stds, over points."""
    worst = 0.0
    for p, tgt in target.items():
        scale = tgt.std.mean()
        alive = tgt.std > 1e-3 * scale
        mean_err = ((measured[p].mean - tgt.mean).abs() / scale).max()
        std_err = ((measured[p].std - tgt.std).abs()[alive] / tgt.std[alive]).max()
        worst = max(worst, float(mean_err), float(std_err))
    return worst


@pytest.mark.parametrize(("arch", "kwargs", "shape"), NETS, ids=lambda v: str(v))
def test_repaired_statistics_equal_the_targets(arch, kwargs, shape):
    """Every point a correction renormalises ends with the target statistics: all REPAIR points
    for ``repair`` on nets without BatchNorm and for ``repair_bn``; the block outputs for the
    paper's ``repair`` of BatchNorm nets."""
    alpha = 0.4
    a, b, mid, data = endpoints_and_midpoint(arch, kwargs, shape, alpha)
    spec = permutation_spec(a)
    batchnorm = kwargs["norm"] == "batch"
    for correction in ("repair", "repair_bn") if batchnorm else ("repair",):
        plan = correction_plan(correction, spec, batchnorm=batchnorm)
        if not plan.renormalised:
            continue
        target = target_moments(repair_moments(a, data, spec), repair_moments(b, data, spec), alpha)
        target = {p: target[p] for p in plan.renormalised}
        net = copy.deepcopy(mid)
        before = relative_errors(channel_moments(net, data, list(target), axes=spec.channel_axes), target)
        repair(net, a, b, data, alpha=alpha, spec=spec, batch_size=len(data), correction=correction)
        after = relative_errors(channel_moments(net, data, list(target), axes=spec.channel_axes), target)
        assert after < 1e-2, (correction, after)
        assert before > 5 * after, correction  # the interpolation really was off before


def test_the_papers_repair_of_a_batchnorm_resnet_is_reset_plus_block_outputs():
    """REPAIR's ResNet procedure (Merge-ResNet50-ImageNet.ipynb): every BatchNorm's statistics
    recomputed (RESET), every residual block's output renormalised to the interpolated endpoints'
    statistics, the BatchNorm outputs left as RESET makes them and the classifier's input not
    touched; ``repair_bn`` renormalises the BatchNorm outputs and the classifier's input too."""
    alpha = 0.5
    a, b, mid, data = endpoints_and_midpoint("resnet20", {"width": 0.5, "norm": "batch"}, (3, 16, 16), alpha)
    spec = permutation_spec(a)
    plan = correction_plan("repair", spec, batchnorm=True)
    blocks = [p for p in spec.carried_points if p != spec.classifier_input]
    assert plan.reset and plan.points == () and list(plan.carried) == blocks and len(blocks) == 9
    target = target_moments(repair_moments(a, data, spec), repair_moments(b, data, spec), alpha)

    reset = reset_batchnorm(copy.deepcopy(mid), data, batch_size=len(data))
    paper = repair(copy.deepcopy(mid), a, b, data, alpha=alpha, spec=spec, batch_size=len(data))
    ours = repair(copy.deepcopy(mid), a, b, data, alpha=alpha, spec=spec, batch_size=len(data), correction="repair_bn")
    points = list(spec.corrected_points)
    measured = {name: channel_moments(net, data, points, axes=spec.channel_axes) for name, net in
                (("reset", reset), ("paper", paper), ("ours", ours))}  # fmt: skip
    # the first BatchNorm sees the same input in all three: RESET's output statistics (β, |γ|) there
    first = spec.repair_points[0]
    assert torch.allclose(measured["paper"][first].std, measured["reset"][first].std, rtol=1e-3, atol=1e-5)
    assert relative_errors({first: measured["ours"][first]}, {first: target[first]}) < 1e-2
    assert relative_errors({first: measured["paper"][first]}, {first: target[first]}) > 0.05
    # block outputs at the target for both; the classifier's input only for repair_bn
    assert relative_errors({p: measured["paper"][p] for p in blocks}, {p: target[p] for p in blocks}) < 1e-2
    head = spec.classifier_input
    assert relative_errors({head: measured["ours"][head]}, {head: target[head]}) < 1e-2
    assert relative_errors({head: measured["paper"][head]}, {head: target[head]}) > 1e-2


def test_repair_with_minibatches_is_close():
    a, b, mid, data = endpoints_and_midpoint("resnet20", {"width": 0.5, "norm": "batch"}, (3, 16, 16))
    spec = permutation_spec(a)
    target = target_moments(repair_moments(a, data, spec), repair_moments(b, data, spec), 0.4)
    repair(mid, a, b, data, alpha=0.4, spec=spec, batch_size=100, correction="repair_bn")
    assert relative_errors(channel_moments(mid, data, spec.corrected_points, axes=spec.channel_axes), target) < 5e-2


FOLDED = [(*NETS[0], "repair"), (*NETS[1], "repair"), (*NETS[1], "repair_bn"), (*NETS[5], "repair")]
FOLDED.append((*NETS[5], "repair_bn"))


@pytest.mark.parametrize(("arch", "kwargs", "shape", "correction"), FOLDED, ids=lambda v: str(v))
def test_folded_model_computes_what_the_unfolded_correction_computes(arch, kwargs, shape, correction):
    """The folded weights (and the carried affines) reproduce the corrections applied as explicit
    affine layers at the points the correction renormalises (a hand-written REPAIR: RESET, then
    each point's affine computed layer by layer on the whole data)."""
    alpha = 0.4
    a, b, mid, data = endpoints_and_midpoint(arch, kwargs, shape, alpha)
    spec = permutation_spec(a)
    points = correction_plan(correction, spec, batchnorm=kwargs["norm"] == "batch").renormalised
    target = target_moments(repair_moments(a, data, spec), repair_moments(b, data, spec), alpha)
    folded = copy.deepcopy(mid)
    repair(folded, a, b, data, alpha=alpha, spec=spec, batch_size=len(data), correction=correction)

    # Unfolded: the same interpolated net (BN reset the same way), with each point's output
    # renormalised by an explicit affine computed layer by layer on the whole data.
    unfolded = copy.deepcopy(mid)
    if batchnorms(unfolded):
        reset_batchnorm(unfolded, data, batch_size=len(data))
    affines: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    forward_order: list[str] = []  # the carried points interleave with the REPAIR points
    with torch.no_grad(), output_hooks(unfolded, points, lambda name, _y: forward_order.append(name)):
        unfolded(data.x[:2])
    for point in forward_order:
        raw = ChannelMoments()

        def apply(name, y, raw=raw, point=point):
            if name == point:
                raw.update(y)
            if name in affines:
                s, t = affines[name]
                return y * s.view(1, -1, *([1] * (y.dim() - 2))) + t.view(1, -1, *([1] * (y.dim() - 2)))
            return None

        with output_hooks(unfolded, points, apply):
            if batchnorms(unfolded):  # the BatchNorms see the corrected earlier points, as in one pass
                reset_batchnorm(unfolded, data, batch_size=len(data))
                raw.__init__()
            unfolded(data.x)
        scale = (target[point].std / raw.std).float()
        affines[point] = (scale, (target[point].mean - scale.double() * raw.mean).float())

    def apply_all(name, y):
        s, t = affines[name]
        return y * s.view(1, -1, *([1] * (y.dim() - 2))) + t.view(1, -1, *([1] * (y.dim() - 2)))

    x = data.x[:64]
    with torch.no_grad(), output_hooks(unfolded, points, apply_all):
        if batchnorms(unfolded):
            reset_batchnorm(unfolded, data, batch_size=len(data))
        expected = unfolded.eval()(x)
    with torch.no_grad():
        got = folded.eval()(x)
    assert (got - expected).abs().max() < 1e-3 * expected.abs().max()
    # the folded model is a plain model of the same architecture
    assert set(folded.state_dict()) == set(a.state_dict())


def test_reset_gives_exact_running_statistics():
    a, b, mid, data = endpoints_and_midpoint("resnet20", {"width": 0.5, "norm": "batch"}, (3, 16, 16))
    reset_batchnorm(mid, data, batch_size=len(data))
    bns = batchnorms(mid)
    # The exact statistics of every BatchNorm's input in the reset network, measured in eval mode.
    inputs = {id(m): ChannelMoments() for m in bns}
    handles = [m.register_forward_pre_hook(lambda m, i: inputs[id(m)].update(i[0])) for m in bns]
    with torch.no_grad():
        mid.eval()(data.x)
    for h in handles:
        h.remove()
    for m in bns:
        exact = inputs[id(m)]
        torch.testing.assert_close(m.running_mean.double(), exact.mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m.running_var.double(), exact.var, rtol=1e-4, atol=1e-5)


def test_reset_is_a_cumulative_average_not_a_momentum_estimate():
    """Over several batches the running mean is the mean over all samples, whatever the momentum."""
    model = build_model("mlp", width=16, depth=1, norm="batch")
    data = prototype_data((1, 28, 28), n=300)
    reset_batchnorm(model, data, batch_size=64)
    with torch.no_grad():
        pre = model.layers[0].linear(model.flatten(data.x))
    torch.testing.assert_close(model.layers[0].norm.running_mean, pre.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.layers[0].norm.running_var, pre.var(0, unbiased=False), rtol=1e-4, atol=1e-5)


def test_reset_refuses_nets_without_batchnorm():
    with pytest.raises(ValueError, match="BatchNorm"):
        reset_batchnorm(build_model("mlp", width=8, depth=1), prototype_data((1, 28, 28), n=16))


def test_repair_leaves_dead_units_finite():
    data = prototype_data((1, 28, 28), n=200)
    a = build_model("mlp", width=16, depth=2)
    b = build_model("mlp", width=16, depth=2)
    with torch.no_grad():
        for m in (a, b):
            m.layers[0].linear.bias[:4] = -1e4  # dead after ReLU: constant pre-activation
            m.layers[0].linear.weight[:4] = 0.0
    spec = permutation_spec(a)
    mid = copy.deepcopy(a)
    mid.load_state_dict(interpolate_state(a.state_dict(), b.state_dict(), 0.5))
    repair(mid, a, b, data, alpha=0.5, spec=spec, batch_size=len(data))
    assert all(torch.isfinite(t).all() for t in mid.state_dict().values())
    assert torch.isfinite(mid(data.x)).all()


def test_repair_points_are_never_the_classifier():
    for arch, kwargs, shape in NETS:
        spec = permutation_spec(build_model(arch, in_shape=shape, **kwargs))
        assert "head" not in spec.repair_points
        assert len(spec.repair_points) == len(set(spec.repair_points)) > 0


def test_repair_gain_on_a_near_dead_channel_is_capped_as_batchnorm_does():
    """A channel with almost no variance is not amplified without bound: gain <= target std / sqrt(EPS)."""
    from repair_ray.correction import EPS
    from repair_ray.hooks import Moments

    torch.manual_seed(0)
    model = build_model("mlp", width=8, depth=1, norm="none", in_shape=(1, 4, 4)).eval()
    with torch.no_grad():
        model.layers[0].linear.weight[0].mul_(1e-7)  # unit 0: raw std ~1e-7 of its inputs
    data = prototype_data((1, 4, 4), n=200)
    spec = permutation_spec(model)
    (point,) = spec.repair_points
    targets = {point: Moments(torch.zeros(8, dtype=torch.float64), torch.ones(8, dtype=torch.float64))}
    before = model.layers[0].linear.weight.detach().clone()
    repair(model, targets, targets, data, alpha=0.5, spec=spec, batch_size=len(data))
    gain = model.layers[0].linear.weight.detach()[:, 0] / before[:, 0]
    assert gain[0] <= 1.0 / EPS**0.5 * (1 + 1e-6)
    assert gain[0] > 100  # still rescaled towards the target, only capped
    # a live channel reaches its target std (the cap is negligible for it)
    after = channel_moments(model, data, spec.repair_points)[point]
    assert float(after.std[1]) == pytest.approx(1.0, rel=1e-3)


def test_corrected_curves_are_corrected_at_the_endpoints_too():
    """RESET changes a trained BatchNorm net: the reset curve starts at RESET(A), not at A."""
    from repair_ray import PairSettings, analyse_pair, evaluate
    from repair_ray.datasets import make_synthetic

    data = make_synthetic(shape=(1, 6, 6), num_classes=4, train_size=300, test_size=200)
    a = briefly_trained("mlp", data.train, seed=1, steps=15, width=16, depth=2, norm="batch")
    b = briefly_trained("mlp", data.train, seed=2, steps=15, width=16, depth=2, norm="batch")
    settings = PairSettings(
        aligns=("none",), corrections=("none", "reset"), alphas=3, train_samples=300, stat_samples=100
    )
    result = analyse_pair(a, b, data, settings)
    curve = {(r["correction"], r["split"], r["alpha"]): r for r in result.curves}
    raw, reset_a = evaluate(a, data.test), evaluate(reset_batchnorm(copy.deepcopy(a), data.train.head(100)), data.test)
    assert curve[("none", "test", 0.0)]["loss"] == raw["loss"]
    assert curve[("reset", "test", 0.0)]["loss"] == pytest.approx(reset_a["loss"], rel=1e-6)
    assert reset_a["loss"] != pytest.approx(raw["loss"], rel=1e-6)  # RESET did move the endpoint
    row = next(r for r in result.pairs if r["correction"] == "reset")
    assert row["endpoint_test_loss_a"] == raw["loss"]  # the endpoint columns are the trained networks
