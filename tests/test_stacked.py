"""Several α per pass (one vmapped program) give the rows of the one-α-at-a-time path."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from repair_ray import PairSettings, analyse_pair, evaluate, interpolate_state
from repair_ray.correction import repair, reset_batchnorm, target_moments
from repair_ray.datasets import Dataset, TensorData
from repair_ray.hooks import MomentRecorder, channel_moments
from repair_ray.stacked import AlphaStack, auto_alphas_per_pass, chunks, interpolated_tensors

from .helpers import briefly_trained, prototype_data

NETS = [
    ("mlp", {"width": 24, "depth": 3, "norm": "none"}, (1, 6, 6)),
    ("mlp", {"width": 24, "depth": 2, "norm": "batch"}, (1, 6, 6)),
    ("mlp", {"width": 24, "depth": 2, "norm": "layer"}, (1, 6, 6)),
    ("resnet20", {"width": 1, "norm": "batch"}, (3, 8, 8)),
    ("vgg", {"width": 0.125, "depth": 11, "norm": "batch"}, (3, 32, 32)),
]


def _pair(arch: str, kwargs: dict, shape: tuple[int, ...], n: int = 192) -> tuple:
    train, test = prototype_data(shape, n=n, seed=1), prototype_data(shape, n=n // 2, seed=2)
    data = Dataset("toy", train, test, 10, shape)
    a = briefly_trained(arch, train, seed=1, steps=12, **kwargs)
    b = briefly_trained(arch, train, seed=2, steps=12, **kwargs)
    return a, b, data


def _close(x: float, y: float, what: str, rel: float = 2e-5, abs_: float = 2e-6) -> None:
    if isinstance(x, float) and math.isnan(x):
        assert isinstance(y, float) and math.isnan(y), what
        return
    assert x == pytest.approx(y, rel=rel, abs=abs_), what


@pytest.mark.parametrize("arch,kwargs,shape", NETS, ids=lambda v: v if isinstance(v, str) else None)
def test_several_alphas_per_pass_give_the_rows_of_one_alpha_at_a_time(arch, kwargs, shape):
    a, b, data = _pair(arch, kwargs, shape)
    corrections = ("none", "reset", "repair") if kwargs["norm"] == "batch" else ("none", "repair")
    settings = PairSettings(
        aligns=("none", "activation"),
        corrections=corrections,
        alphas=7,
        train_samples=160,
        stat_samples=64,
        stat_batch_size=32,  # several statistics batches: REPAIR's per-batch renormalisation matters
        eval_batch_size=48,
    )
    one = analyse_pair(a, b, data, settings, alphas_per_pass=1)
    many = analyse_pair(a, b, data, settings, alphas_per_pass=3)  # 3, 3, 1 interior points: uneven chunks too
    assert len(one.curves) == len(many.curves) and len(one.layers) == len(many.layers)
    for x, y in zip(one.curves, many.curves, strict=True):
        what = f"{x['align']}/{x['correction']} {x['split']} α={x['alpha']}"
        assert (x["align"], x["correction"], x["split"], x["alpha"]) == (
            y["align"],
            y["correction"],
            y["split"],
            y["alpha"],
        )
        _close(x["loss"], y["loss"], f"loss {what}")
        assert abs(x["acc"] - y["acc"]) <= 1.0 / 80 + 1e-12, f"acc {what}"  # at most a near-tie flips
    for x, y in zip(one.layers, many.layers, strict=True):
        assert x["layer"] == y["layer"]
        _close(x["std_ratio"], y["std_ratio"], f"std_ratio {x['align']}/{x['correction']} {x['layer']}", rel=1e-4)
    for x, y in zip(one.pairs, many.pairs, strict=True):
        assert (x["alphas_per_pass"], y["alphas_per_pass"]) == (1, 3)
        for key in ("barrier_test_loss", "barrier_train_loss", "midpoint_test_loss", "midpoint_barrier_test_loss"):
            _close(x[key], y[key], f"{key} {x['align']}/{x['correction']}", rel=1e-4, abs_=1e-5)


def _same_rows(one, many, what: str) -> None:
    for x, y in zip(one.curves, many.curves, strict=True):
        where = f"{what}: {x['align']}/{x['correction']} {x['split']} α={x['alpha']}"
        assert (x["align"], x["correction"], x["split"], x["alpha"]) == (
            y["align"],
            y["correction"],
            y["split"],
            y["alpha"],
        )
        _close(x["loss"], y["loss"], f"loss {where}")
        assert abs(x["acc"] - y["acc"]) <= 1.0 / 40 + 1e-12, f"acc {where}"


@pytest.mark.parametrize("arch,kwargs,shape", [NETS[1], NETS[3]], ids=["mlp-bn", "resnet20"])
def test_flip_tta_on_a_test_subset_gives_the_same_rows_on_both_paths(arch, kwargs, shape):
    a, b, data = _pair(arch, kwargs, shape)
    settings = PairSettings(
        aligns=("none", "activation"),
        corrections=("none", "reset", "repair"),
        alphas=5,
        train_samples=128,
        stat_samples=64,
        stat_batch_size=32,
        eval_batch_size=24,
        test_samples=40,
        test_flip=True,
    )
    one = analyse_pair(a, b, data, settings, alphas_per_pass=1)
    many = analyse_pair(a, b, data, settings, alphas_per_pass=3)
    _same_rows(one, many, "flip")
    plain = analyse_pair(a, b, data, PairSettings(**{**_fields(settings), "test_flip": False}), alphas_per_pass=3)
    flipped_test = [r["loss"] for r in many.curves if r["split"] == "test"]
    assert flipped_test != pytest.approx([r["loss"] for r in plain.curves if r["split"] == "test"], rel=1e-4)
    # the train split is never flipped
    assert [r["loss"] for r in many.curves if r["split"] == "train"] == [
        r["loss"] for r in plain.curves if r["split"] == "train"
    ]


def _fields(settings: PairSettings) -> dict:
    from dataclasses import asdict

    return asdict(settings)


@pytest.mark.parametrize("per_pass", [1, 3])
def test_flip_tta_changes_nothing_on_mirror_symmetric_inputs(per_pass):
    a, b, data = _pair("mlp", {"width": 24, "depth": 2, "norm": "batch"}, (1, 6, 6))
    symmetric = TensorData((data.test.x + data.test.x.flip(-1)) / 2, data.test.y)
    data = Dataset("toy", data.train, symmetric, 10, (1, 6, 6))
    settings = {"aligns": ("none", "weight"), "corrections": ("none", "repair"), "alphas": 5}
    sizes = {"train_samples": 96, "stat_samples": 48, "eval_batch_size": 32}
    flipped = analyse_pair(a, b, data, PairSettings(**settings, **sizes, test_flip=True), alphas_per_pass=per_pass)
    plain = analyse_pair(a, b, data, PairSettings(**settings, **sizes), alphas_per_pass=per_pass)
    for x, y in zip(flipped.curves, plain.curves, strict=True):
        assert (x["loss"], x["acc"]) == (y["loss"], y["acc"]), x  # (l + l) / 2 is l exactly


@pytest.mark.parametrize("per_pass", [1, 3])
def test_test_samples_evaluates_the_test_curve_on_exactly_that_subset(per_pass):
    a, b, data = _pair("mlp", {"width": 24, "depth": 2, "norm": "batch"}, (1, 6, 6))
    settings = PairSettings(
        aligns=("none",),
        corrections=("none",),
        alphas=3,
        train_samples=96,
        stat_samples=48,
        test_samples=37,
        subset_seed=5,
    )
    result = analyse_pair(a, b, data, settings, alphas_per_pass=per_pass)
    subset = data.test.subset(37, seed=5)
    for model, suffix, alpha in ((a, "a", 0.0), (b, "b", 1.0)):
        expected = evaluate(model, subset, batch_size=settings.eval_batch_size)
        assert result.pairs[0][f"endpoint_test_acc_{suffix}"] == expected["acc"]
        assert result.pairs[0][f"endpoint_test_loss_{suffix}"] == expected["loss"]
        (row,) = [r for r in result.curves if r["split"] == "test" and r["alpha"] == alpha]
        assert (row["loss"], row["acc"]) == (expected["loss"], expected["acc"])
    assert expected != evaluate(b, data.test, batch_size=settings.eval_batch_size)  # the subset mattered
    flip = PairSettings(**{**_fields(settings), "test_flip": True})
    flipped = analyse_pair(a, b, data, flip, alphas_per_pass=per_pass)
    assert flipped.pairs[0]["endpoint_test_loss_a"] == evaluate(a, subset, batch_size=1000, flip=True)["loss"]


def test_evaluate_averages_the_logits_of_each_input_and_its_mirror():
    a, _, data = _pair("resnet20", {"width": 1, "norm": "batch"}, (3, 8, 8), n=64)
    flipped = evaluate(a, data.test, batch_size=10, flip=True)
    with torch.no_grad():
        logits = (a(data.test.x) + a(data.test.x.flip(-1))) / 2
    expected = torch.nn.functional.cross_entropy(logits, data.test.y).item()
    assert flipped["loss"] == pytest.approx(expected, rel=1e-5)
    assert flipped["acc"] == (logits.argmax(1) == data.test.y).float().mean().item()
    assert flipped["loss"] != pytest.approx(evaluate(a, data.test)["loss"], rel=1e-4)
    with pytest.raises(ValueError, match="flip"):
        evaluate(a, data.test, flip=True, record=MomentRecorder(["fc"], 8))


def test_a_stack_repairs_each_network_to_its_own_target():
    """REPAIR in a stack: every network's corrected points reach the target of its own α, as REPAIR alone does."""
    a, b, data = _pair("mlp", {"width": 24, "depth": 3, "norm": "none"}, (1, 6, 6))
    spec = a.permutation_spec()
    stat = data.train.head(96)
    points = spec.repair_points
    moments_a = channel_moments(a, stat, points)
    moments_b = channel_moments(b, stat, points)
    state_a, state_b = a.state_dict(), b.state_dict()
    alphas = [0.25, 0.5, 0.75]
    stack = AlphaStack(a, interpolated_tensors(a, state_a, state_b, alphas))
    targets = [target_moments(moments_a, moments_b, alpha) for alpha in alphas]
    stack.correct(stat, reset=False, targets={p: [t[p] for t in targets] for p in points}, batch_size=96)
    for k, alpha in enumerate(alphas):
        net = copy.deepcopy(a)
        net.load_state_dict({name: tensor[k] for name, tensor in stack.tensors.items()})
        after = channel_moments(net, stat, points)
        for p in points:
            torch.testing.assert_close(after[p].std, targets[k][p].std, rtol=1e-3, atol=1e-4)
            torch.testing.assert_close(after[p].mean, targets[k][p].mean, rtol=1e-3, atol=1e-4)
        # ... and equals REPAIR of that one network
        alone = copy.deepcopy(a)
        alone.load_state_dict(interpolate_state(state_a, state_b, alpha))
        repair(alone, moments_a, moments_b, stat, alpha=alpha, spec=spec, batch_size=96)
        torch.testing.assert_close(net.state_dict(), alone.state_dict(), rtol=1e-5, atol=1e-6)


def test_a_stack_resets_each_network_as_reset_alone_does():
    a, b, data = _pair("resnet20", {"width": 1, "norm": "batch"}, (3, 8, 8))
    stat = data.train.head(64)
    alphas = [0.0, 0.3, 1.0]
    stack = AlphaStack(a, interpolated_tensors(a, a.state_dict(), b.state_dict(), alphas))
    stack.correct(stat, reset=True, targets=None, batch_size=32)
    metrics, _ = stack.evaluate(data.test, batch_size=40)
    for k, alpha in enumerate(alphas):
        alone = copy.deepcopy(a)
        alone.load_state_dict(interpolate_state(a.state_dict(), b.state_dict(), alpha))
        reset_batchnorm(alone, stat, batch_size=32)
        expected = evaluate(alone, data.test, batch_size=40)
        assert metrics[k]["loss"] == pytest.approx(expected["loss"], rel=1e-5)
        assert metrics[k]["acc"] == pytest.approx(expected["acc"], abs=1.0 / len(data.test))
        running = stack.tensors["stem.norm.running_var"][k]
        torch.testing.assert_close(running, alone.stem.norm.running_var, rtol=1e-5, atol=1e-7)


def test_interpolated_tensors_are_each_alphas_lerp_bit_for_bit():
    """One lerp with a tensor of weights gives each α's own lerp (the one-α path's numbers before)."""
    a, b, _ = _pair("mlp", {"width": 8, "depth": 2, "norm": "batch"}, (1, 4, 4), n=64)
    b.layers[0].norm.num_batches_tracked.fill_(7)  # an integer buffer that differs between A and B
    alphas = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
    stacked = interpolated_tensors(a, a.state_dict(), b.state_dict(), alphas)
    for k, alpha in enumerate(alphas):
        single = interpolate_state(a.state_dict(), b.state_dict(), alpha)
        for name, ta in a.state_dict().items():
            tb = b.state_dict()[name]
            if ta.is_floating_point():
                expected = torch.lerp(ta, tb, alpha)
            else:
                expected = torch.round((1 - alpha) * ta.double() + alpha * tb.double()).to(ta.dtype)
            assert torch.equal(stacked[name][k], expected), (name, alpha)
            assert torch.equal(single[name], expected), (name, alpha)


def test_chunks_are_even_and_keep_order():
    assert [len(c) for c in chunks(list(range(21)), 8)] == [7, 7, 7]
    assert [len(c) for c in chunks(list(range(19)), 19)] == [19]
    assert chunks([0.1, 0.2, 0.3], 1) == [[0.1], [0.2], [0.3]]
    assert sum(chunks(list(range(10)), 4), []) == list(range(10))
    assert chunks([], 4) == []


def test_alphas_per_pass_is_one_on_the_cpu_and_checked():
    a, b, data = _pair("mlp", {"width": 8, "depth": 2, "norm": "none"}, (1, 4, 4), n=64)
    assert auto_alphas_per_pass(a, data.train.x, batch_size=32, points=21) == 1
    settings = PairSettings(aligns=("none",), corrections=("none",), alphas=3, train_samples=64, stat_samples=32)
    assert analyse_pair(a, b, data, settings).pairs[0]["alphas_per_pass"] == 1
    with pytest.raises(ValueError, match="alphas_per_pass"):
        analyse_pair(a, b, data, settings, alphas_per_pass=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("arch,kwargs,shape", [NETS[0], NETS[3]], ids=["mlp", "resnet20"])
def test_several_alphas_per_pass_on_cuda_give_the_rows_of_the_cpu(arch, kwargs, shape):
    a, b, data = _pair(arch, kwargs, shape)
    corrections = ("none", "reset", "repair") if kwargs["norm"] == "batch" else ("none", "repair")
    settings = PairSettings(
        aligns=("none", "activation"), corrections=corrections, alphas=7, train_samples=160, stat_samples=64
    )
    cpu = analyse_pair(a, b, data, settings, alphas_per_pass=1)
    gpu = copy.deepcopy(a).cuda(), copy.deepcopy(b).cuda()
    many = analyse_pair(*gpu, data.to("cuda"), settings, alphas_per_pass=7)
    assert many.pairs[0]["alphas_per_pass"] == 7
    for x, y in zip(cpu.curves, many.curves, strict=True):
        what = f"{x['align']}/{x['correction']} {x['split']} α={x['alpha']}"
        _close(x["loss"], y["loss"], f"loss {what}", rel=1e-4, abs_=1e-5)
        assert abs(x["acc"] - y["acc"]) <= 1.0 / 80 + 1e-12, f"acc {what}"
    for x, y in zip(cpu.layers, many.layers, strict=True):
        _close(x["std_ratio"], y["std_ratio"], f"std_ratio {x['layer']}", rel=1e-3, abs_=1e-4)


def test_the_analysis_sets_its_own_float_precision_and_restores_the_process_s():
    from repair_ray.pair import float_precision

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True  # as a worker that trained a network leaves it
        with float_precision("fp32"):
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32
        with float_precision("tf32"):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with pytest.raises(Exception, match="precision"):
            PairSettings(precision="fp16")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
