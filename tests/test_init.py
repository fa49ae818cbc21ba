"""The zoo's initialisation is a model knob: torch (PyTorch's default, the REPAIR notebooks'), he
(Kaiming normal, the zoo's only init before the knob) and lecun (Flax's default, Git Re-Basin's)."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
import yaml
from torch import nn

from repair_ray.models import ModelConfig
from repair_ray.models.common import DEFAULT_INIT, INITS
from repair_ray.sweep.config import parse_config
from repair_ray.sweep.rows import model_columns

from .helpers import tiny_sweep
from .test_sweep_config import config_error


def _digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# Computed with main's code before init was a knob (commit 1bf7607), torch.manual_seed(0):
# naming init he must draw the very same networks, so their checkpoints stay theirs.
HE_BEFORE = {
    ("mlp", 32, 2, "none", (1, 28, 28)): "3cf23ff46ae88b95",
    ("vgg", 0.25, 11, "batch", (3, 32, 32)): "52d8838503a1dc1e",
    ("resnet20", 1, None, "layer", (3, 32, 32)): "5d0a9c8d0c3d1830",
    ("resnet18", 0.25, None, "batch", (3, 32, 32)): "6a2f411f099d230d",
}


@pytest.mark.parametrize("knobs", list(HE_BEFORE), ids=lambda k: k[0])
def test_init_he_draws_the_networks_the_zoo_drew_before_the_knob(knobs) -> None:
    arch, width, depth, norm, shape = knobs
    torch.manual_seed(0)
    assert _digest(ModelConfig(arch, width, depth, norm, init="he").build(10, shape)) == HE_BEFORE[knobs]


def test_init_torch_keeps_what_each_layer_drew_when_it_was_built() -> None:
    torch.manual_seed(3)
    model = ModelConfig("mlp", 64, 2, "batch", init="torch").build(10, (1, 8, 8))
    torch.manual_seed(3)  # the same layers in the same order, each with PyTorch's own init
    plain = [nn.Linear(64, 64, bias=False), nn.Linear(64, 64, bias=False), nn.Linear(64, 10)]
    assert torch.equal(model.layers[0].linear.weight, plain[0].weight)
    assert torch.equal(model.layers[1].linear.weight, plain[1].weight)
    assert torch.equal(model.head.weight, plain[2].weight) and torch.equal(model.head.bias, plain[2].bias)


@pytest.mark.parametrize("init", INITS)
def test_each_init_draws_the_variance_it_names(init: str) -> None:
    """Weight variance times fan-in: 1/3 (PyTorch's kaiming_uniform with a = sqrt(5)), 2 (He, ReLU
    gain; the head 1), 1 (LeCun, cut at two standard deviations); biases zero except PyTorch's."""
    torch.manual_seed(0)
    model = ModelConfig("mlp", 1024, 2, "none", init=init).build(10, (1, 32, 32))
    hidden, head = model.layers[1].linear, model.head
    scaled = hidden.weight.var().item() * 1024
    expected = {"torch": 1 / 3, "he": 2.0, "lecun": 1.0}[init]
    assert scaled == pytest.approx(expected, rel=0.02)
    assert head.weight.var().item() * 1024 == pytest.approx({"he": 1.0}.get(init, expected), rel=0.1)
    if init == "lecun":  # truncated: nothing beyond two of the untruncated standard deviations
        assert hidden.weight.abs().max().item() <= 2 / math.sqrt(1024) / 0.87962566103423978 + 1e-6
    if init == "torch":
        assert hidden.bias.abs().max().item() > 0
    else:
        assert not hidden.bias.any() and not head.bias.any()


@pytest.mark.parametrize("arch,shape", [("vgg", (3, 32, 32)), ("resnet20", (3, 32, 32)), ("resnet18", (3, 32, 32))])
def test_every_zoo_architecture_takes_every_init(arch: str, shape) -> None:
    stds = {}
    for init in INITS:
        torch.manual_seed(0)
        model = ModelConfig(arch, 0.25, None, "batch", init=init).build(10, shape)
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 3)
        stds[init] = conv.weight.std().item() * math.sqrt(conv.weight[0].numel())
        assert torch.isfinite(model(torch.randn(4, *shape))).all()
    assert stds["torch"] < stds["lecun"] < stds["he"]


def test_the_default_init_is_torch_and_only_today_s_he_stays_out_of_the_key() -> None:
    assert DEFAULT_INIT == "torch" and ModelConfig("mlp", 8, 1).init == "torch"
    assert "init" not in ModelConfig("mlp", 8, 1, init="he").described()
    assert ModelConfig("mlp", 8, 1).described()["init"] == "torch"


def test_a_config_that_names_today_s_init_keeps_today_s_keys() -> None:
    """The quickstart's keys before init was a knob (README showed them) come back with init: he;
    the default (torch) and lecun name other networks, whose rows never mix with the old ones."""
    from repair_ray.cli import example_text

    quickstart = yaml.safe_load(example_text("quickstart"))

    def keys(init: str | None) -> set[str]:
        grid = {**quickstart["models"][0]} | ({} if init is None else {"init": init})
        return {p.model_key for p in parse_config({**quickstart, "models": [grid]}).models}

    today = keys("he")
    assert {"mlp-w32-d4-none-44bb9847d9", "mlp-w128-d2-none-90a763ba41"} <= today
    assert not keys("torch") & today and not keys("lecun") & today and not keys("torch") & keys("lecun")
    assert keys(None) == keys(DEFAULT_INIT)


def test_init_is_a_grid_knob_and_every_row_says_which(tmp_path) -> None:
    config = parse_config(
        tiny_sweep("i", str(tmp_path), models=[{"arch": "mlp", "width": 16, "init": ["he", "lecun"]}])
    )
    assert [p.model.init for p in config.models] == ["he", "lecun"]
    assert len({p.model_key for p in config.models}) == 2
    for plan in config.models:
        assert model_columns(plan.fields(), config.dataset.as_dict())["init"] == plan.model.init


@pytest.mark.parametrize(
    "models,message",
    [
        ([{"arch": "mlp", "width": 16, "init": "xavier"}], "models[0].init: unknown init 'xavier'"),
        ([{"arch": "mlp", "width": 16, "init": []}], "models[0]: width, depth, norm and init must not be empty"),
        (
            [{"arch": "torchvision:resnet18", "init": "he"}],
            "models[0].init: applies to the zoo's architectures; torchvision:resnet18 initialises its own network",
        ),
    ],
)
def test_a_bad_init_is_refused_naming_the_key(tmp_path, models, message) -> None:
    assert message in config_error(tiny_sweep("bad", str(tmp_path), models=models), tmp_path)
