"""ResNets: the CIFAR family (resnet20, depth 6n+2) and ImageNet-style resnet18 / resnet50.

Every residual stream (a stage's block outputs, plus the stem when no projection separates
them) shares one permutation group; each block's hidden channels have groups of their own.
A projection shortcut (1x1 conv + norm) starts a new stream group.
"""

from __future__ import annotations

import torch
from torch import nn

from ..permutation.spec import PermutationSpec, SpecBuilder
from .common import TODAYS_INIT, initialise, modules_of, norm_layer, scaled


class Shortcut(nn.Module):
    """Projection shortcut: 1x1 conv (stride) + norm."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
        self.norm = norm_layer(norm, c_out, spatial=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class ResidualBlock(nn.Module):
    """What the ResNet asks of its blocks: a shortcut (None: the identity) and their part of the spec."""

    expansion = 1
    shortcut: Shortcut | None

    def spec(self, b: SpecBuilder, name: str, p_in: str, p_out: str) -> None:
        raise NotImplementedError


class BasicBlock(ResidualBlock):
    """conv3x3 → norm → ReLU → conv3x3 → norm, plus the shortcut, then ReLU."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm_layer(norm, planes, spatial=True)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, c_out, 3, padding=1, bias=False)
        self.norm2 = norm_layer(norm, c_out, spatial=True)
        self.shortcut = Shortcut(c_in, c_out, stride, norm) if stride != 1 or c_in != c_out else None
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        skip = self.shortcut(x) if self.shortcut is not None else x
        return self.act2(out + skip)

    def spec(self, b: SpecBuilder, name: str, p_in: str, p_out: str) -> None:
        inner = f"{name}.inner"
        b.conv(f"{name}.conv1", p_in, inner)
        b.norm(f"{name}.norm1", inner, self.norm1)
        b.activation(inner, f"{name}.act1")
        b.repair(f"{name}.norm1")
        b.conv(f"{name}.conv2", inner, p_out)
        b.norm(f"{name}.norm2", p_out, self.norm2)
        b.repair(f"{name}.norm2")
        if self.shortcut is not None:
            b.conv(f"{name}.shortcut.conv", p_in, p_out)
            b.norm(f"{name}.shortcut.norm", p_out, self.shortcut.norm)
            b.repair(f"{name}.shortcut.norm")
        b.activation(p_out, f"{name}.act2")
        b.carry(f"{name}.act2", p_out)


class Bottleneck(ResidualBlock):
    """1x1 → 3x3 (stride) → 1x1 (x4 channels), each with a norm, plus the shortcut, then ReLU."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.norm1 = norm_layer(norm, planes, spatial=True)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.norm2 = norm_layer(norm, planes, spatial=True)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.norm3 = norm_layer(norm, c_out, spatial=True)
        self.shortcut = Shortcut(c_in, c_out, stride, norm) if stride != 1 or c_in != c_out else None
        self.act3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.act2(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        skip = self.shortcut(x) if self.shortcut is not None else x
        return self.act3(out + skip)

    def spec(self, b: SpecBuilder, name: str, p_in: str, p_out: str) -> None:
        inner1, inner2 = f"{name}.inner1", f"{name}.inner2"
        b.conv(f"{name}.conv1", p_in, inner1)
        b.norm(f"{name}.norm1", inner1, self.norm1)
        b.activation(inner1, f"{name}.act1")
        b.repair(f"{name}.norm1")
        b.conv(f"{name}.conv2", inner1, inner2)
        b.norm(f"{name}.norm2", inner2, self.norm2)
        b.activation(inner2, f"{name}.act2")
        b.repair(f"{name}.norm2")
        b.conv(f"{name}.conv3", inner2, p_out)
        b.norm(f"{name}.norm3", p_out, self.norm3)
        b.repair(f"{name}.norm3")
        if self.shortcut is not None:
            b.conv(f"{name}.shortcut.conv", p_in, p_out)
            b.norm(f"{name}.shortcut.norm", p_out, self.shortcut.norm)
            b.repair(f"{name}.shortcut.norm")
        b.activation(p_out, f"{name}.act3")
        b.carry(f"{name}.act3", p_out)


class Stem(nn.Module):
    """First conv → norm → ReLU (→ 3x3 max-pool for the ImageNet stem)."""

    def __init__(self, c_in: int, c_out: int, norm: str, *, imagenet: bool) -> None:
        super().__init__()
        if imagenet:
            self.conv = nn.Conv2d(c_in, c_out, 7, stride=2, padding=3, bias=False)
        else:
            self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm = norm_layer(norm, c_out, spatial=True)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1) if imagenet else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm(self.conv(x)))
        return self.pool(x) if self.pool is not None else x


class ResNet(nn.Module):
    """A stem, stages of residual blocks, global average pool and a linear classifier."""

    def __init__(
        self,
        *,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: list[int],
        stage_channels: list[int],
        norm: str,
        num_classes: int,
        in_shape: tuple[int, ...],
        imagenet_stem: bool,
        init: str = TODAYS_INIT,
    ) -> None:
        super().__init__()
        if norm not in ("batch", "layer"):
            raise ValueError(f"resnets need norm 'batch' or 'layer', got {norm!r}")
        c = stage_channels[0]
        self.stem = Stem(in_shape[0], c, norm, imagenet=imagenet_stem)
        stages = []
        for s, (n_blocks, planes) in enumerate(zip(blocks_per_stage, stage_channels, strict=True)):
            blocks = []
            for i in range(n_blocks):
                stride = 2 if (i == 0 and s > 0) else 1
                blocks.append(block(c, planes, stride, norm))
                c = planes * block.expansion
            stages.append(nn.ModuleList(blocks))
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(c, num_classes)
        initialise(self, init, head=self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self._blocks():
            for blk in stage:
                x = blk(x)
        return self.head(self.flatten(self.pool(x)))

    def _blocks(self) -> list[list[ResidualBlock]]:
        """The residual blocks, stage by stage."""
        return [modules_of(stage, ResidualBlock) for stage in modules_of(self.stages, nn.ModuleList)]

    def permutation_spec(self) -> PermutationSpec:
        b = SpecBuilder()
        stream = "stem"
        b.conv("stem.conv", None, stream)
        b.norm("stem.norm", stream, self.stem.norm)
        b.activation(stream, "stem.act")
        b.repair("stem.norm")
        for s, stage in enumerate(self._blocks()):
            for i, blk in enumerate(stage):
                # An identity shortcut keeps the stream's group; a projection starts a new one.
                p_out = stream if blk.shortcut is None else f"stages.{s}" if i == 0 else f"stages.{s}.{i}"
                blk.spec(b, f"stages.{s}.{i}", stream, p_out)
                stream = p_out
        b.carry("flatten", stream, classifier_input=True)
        b.linear("head", stream, None)
        return b.build(self)


def cifar_resnet(
    *, width: float, depth: int, norm: str, num_classes: int, in_shape: tuple[int, ...], init: str = TODAYS_INIT
) -> ResNet:
    """CIFAR ResNet (He et al. 2016, section 4.2): depth = 6n+2, 16·width channels in stage 1."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet20-family depth must be 6n+2 (8, 14, 20, 32, 44, 56, ...), got {depth}")
    n = (depth - 2) // 6
    return ResNet(
        block=BasicBlock,
        blocks_per_stage=[n, n, n],
        stage_channels=[scaled(16, width), scaled(32, width), scaled(64, width)],
        norm=norm,
        num_classes=num_classes,
        in_shape=in_shape,
        imagenet_stem=False,
        init=init,
    )


def _imagenet_resnet(block, blocks, *, width, norm, num_classes, in_shape, init) -> ResNet:
    # Small images (CIFAR, MNIST) get the 3x3 stride-1 stem without max-pool, as in the REPAIR
    # paper's CIFAR-10 ResNet18; larger ones the 7x7 stride-2 stem with max-pool.
    return ResNet(
        block=block,
        blocks_per_stage=blocks,
        stage_channels=[scaled(c, width) for c in (64, 128, 256, 512)],
        norm=norm,
        num_classes=num_classes,
        in_shape=in_shape,
        imagenet_stem=min(in_shape[1:]) > 64,
        init=init,
    )


def resnet18(
    *, width: float, depth: int, norm: str, num_classes: int, in_shape: tuple[int, ...], init: str = TODAYS_INIT
) -> ResNet:
    """ResNet18 (BasicBlock, 2-2-2-2) with a width multiplier on 64-128-256-512 channels."""
    return _imagenet_resnet(
        BasicBlock, [2, 2, 2, 2], width=width, norm=norm, num_classes=num_classes, in_shape=in_shape, init=init
    )


def resnet50(
    *, width: float, depth: int, norm: str, num_classes: int, in_shape: tuple[int, ...], init: str = TODAYS_INIT
) -> ResNet:
    """ResNet50 (Bottleneck, 3-4-6-3) with a width multiplier on 64-128-256-512 planes."""
    return _imagenet_resnet(
        Bottleneck, [3, 4, 6, 3], width=width, norm=norm, num_classes=num_classes, in_shape=in_shape, init=init
    )
