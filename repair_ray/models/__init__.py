"""The model zoo: one registry mapping an architecture name to its builder and its knobs.

:class:`ModelConfig` is the one home of the rules for model knobs (which widths, depths and
norms an architecture takes); :func:`build_model` and the sweep's config both go through it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import Problems, unknown_choice
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
    # the CIFAR family of He et al. at any depth 6n+2; resnet20 is its depth-20 member
    "cifar_resnet": Arch(
        cifar_resnet,
        ("batch", "layer"),
        20,
        lambda d: d >= 8 and (d - 2) % 6 == 0,
        "6n+2: 8, 14, 20, 32, 44, ...",
        False,
    ),
    "resnet20": Arch(cifar_resnet, ("batch", "layer"), 20, lambda d: d == 20, "20 (cifar_resnet takes 6n+2)", False),
    "resnet18": Arch(resnet18, ("batch", "layer"), 18, lambda d: d == 18, "18", False),
    "resnet50": Arch(resnet50, ("batch", "layer"), 50, lambda d: d == 50, "50", False),
}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class ModelConfig:
    """An architecture of the zoo with its knobs, checked on construction.

    ``width`` counts hidden units for ``mlp`` (an integer) and is a channel multiplier for the
    others; ``depth`` None means the architecture's default. After construction ``width`` has
    the architecture's type and ``depth`` is resolved, so equal models compare (and hash) equal.
    Raises :class:`repair_ray.SettingError` naming every offending knob.
    """

    arch: str
    width: float
    depth: int | None = None
    norm: str = "none"

    def __post_init__(self) -> None:
        problems = Problems("ModelConfig")
        info = ARCHS.get(self.arch)
        if info is None:
            problems.add("arch", unknown_choice("arch", self.arch, list(ARCHS)))
            problems.raise_if_any()
        if not _is_number(self.width) or not self.width > 0:
            problems.add(
                "width", f"must be a positive {'integer' if info.integer_width else 'number'}, got {self.width!r}"
            )
        elif info.integer_width and int(self.width) != self.width:
            problems.add("width", f"{self.arch} width counts hidden units and must be an integer, got {self.width!r}")
        depth = info.default_depth if self.depth is None else self.depth
        if not (isinstance(depth, int) and not isinstance(depth, bool)) or not info.depths(depth):
            problems.add("depth", f"{self.arch} depth must be {info.depth_hint}, got {depth!r}")
        if self.norm not in info.norms:
            problems.add("norm", f"{self.arch} supports norm {', '.join(info.norms)}; got {self.norm!r}")
        problems.raise_if_any()
        object.__setattr__(self, "width", int(self.width) if info.integer_width else float(self.width))
        object.__setattr__(self, "depth", depth)

    def build(self, num_classes: int = 10, in_shape: tuple[int, ...] = (1, 28, 28)) -> nn.Module:
        """A freshly initialised network (under the current torch RNG state)."""
        model = ARCHS[self.arch].build(
            width=self.width, depth=self.depth, norm=self.norm, num_classes=num_classes, in_shape=tuple(in_shape)
        )
        model.arch = self.arch
        return model

    @property
    def has_batchnorm(self) -> bool:
        """Whether the network has BatchNorm layers (what RESET needs); read off a meta-device build."""
        return _has_batchnorm(self)


@functools.lru_cache(maxsize=256)
def _has_batchnorm(config: ModelConfig) -> bool:
    import torch

    from ..correction import has_batchnorm

    with torch.device("meta"):
        return has_batchnorm(config.build())


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
        arch: ``mlp``, ``vgg``, ``cifar_resnet`` (CIFAR family, depth 6n+2), ``resnet20`` (its
            depth-20 member), ``resnet18`` or ``resnet50``.
        width: hidden units for ``mlp``; a channel multiplier for the others (1 = the paper's width).
        depth: hidden layers for ``mlp``; 11/13/16/19 for ``vgg``; 6n+2 for ``cifar_resnet``;
            None for the architecture's default.
        norm: ``none``, ``batch`` or ``layer`` (resnets: ``batch`` or ``layer``).
        num_classes: outputs of the classifier.
        in_shape: (channels, height, width) of one input.
    """
    return ModelConfig(arch, width, depth, norm).build(num_classes, in_shape)


def permutation_spec(model: nn.Module):
    """The :class:`~repair_ray.PermutationSpec` of a model of the zoo (validated against the model)."""
    if not hasattr(model, "permutation_spec"):
        raise TypeError(f"{type(model).__name__} has no permutation spec; build it with repair_ray.build_model")
    return model.permutation_spec()


__all__ = ["ARCHS", "Arch", "ModelConfig", "build_model", "permutation_spec"]
