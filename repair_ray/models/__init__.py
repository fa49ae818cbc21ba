"""The model zoo: one registry mapping an architecture name to its builder and its knobs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .common import NORMS
from .mlp import MLP
from .resnet import cifar_resnet, resnet18, resnet50
from .vgg import VGG, VGG_LAYERS


@dataclass(frozen=True)
class Arch:
    """What the registry knows of an architecture: its builder and the knobs it accepts."""

    build: Callable[..., nn.Module]
    norms: tuple[str, ...]
    default_depth: int
    depths: Callable[[int], bool]
    depth_hint: str
    integer_width: bool  # mlp width counts units; conv widths are multipliers


ARCHS: dict[str, Arch] = {
    "mlp": Arch(MLP, NORMS, 3, lambda d: d >= 1, "a positive number of hidden layers", True),
    "vgg": Arch(VGG, NORMS, 11, lambda d: d in VGG_LAYERS, "one of 11, 13, 16, 19", False),
    "resnet20": Arch(
        cifar_resnet,
        ("batch", "layer"),
        20,
        lambda d: d >= 8 and (d - 2) % 6 == 0,
        "6n+2: 8, 14, 20, 32, 44, ...",
        False,
    ),
    "resnet18": Arch(resnet18, ("batch", "layer"), 18, lambda d: d == 18, "18", False),
    "resnet50": Arch(resnet50, ("batch", "layer"), 50, lambda d: d == 50, "50", False),
}


def check_model_args(arch: str, *, width: float, depth: int | None, norm: str) -> int:
    """Validate the knobs of ``arch`` and return the depth to use; raises ValueError naming the knob."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    info = ARCHS[arch]
    depth = info.default_depth if depth is None else depth
    if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
        raise ValueError(f"width must be a positive number, got {width!r}")
    if info.integer_width and int(width) != width:
        raise ValueError(f"{arch} width counts hidden units and must be an integer, got {width!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or not info.depths(depth):
        raise ValueError(f"{arch} depth must be {info.depth_hint}, got {depth!r}")
    if norm not in info.norms:
        raise ValueError(f"{arch} supports norm {', '.join(info.norms)}; got {norm!r}")
    return depth


def build_model(
    arch: str,
    *,
    width: float,
    depth: int | None = None,
    norm: str = "none",
    num_classes: int = 10,
    in_shape: tuple[int, ...] = (1, 28, 28),
) -> nn.Module:
    """Build a freshly initialised network of the zoo.

    Args:
        arch: ``mlp``, ``vgg``, ``resnet20`` (CIFAR family, depth 6n+2), ``resnet18`` or ``resnet50``.
        width: hidden units for ``mlp``; a channel multiplier for the others (1 = the paper's width).
        depth: hidden layers for ``mlp``; 11/13/16/19 for ``vgg``; 6n+2 for ``resnet20``;
            None for the architecture's default.
        norm: ``none``, ``batch`` or ``layer`` (resnets: ``batch`` or ``layer``).
        num_classes: outputs of the classifier.
        in_shape: (channels, height, width) of one input.
    """
    depth = check_model_args(arch, width=width, depth=depth, norm=norm)
    width = int(width) if ARCHS[arch].integer_width else float(width)
    model = ARCHS[arch].build(width=width, depth=depth, norm=norm, num_classes=num_classes, in_shape=tuple(in_shape))
    model.arch = arch
    return model


__all__ = ["ARCHS", "Arch", "build_model", "check_model_args"]
