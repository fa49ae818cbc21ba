"""Building blocks shared by the model zoo: norm layers by name and He initialisation."""

from __future__ import annotations

from typing import Literal, TypeVar

from torch import nn

NORMS = ("none", "batch", "layer")


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


def he_init(model: nn.Module, head: nn.Module | None = None) -> None:
    """Kaiming-normal (fan-in, ReLU gain) weights and zero biases for every conv/linear.

    Deep plain nets do not train from PyTorch's default init; this init trains them (DESIGN.md).
    The classifier ``head`` gets unit gain since no ReLU follows it.
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            gain: Literal["linear", "relu"] = "linear" if module is head else "relu"
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity=gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif (
            isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm))
            and module.weight is not None
        ):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def scaled(base: int, width: float) -> int:
    """Channels of a stage with ``base`` channels at width multiplier ``width`` (at least 1)."""
    return max(1, int(round(base * width)))
