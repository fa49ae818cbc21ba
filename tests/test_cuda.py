"""The CPU and CUDA agree: pairs, training (fp32, bf16), seeds trained together, and a Ray sweep on a GPU.

Marked ``cuda`` and skipped where no GPU is present (CI); ``benchmarks/gpu_device.sh`` runs them on a
lent GPU machine. CUDA training uses TF32 (``use_fast_cuda_kernels``), so training comparisons are
up to that rounding; a pair's analysis holds fp32 (``eval.precision``), so its rows agree tightly.
"""

from __future__ import annotations

import copy

import pytest
import torch

from repair_ray import PairSettings, analyse_pair
from repair_ray.datasets import Dataset, make_synthetic
from repair_ray.models import ModelConfig
from repair_ray.multiseed import train_together
from repair_ray.permutation import weight_matching
from repair_ray.training import TrainConfig, Trainer

from .helpers import briefly_trained, prototype_data, tiny_sweep

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _rows_agree(cpu, gpu, n_samples: int, note: str = "") -> None:
    for table in ("curves", "layers", "pairs"):
        assert len(getattr(cpu, table)) == len(getattr(gpu, table)), table
    for x, y in zip(cpu.curves, gpu.curves, strict=True):
        what = f"{x['align']}/{x['correction']} {x['split']} α={x['alpha']}{note}"
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4, abs=1e-5), what
        assert abs(y["acc"] - x["acc"]) <= 1.0 / n_samples + 1e-12, what
    for x, y in zip(cpu.layers, gpu.layers, strict=True):
        what = f"{x['align']}/{x['correction']} {x['layer']}{note}"
        assert y["std_ratio"] == pytest.approx(x["std_ratio"], rel=1e-3, abs=1e-4), what
    # a barrier is a difference of losses along the curve: up to a few times the curves' rounding
    scale = max(1.0, *(abs(row["loss"]) for row in cpu.curves))
    for x, y in zip(cpu.pairs, gpu.pairs, strict=True):
        assert (y["align"], y["correction"]) == (x["align"], x["correction"])
        for key, value in x.items():
            if key.endswith("_seconds") or key == "alphas_per_pass" or not isinstance(value, float):
                continue
            what = f"pairs.{key} of {x['align']}/{x['correction']}{note}"
            if "acc" in key or "error" in key:  # a barrier's error: accuracies at two or three alphas
                assert abs(y[key] - value) <= 3.0 / n_samples + 1e-12, what
            else:
                assert y[key] == pytest.approx(value, rel=1e-4, abs=3e-4 * scale), what


def _permutations_differ(a, b) -> str:
    """Names the axes whose weight-matching permutation differs on CUDA (a GPU may break ties otherwise)."""
    spec = a.permutation_spec()
    cpu = weight_matching(spec, a, b)
    gpu = weight_matching(spec, copy.deepcopy(a).cuda(), copy.deepcopy(b).cuda())
    differ = [axis for axis, p in cpu.items() if not torch.equal(p, gpu[axis].cpu())]
    return f" (weight matching permuted {differ} otherwise on CUDA)" if differ else ""


@pytest.mark.parametrize(
    "arch,kwargs,shape",
    [
        ("mlp", {"width": 32, "depth": 3, "norm": "none"}, (1, 8, 8)),
        ("resnet20", {"width": 1, "norm": "batch"}, (3, 8, 8)),
    ],
    ids=["mlp", "resnet20-bn"],
)
def test_a_pair_analysed_on_cuda_gives_the_cpu_rows(arch, kwargs, shape):
    train, test = prototype_data(shape, n=256, seed=1), prototype_data(shape, n=128, seed=2)
    data = Dataset("toy", train, test, 10, shape)
    a = briefly_trained(arch, train, seed=1, steps=30, **kwargs)
    b = briefly_trained(arch, train, seed=2, steps=30, **kwargs)
    corrections = ("none", "reset", "repair") if kwargs["norm"] == "batch" else ("none", "repair")
    settings = PairSettings(
        aligns=("none", "weight", "activation"), corrections=corrections, alphas=5, train_samples=256, stat_samples=128
    )
    cpu = analyse_pair(a, b, data, settings, alphas_per_pass=1)
    gpu = analyse_pair(copy.deepcopy(a).cuda(), copy.deepcopy(b).cuda(), data.to("cuda"), settings)
    assert gpu.pairs[0]["alphas_per_pass"] >= 1
    _rows_agree(cpu, gpu, len(test), _permutations_differ(a, b))


def _data(device: str) -> Dataset:
    return make_synthetic(shape=(1, 12, 12), num_classes=10, train_size=1024, test_size=512, seed=3).to(device)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_on_cuda_reaches_the_network_it_reaches_on_the_cpu(precision):
    model = ModelConfig("mlp", 64, 2, "none", {})
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05, precision=precision)
    results = {device: Trainer(model, config, _data(device), seed=0, device=device).run() for device in ("cpu", "cuda")}
    cpu, gpu = results["cpu"], results["cuda"]
    assert cpu.status == gpu.status == "ok"
    assert gpu.metrics["test_acc"] == pytest.approx(cpu.metrics["test_acc"], abs=0.03)
    assert gpu.metrics["test_loss"] == pytest.approx(cpu.metrics["test_loss"], rel=0.1)
    # the same run up to rounding, not another network: CUDA trains with TF32 (measured on an H200:
    # weights 3.5 % apart at most after 2 epochs, relative to each tensor's largest weight)
    assert _weight_gap(gpu.state_dict, cpu.state_dict) < 0.1


def test_seeds_trained_together_on_cuda_are_the_seeds_trained_alone():
    model = ModelConfig("mlp", 64, 2, "none", {})
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05)
    data = _data("cuda")
    alone = [Trainer(model, config, data, seed=s, device="cuda").run() for s in range(3)]
    together = train_together([Trainer(model, config, data, seed=s, device="cuda") for s in range(3)])
    for lone, stacked in zip(alone, together, strict=True):
        # TF32 products summed in another order (batched vs one at a time): on an H200, 1 % of the
        # weights differed by more than 2e-4 after one epoch, the largest by 1.5e-3 (2.7 % of a
        # tensor's largest weight in another run)
        assert _weight_gap(stacked.state_dict, lone.state_dict) < 0.05
        assert stacked.metrics["test_acc"] == pytest.approx(lone.metrics["test_acc"], abs=0.02)
    # and the CPU trains the same seeds together to the same networks, up to CUDA's TF32 rounding
    on_cpu = train_together([Trainer(model, config, _data("cpu"), seed=s, device="cpu") for s in range(3)])
    for cpu, gpu in zip(on_cpu, together, strict=True):
        assert cpu.status == gpu.status == "ok"
        assert _weight_gap(gpu.state_dict, cpu.state_dict) < 0.1
        assert gpu.metrics["test_acc"] == pytest.approx(cpu.metrics["test_acc"], abs=0.03)


def _weight_gap(state: dict, reference: dict) -> float:
    """The largest difference of two networks' weights, relative to each tensor's largest reference weight."""
    return max(
        float((state[k].float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12))
        for k, ref in reference.items()
        if ref.is_floating_point()
    )


def test_a_ray_sweep_shares_one_gpu_between_tasks(ray_session, tmp_path):
    import ray

    from repair_ray import load_tables
    from repair_ray.sweep.config import parse_config
    from repair_ray.sweep.runner import run_sweep

    assert ray.cluster_resources().get("GPU", 0) >= 1, "Ray did not detect the GPU"
    config = parse_config(
        tiny_sweep("gpu", str(tmp_path), seeds=3, resources={"train": {"gpu": 0.25}, "pair": {"gpu": 0.25}})
    )
    lines: list[str] = []
    result = run_sweep(config, say=lines.append)
    assert result.train.failed == 0 and result.pairs.failed == 0, "\n".join(lines)
    tables = load_tables(config.root)
    pairs, models = tables["pairs"], tables["models"]
    assert len(models) == 3 and models["device"].str.startswith("cuda").all()
    assert len(pairs) == 3 * 6 and (pairs["status"] == "ok").all()
    assert pairs["device"].str.startswith("cuda").all()
    assert not any("has no GPU" in line for line in lines)


def test_batchnorm_conv_nets_stack_on_cuda_in_nchw_and_refuse_channels_last_with_the_fix_named():
    """On an H200 (torch 2.11) vmap failed on channels-last BatchNorm nets and ran NCHW ones."""
    model = ModelConfig("resnet20", 1, None, "batch", {})
    data = make_synthetic(shape=(3, 16, 16), num_classes=10, train_size=256, test_size=64, seed=0).to("cuda")
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05, augment=False)
    with pytest.raises(ValueError, match="channels_last=False"):
        train_together([Trainer(model, config, data, seed=s, device="cuda") for s in range(2)])
    nchw = train_together([Trainer(model, config, data, seed=s, device="cuda", channels_last=False) for s in range(2)])
    assert [r.status for r in nchw] == ["ok", "ok"]
