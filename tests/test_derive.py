"""Permutation specs derived from the graph: correct on every network we claim, refused where not.

For each network: a random permutation of every group keeps the function (eval mode, BatchNorm
statistics that are not the defaults); weight matching and activation matching undo a planted
permutation; REPAIR sets the statistics at the derived points to their targets; the zoo's
hand-written specs and the derived ones agree.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision.models as tvm
from torch import nn

import repair_ray
from repair_ray import (
    ModelConfig,
    SpecError,
    activation_matching,
    apply_permutation,
    build_model,
    interpolate_state,
    permutation_spec,
    random_permutation,
    repair,
    weight_matching,
)
from repair_ray.correction import correction_plan, has_batchnorm, repair_moments, target_moments
from repair_ray.datasets import TensorData
from repair_ray.hooks import channel_moments

from . import custom_nets
from .test_correction import relative_errors


def randomize(model: nn.Module, seed: int = 1) -> nn.Module:
    """Norm statistics and affines, and layer scales, away from their defaults (which permutations keep)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.2, generator=gen)
        for name, p in model.named_parameters():
            if "gamma" in name or "layer_scale" in name:
                p.uniform_(0.5, 1.5, generator=gen)
    return model.eval()


def check_symmetry(model: nn.Module, x: torch.Tensor, spec=None, *, matching: bool = True) -> None:
    spec = spec or permutation_spec(model, x)
    assert spec.sizes, "no permutation group found"
    perm = random_permutation(spec, seed=3)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perm.values())
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(apply_permutation(spec, perm, model))
    with torch.no_grad():
        y, y_permuted = model(x), permuted(x)
    assert not torch.allclose(
        permuted.state_dict()[next(iter(spec.groups.values()))[0][0]],
        model.state_dict()[next(iter(spec.groups.values()))[0][0]],
    )
    torch.testing.assert_close(y_permuted, y, rtol=1e-4, atol=1e-4 * float(y.abs().max()))
    if not matching:
        return
    # weight matching undoes the planted permutation: B aligned to A is A again
    found = weight_matching(spec, model, permuted, start="forward")
    aligned = apply_permutation(spec, found, permuted)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(aligned[name], value, rtol=0, atol=0, msg=f"weight matching: {name}")


def data_like(x: torch.Tensor, n: int = 256) -> TensorData:
    gen = torch.Generator().manual_seed(0)
    return TensorData(torch.randn(n, *x.shape[1:], generator=gen), torch.zeros(n, dtype=torch.long))


CUSTOM = {
    "unet_concat_skips": (lambda: custom_nets.unet(width=4), (2, 3, 16, 16)),
    "residual_mlp_layernorm": (lambda: custom_nets.residual_mlp((1, 4, 4), width=16), (2, 1, 4, 4)),
    "se_depthwise_groupnorm_flatten": (lambda: custom_nets.SEBlockNet(width=16), (2, 3, 8, 8)),
    "convnext_channels_last_layer_scale": (lambda: custom_nets.ConvNeXtBlockNet(width=8), (2, 3, 8, 8)),
    "channels_last_flatten": (lambda: custom_nets.ChannelsLastFlatten(width=8), (2, 3, 8, 8)),
    "functional_parameters": (lambda: custom_nets.FunctionalNet(width=8), (2, 3, 6, 6)),
    "concat_split_back": (custom_nets.SplitBack, (2, 3, 6, 6)),
}


@pytest.mark.parametrize("name", list(CUSTOM))
def test_custom_networks_keep_their_function_and_matching_undoes_a_planted_permutation(name):
    build, shape = CUSTOM[name]
    torch.manual_seed(0)
    model = randomize(build())
    check_symmetry(model, torch.randn(*shape))


@pytest.mark.parametrize("name", [n for n in CUSTOM if n != "functional_parameters"])
def test_activation_matching_on_derived_points_undoes_a_planted_permutation(name):
    build, shape = CUSTOM[name]
    torch.manual_seed(0)
    model = randomize(build())
    x = torch.randn(*shape)
    spec = permutation_spec(model, x)
    assert set(spec.activations) == set(spec.sizes)
    perm = random_permutation(spec, seed=5)
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(apply_permutation(spec, perm, model))
    found = activation_matching(spec, model, permuted, data_like(x))
    aligned = apply_permutation(spec, found, permuted)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(aligned[key], value, rtol=0, atol=0, msg=key)


def test_a_network_of_functions_has_no_activation_points_and_validation_says_so(tmp_path):
    from repair_ray.sweep.config import ConfigError, parse_config

    from .helpers import tiny_sweep

    spec = permutation_spec(custom_nets.FunctionalNet(), torch.randn(2, 3, 6, 6))
    assert set(spec.sizes) == {"conv_w", "proj"} and not spec.activations and not spec.repair_points
    config = tiny_sweep(
        "functional",
        str(tmp_path),
        dataset={"name": "synthetic", "shape": [3, 6, 6], "num_classes": 10},
        models=[{"arch": "tests.custom_nets:FunctionalNet"}],
    )
    with pytest.raises(ConfigError) as info:
        parse_config(config, allow_import=["tests.custom_nets"])
    assert "align activation needs a module output carrying each permutation group" in str(info.value)
    assert "correction repair needs norm layers with an affine or layers with a bias" in str(info.value)
    parse_config({**config, "align": ["none", "weight"], "correction": ["none"]}, allow_import=["tests.custom_nets"])


def test_derived_segments_describe_concatenations_and_flattened_maps():
    unet = custom_nets.unet(width=4)
    spec = permutation_spec(unet, torch.randn(2, 3, 16, 16))
    entry = spec.axes["dec1.0.weight"][1]  # reads upsampled dec2 ++ enc1
    assert [(s.group, s.units) for s in entry] == [("dec2.0", 4), ("enc1.0", 4)]
    se = custom_nets.SEBlockNet(width=16)
    spec = permutation_spec(se, torch.randn(2, 3, 8, 8))
    (segment,) = spec.axes["head.weight"][1]
    assert (segment.group, segment.units, segment.inner) == ("pw", 32, 16)
    assert spec.axes["dw.weight"][0] == spec.axes["stem.weight"][0] == spec.axes["se2.weight"][0] == "stem"
    flat = custom_nets.ChannelsLastFlatten(width=8)
    spec = permutation_spec(flat, torch.randn(2, 3, 8, 8))
    assert [(s.group, s.units, s.inner) for s in spec.axes["fc.weight"][1]] == [("conv", 8, 1)] * 9


def test_channels_last_points_carry_their_axis():
    model = custom_nets.ConvNeXtBlockNet(width=8)
    spec = permutation_spec(model, torch.randn(2, 3, 8, 8))
    assert "norm.0" in spec.repair_points and spec.channel_axis("norm.0") == 3
    assert spec.channel_axis("head_norm") == 1  # (N, C) after the mean


@pytest.mark.parametrize("name", ["unet_concat_skips", "convnext_channels_last_layer_scale", "residual_mlp_layernorm"])
def test_repair_on_derived_points_sets_the_statistics_to_their_targets(name):
    build, shape = CUSTOM[name]
    torch.manual_seed(1)
    a = randomize(build(), seed=1)
    torch.manual_seed(2)
    b = randomize(build(), seed=2)
    x = torch.randn(*shape)
    data = data_like(x, 300)
    spec = permutation_spec(a, x)
    mid = copy.deepcopy(a)
    mid.load_state_dict(interpolate_state(a.state_dict(), b.state_dict(), 0.4))
    target = target_moments(repair_moments(a, data, spec), repair_moments(b, data, spec), 0.4)
    batchnorm = has_batchnorm(a)
    for correction in ("repair", "repair_bn") if batchnorm else ("repair",):
        points = correction_plan(correction, spec, batchnorm=batchnorm).renormalised
        if not points:
            continue
        net = copy.deepcopy(mid)

        def measured(net=net, points=points):
            return channel_moments(net, data, points, axes=spec.channel_axes)

        goal = {p: target[p] for p in points}
        before = relative_errors(measured(), goal)
        repair(net, a, b, data, alpha=0.4, spec=spec, batch_size=len(data), correction=correction)
        after = relative_errors(measured(), goal)
        assert after < 1e-2 < before, (correction, before, after)


ZOO = [
    ("mlp", {"width": 32, "depth": 3, "norm": "none"}, (1, 8, 8)),
    ("mlp", {"width": 32, "depth": 2, "norm": "batch"}, (1, 8, 8)),
    ("mlp", {"width": 32, "depth": 2, "norm": "layer"}, (1, 8, 8)),
    ("vgg", {"width": 0.125, "depth": 11, "norm": "batch"}, (3, 16, 16)),
    ("vgg", {"width": 0.125, "depth": 13, "norm": "layer"}, (3, 16, 16)),
    ("resnet20", {"width": 0.5, "norm": "batch"}, (3, 16, 16)),
    ("resnet18", {"width": 0.125, "norm": "layer"}, (3, 16, 16)),
    ("resnet50", {"width": 0.125, "norm": "batch"}, (3, 16, 16)),
]


@pytest.mark.parametrize(("arch", "kwargs", "shape"), ZOO, ids=str)
def test_the_zoo_specs_and_the_derived_ones_agree(arch, kwargs, shape):
    model = build_model(arch, in_shape=shape, **kwargs)
    hand, derived = permutation_spec(model), permutation_spec(model, torch.randn(2, *shape))

    def partition(spec):
        return {frozenset(members) for members in spec.groups.values()}

    assert partition(hand) == partition(derived)
    assert hand.repair_points == derived.repair_points
    assert list(hand.carried_points) == list(derived.carried_points)
    names = {g: frozenset(m) for g, m in hand.groups.items()}
    derived_names = {frozenset(m): g for g, m in derived.groups.items()}
    for g, points in hand.activations.items():
        assert derived.activations[derived_names[names[g]]] == points


# torchvision's classification networks: (builder, input side). Weight matching on the large
# classifiers of VGG and on wide_resnet50_2 takes tens of seconds on a CPU: those are slow tests.
TORCHVISION = {
    "resnet18": 32,
    "resnet50": 32,
    "mobilenet_v2": 32,
    "mobilenet_v3_small": 32,
    "efficientnet_b0": 32,
    "convnext_tiny": 32,
    "densenet121": 32,
    "squeezenet1_1": 48,
    "googlenet": 32,
    "mnasnet0_5": 32,
}
TORCHVISION_SLOW = {"wide_resnet50_2": 32, "vgg11_bn": 32, "vgg16": 32, "alexnet": 64}


def _torchvision_case(name: str, side: int) -> None:
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    model = randomize(getattr(tvm, name)(num_classes=10, **kwargs))
    check_symmetry(model, torch.randn(2, 3, side, side))


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_networks(name):
    _torchvision_case(name, TORCHVISION[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TORCHVISION_SLOW))
def test_torchvision_networks_with_large_classifiers(name):
    _torchvision_case(name, TORCHVISION_SLOW[name])


REFUSED = {
    "grouped_conv": (custom_nets.GroupedConv, "module 'grouped' (Conv2d): a grouped convolution"),
    "group_norm_4_groups": (custom_nets.ManyGroupNorm, "module 'gn' (GroupNorm): GroupNorm with 4 groups"),
    "channel_shuffle": (custom_nets.ChannelShuffle, "op 'view' in the top-level forward: splits an axis"),
    "slice_channels": (custom_nets.SliceChannels, "op 'getitem' in the top-level forward: slices through"),
    "cumsum_channels": (custom_nets.CumsumChannels, "op 'cumsum' in the top-level forward"),
    "multihead_attention": (custom_nets.Attention, "module 'attn' (MultiheadAttention): attention heads"),
    "argmax_channels": (custom_nets.ArgmaxChannels, "op 'max' in the top-level forward: takes the index"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_symmetries_that_are_not_plain_permutations_are_refused_naming_the_op(name):
    build, words = REFUSED[name]
    with pytest.raises(SpecError, match="cannot derive a permutation symmetry through") as info:
        permutation_spec(build(), torch.randn(2, 3, 2, 2))
    assert words in str(info.value)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("shufflenet_v2_x0_5", "op 'view' in module 'stage2.0'"),
        ("resnext50_32x4d", "module 'layer1.0.conv2' (Conv2d): a grouped convolution (groups=32"),
        ("regnet_x_400mf", "a grouped convolution"),
    ],
)
def test_torchvision_networks_with_grouped_symmetries_are_refused(name, words):
    with pytest.raises(SpecError) as info:
        permutation_spec(getattr(tvm, name)(num_classes=10), torch.randn(2, 3, 32, 32))
    assert words in str(info.value)


def test_vision_transformer_is_refused_at_its_attention():
    vit = tvm.VisionTransformer(
        image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10
    )
    with pytest.raises(SpecError, match="encoder.layers.encoder_layer_0.self_attention' .MultiheadAttention"):
        permutation_spec(vit, torch.randn(2, 3, 16, 16))


def test_a_network_the_input_does_not_fit_is_refused_with_the_shapes():
    with pytest.raises(SpecError, match=r"does not run on an example input of shape \[\(2, 1, 28, 28\)\]"):
        permutation_spec(tvm.resnet18(num_classes=10), torch.randn(2, 1, 28, 28))


def test_derivation_on_the_meta_device_gives_the_same_spec():
    with torch.device("meta"):
        meta = tvm.resnet18(num_classes=10)
    real = tvm.resnet18(num_classes=10)
    assert permutation_spec(meta, torch.empty(2, 3, 32, 32, device="meta")) == permutation_spec(
        real, torch.randn(2, 3, 32, 32)
    )


def test_without_an_example_input_only_models_with_their_own_spec_are_accepted():
    with pytest.raises(TypeError, match="pass an example input"):
        permutation_spec(custom_nets.unet())
    assert repair_ray.permutation_spec is permutation_spec


def test_external_factories_receive_the_knobs_they_name():
    config = ModelConfig("tests.custom_nets:residual_mlp", width=24, depth=3, allow_import=["tests"])
    model = config.build(num_classes=5, in_shape=(1, 4, 4))
    assert model.embed.out_features == 24 and len(model.norms) == 3 and model.head.out_features == 5
    spec = config.permutation_spec(5, (1, 4, 4))
    assert spec.sizes["embed"] == 24
    tv = ModelConfig("torchvision:resnet18", kwargs={"zero_init_residual": True})
    assert tv.build(num_classes=7, in_shape=(3, 32, 32)).fc.out_features == 7
    assert tv.options == {"zero_init_residual": True}


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"arch": "torchvision:resnet18", "width": 2}, "ModelConfig.width: torchvision:resnet18 takes no 'width'"),
        ({"arch": "torchvision:no_such_net"}, "torchvision has no classification model 'no_such_net'"),
        ({"arch": "no_such_package.models:make"}, "cannot import 'no_such_package.models'"),
        ({"arch": "tests.custom_nets:nothing"}, "has no attribute 'nothing'"),
        ({"arch": "tests.custom_nets:unet", "kwargs": {"width": 3}}, "use the model's width key"),
        ({"arch": "tests.custom_nets:unet", "kwargs": {"num_classes": 3}}, "takes from the dataset"),
        ({"arch": "mlp", "width": 8, "kwargs": {"a": 1}}, "zoo architecture and takes no keyword arguments"),
        ({"arch": "mlp"}, "ModelConfig.width: mlp needs a width"),
    ],
)
def test_model_config_errors_name_the_field(kwargs, words):
    with pytest.raises(repair_ray.SettingError) as info:
        ModelConfig(**kwargs, allow_import=["tests.custom_nets", "no_such_package"])
    assert words in str(info.value)


def test_a_factory_returning_the_wrong_number_of_classes_is_refused():
    config = ModelConfig("tests.custom_nets:ten_classes", allow_import=["tests.custom_nets"])
    with pytest.raises(
        SpecError, match=r"must return logits of shape \(batch, 4\) for this dataset; it returns \(2, 10\)"
    ):
        config.permutation_spec(4, (3, 2, 2))
    assert config.permutation_spec(10, (3, 2, 2)).sizes
