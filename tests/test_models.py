"""The model zoo and its permutation specs: permuted networks compute the same function."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from repair_ray import apply_permutation, build_model, permutation_spec, random_permutation
from repair_ray.models import ARCHS
from repair_ray.permutation import SpecError

# Every arch x norm of the zoo, small enough for CPU tests.
ZOO = [
    (arch, norm, width, shape)
    for arch, width in [
        ("mlp", 24),
        ("vgg", 0.125),
        ("resnet20", 0.5),
        ("resnet18", 0.125),
        ("resnet50", 0.125),
    ]
    for norm in ARCHS[arch].norms
    for shape in ([(1, 28, 28), (3, 32, 32)] if arch in ("mlp", "vgg") else [(3, 32, 32)])
]


def randomise_norms(model: nn.Module, shape: tuple[int, ...]) -> None:
    """Non-trivial norm affines and running statistics, so a wrong permutation would show."""
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # running statistics of real activations: per-channel, non-trivial
    model.train()
    with torch.no_grad():
        model(torch.randn(32, *shape))


@pytest.mark.parametrize(("arch", "norm", "width", "shape"), ZOO, ids=lambda v: str(v))
def test_permuted_model_computes_same_function(arch, norm, width, shape):
    model = build_model(arch, width=width, norm=norm, num_classes=7, in_shape=shape)
    randomise_norms(model, shape)
    model.eval()
    spec = permutation_spec(model)
    spec.validate(model.state_dict())
    perm = random_permutation(spec, seed=3)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perm.values())

    permuted = copy.deepcopy(model)
    permuted.load_state_dict(apply_permutation(spec, perm, model))
    spec.validate(permuted.state_dict())
    x = torch.randn(8, *shape)
    with torch.no_grad():
        out, out_permuted = model(x), permuted(x)
    assert out.shape == (8, 7)
    assert (out - out_permuted).abs().max().item() < 1e-4
    # ... and the weights really moved.
    moved = [
        k
        for k, v in permuted.state_dict().items()
        if v.is_floating_point() and not torch.equal(v, model.state_dict()[k])
    ]
    assert moved


def test_spec_covers_batchnorm_buffers():
    model = build_model("mlp", width=16, depth=2, norm="batch")
    spec = permutation_spec(model)
    assert spec.axes["layers.0.norm.running_mean"] == ("layers.0",)
    assert spec.axes["layers.0.norm.running_var"] == ("layers.0",)
    assert spec.axes["layers.0.norm.num_batches_tracked"] == ()
    assert "layers.0.norm.running_mean" in spec.buffers


def test_resnet_residual_stream_shares_one_group_per_stage():
    spec = permutation_spec(build_model("resnet20", width=1, norm="batch", in_shape=(3, 32, 32)))
    # stage 1 has identity shortcuts: every block writes the stem's stream group
    assert {spec.axes[f"stages.0.{i}.conv2.weight"][0] for i in range(3)} == {"stem"}
    # stages 2 and 3 start with a projection, which opens a new stream group
    assert {spec.axes[f"stages.1.{i}.conv2.weight"][0] for i in range(3)} == {"stages.1"}
    assert spec.axes["stages.1.0.shortcut.conv.weight"] == ("stages.1", "stem", None, None)
    assert spec.axes["head.weight"] == (None, "stages.2")


def test_spec_validator_names_the_offending_parameter():
    model = build_model("mlp", width=16, depth=2)
    spec = permutation_spec(model)
    other = build_model("mlp", width=20, depth=2).state_dict()
    with pytest.raises(SpecError, match=r"layers\.0\.linear\.weight.*size 20.*16"):
        spec.validate(other)
    deeper = build_model("mlp", width=16, depth=3).state_dict()
    with pytest.raises(SpecError, match=r"layers\.2"):
        spec.validate(deeper)


@pytest.mark.parametrize(
    ("arch", "kwargs", "message"),
    [
        ("transformer", {"width": 1}, "unknown arch"),
        ("mlp", {"width": 0}, "width: must be a positive"),
        ("mlp", {"width": 1.5}, "integer"),
        ("vgg", {"width": 1, "depth": 12}, "11, 13, 16, 19"),
        ("cifar_resnet", {"width": 1, "depth": 21, "norm": "batch"}, "6n\\+2"),
        ("resnet20", {"width": 1, "depth": 32, "norm": "batch"}, "resnet20 depth must be 20"),
        ("resnet20", {"width": 1, "norm": "none"}, "supports norm batch, layer"),
        ("vgg", {"width": [1, 2]}, "vgg takes one width, not a list"),
        ("mlp", {"width": [300, 0]}, "per-layer widths must be positive integers"),
        ("mlp", {"width": [300, 100], "depth": 3}, "depth: is 3 but width lists 2 hidden layers"),
    ],
)
def test_bad_model_arguments_are_named(arch, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(arch, **kwargs)


@pytest.mark.parametrize("depth", [11, 13, 16, 19])
@pytest.mark.parametrize(("shape", "pools"), [((1, 28, 28), 4), ((3, 32, 32), 5)])
def test_vgg_runs_on_mnist_and_cifar_shapes(depth, shape, pools):
    """VGG-``depth`` is ``depth - 3`` convolutions (configurations A, B, D, E of Simonyan & Zisserman
    without two of the three linear layers) and one linear head. 32x32 halves five times to 1x1;
    28x28 reaches 1x1 after four pools and skips the fifth (a 2x2 pool of 1x1 would fail)."""
    from repair_ray.models.vgg import VGG_LAYERS

    model = build_model("vgg", width=0.0625, depth=depth, norm="batch", in_shape=shape)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == depth - 3
    assert [c.out_channels for c in convs] == [max(1, round(c * 0.0625)) for c in VGG_LAYERS[depth] if c != "M"]
    assert convs[0].in_channels == shape[0]
    assert sum(block.pool is not None for block in model.features) == pools
    seen: list[tuple[int, ...]] = []
    model.features[-1].register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape)))
    x = torch.randn(3, *shape)
    with torch.no_grad():
        out = model(x)  # training mode: batch statistics keep these 4-channel layers alive
    assert seen == [(3, convs[-1].out_channels, 1, 1)]  # the last block's map is one pixel
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])  # the output depends on the input


def test_lenet_300_100_is_an_mlp_with_per_layer_widths():
    from repair_ray import ModelConfig, weight_matching

    config = ModelConfig("mlp", width=[300, 100])
    assert (config.width, config.depth, config.label) == ((300, 100), 2, "mlp-w300x100-d2-none")
    assert ModelConfig(**{**dataclasses.asdict(config), "width": [300, 100]}) == config  # as it comes back from JSON
    model = config.build()
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(300, 784), (300,), (100, 300), (100,), (10, 100), (10,)]
    assert sum(p.numel() for p in model.parameters()) == 266_610  # Frankle et al.'s LeNet-300-100
    spec = permutation_spec(model)
    assert spec.sizes == {"layers.0": 300, "layers.1": 100}
    perm = random_permutation(spec, seed=1)
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(apply_permutation(spec, perm, model))
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert (model(x) - permuted(x)).abs().max().item() < 1e-5
    found = weight_matching(spec, model.state_dict(), permuted.state_dict())
    undone = apply_permutation(spec, found, permuted)  # weight matching undoes the planted permutation
    assert all(torch.equal(undone[k], v) for k, v in model.state_dict().items())


def test_modules_of_refuses_a_module_of_another_kind():
    from torch import nn

    from repair_ray.models.common import modules_of

    blocks = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])
    assert modules_of(nn.ModuleList([nn.Linear(2, 2)]), nn.Linear)[0].in_features == 2
    with pytest.raises(TypeError, match="expected a Linear, found a ReLU"):
        modules_of(blocks, nn.Linear)
