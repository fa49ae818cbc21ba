"""Building blocks shared by the model zoo: norm layers by name and the initialisations."""

from __future__ import annotations

import math
from typing import Literal, TypeVar

from torch import nn

NORMS = ("none", "batch", "layer")
# torch: PyTorch's own init of each layer (the REPAIR notebooks); he: Kaiming normal, fan-in, ReLU
# gain (open_lth); lecun: LeCun normal (Flax's default, so Git Re-Basin's). See docs/science.md.
INITS = ("torch", "he", "lecun")
TODAYS_INIT = "he"  # the zoo's only init before the knob existed: left out of model keys
DEFAULT_INIT = "torch"  # chosen by measurement: docs/science.md#initialisation


def make_norm(kind: str, channels: int, *, spatial: bool) -> nn.Module | None:
    """A norm layer over ``channels`` or None.

    ``layer`` on feature maps is GroupNorm with one group: it normalises each sample over
    channels and space together and has a per-channel affine, so it permutes with the channels.
    """
    if kind == "none":
        return None
    if kind == "batch":
        return nn.BatchNorm2d(channels) if spatial else nn.BatchNorm1d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels) if spatial else nn.LayerNorm(channels)
    raise ValueError(f"unknown norm {kind!r}; expected one of {', '.join(NORMS)}")


def norm_layer(kind: str, channels: int, *, spatial: bool) -> nn.Module:
    """The norm layer of ``kind`` (``batch`` or ``layer``), for networks that always have one (the resnets)."""
    norm = make_norm(kind, channels, spatial=spatial)
    if norm is None:
        raise ValueError(f"needs a norm layer ('batch' or 'layer'), got norm {kind!r}")
    return norm


M = TypeVar("M", bound=nn.Module)


def modules_of(container: nn.ModuleList, kind: type[M]) -> list[M]:
    """The modules of ``container``, each checked to be the ``kind`` it was built as (a ModuleList forgets it)."""
    out = []
    for module in container:
        if not isinstance(module, kind):
            raise TypeError(f"expected a {kind.__name__}, found a {type(module).__name__}")
        out.append(module)
    return out


def initialise(model: nn.Module, init: str, head: nn.Module | None = None) -> None:
    """Initialise a freshly built zoo network by ``init`` (one of :data:`INITS`).

    ``torch`` keeps what each layer's constructor drew (PyTorch's default: uniform weights of
    variance 1/(3·fan_in), uniform biases); ``he`` and ``lecun`` redraw every conv/linear weight
    and zero its bias, and reset norm layers to unit scale and zero shift.
    """
    if init == "torch":
        return
    if init == "he":
        he_init(model, head=head)
    elif init == "lecun":
        lecun_init(model)
    else:
        raise ValueError(f"unknown init {init!r}; expected one of {', '.join(INITS)}")


def he_init(model: nn.Module, head: nn.Module | None = None) -> None:
    """Kaiming-normal (fan-in, ReLU gain) weights and zero biases for every conv/linear.

    The classifier ``head`` gets unit gain since no ReLU follows it. This was the zoo's only init
    until ``init`` became a knob; what it does to the REPAIR paper's numbers, against PyTorch's
    default, was measured and is in docs/science.md.
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            gain: Literal["linear", "relu"] = "linear" if module is head else "relu"
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity=gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        _reset_norm(module)


# jax.nn.initializers.variance_scaling's truncated normal: cut at ±2 standard deviations, then
# rescaled so the variance is the target (the std of a unit normal truncated at ±2).
_TRUNCATED_STD = 0.87962566103423978


def lecun_init(model: nn.Module) -> None:
    """LeCun normal as Flax draws it (``lecun_normal``: truncated normal of variance 1/fan_in) for
    every conv/linear weight, the classifier's included, and zero biases (Flax's defaults)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            fan_in = module.weight[0].numel()
            std = math.sqrt(1.0 / fan_in) / _TRUNCATED_STD
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        _reset_norm(module)


def _reset_norm(module: nn.Module) -> None:
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)) and module.weight is not None:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def scaled(base: int, width: float) -> int:
    """Channels of a stage with ``base`` channels at width multiplier ``width`` (at least 1)."""
    return max(1, int(round(base * width)))
