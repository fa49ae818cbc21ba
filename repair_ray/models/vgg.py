"""VGG11/13/16/19 with a width multiplier, for 28x28 and 32x32 (or larger) inputs."""

from __future__ import annotations

import torch
from torch import nn

from ..permutation.spec import PermutationSpec, SpecBuilder
from .common import TODAYS_INIT, initialise, make_norm, modules_of, scaled

# Channels per conv, "M" = 2x2 max-pool (Simonyan & Zisserman 2015, configurations A, B, D, E).
VGG_LAYERS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ],
}


class ConvBlock(nn.Module):
    """3x3 conv → optional norm → ReLU → optional 2x2 max-pool."""

    def __init__(self, c_in: int, c_out: int, norm: str, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm == "none")
        self.norm = make_norm(norm, c_out, spatial=True)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2) if pool else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        x = self.act(x)
        return self.pool(x) if self.pool is not None else x


class VGG(nn.Module):
    """VGG features, global average pool, one linear classifier (as in the REPAIR paper's CIFAR VGG).

    A pool is skipped once the feature map is 1 pixel wide, so 28x28 inputs work.
    """

    def __init__(
        self,
        *,
        width: float,
        depth: int,
        norm: str,
        num_classes: int,
        in_shape: tuple[int, ...],
        init: str = TODAYS_INIT,
    ) -> None:
        super().__init__()
        if depth not in VGG_LAYERS:
            raise ValueError(f"vgg depth must be one of {sorted(VGG_LAYERS)}, got {depth}")
        c_in, size = in_shape[0], min(in_shape[1:])
        blocks = []
        plan = VGG_LAYERS[depth]
        for i, item in enumerate(plan):
            if item == "M":
                continue
            pool = i + 1 < len(plan) and plan[i + 1] == "M" and size >= 2
            c_out = scaled(int(item), width)
            blocks.append(ConvBlock(c_in, c_out, norm, pool))
            c_in = c_out
            size = size // 2 if pool else size
        self.features = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(c_in, num_classes)
        initialise(self, init, head=self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.features:
            x = block(x)
        return self.head(self.flatten(self.pool(x)))

    def permutation_spec(self) -> PermutationSpec:
        b = SpecBuilder()
        p_prev: str | None = None
        for i, block in enumerate(modules_of(self.features, ConvBlock)):
            p = f"features.{i}"
            b.conv(f"features.{i}.conv", p_prev, p, bias=block.conv.bias is not None)
            b.norm(f"features.{i}.norm", p, block.norm)
            b.activation(p, f"features.{i}.act")
            b.repair(f"features.{i}.norm" if block.norm is not None else f"features.{i}.conv")
            p_prev = p
        b.linear("head", p_prev, None)
        return b.build(self)
