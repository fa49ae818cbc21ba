"""Networks outside the zoo, written the way researchers write them (functional ops included).

They are importable as ``tests.custom_nets:<factory>``, so sweeps in the tests can name them.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class UNetClassifier(nn.Module):
    """A U-Net: encoder, bottleneck, decoder with concatenation skips, then a classifier head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        w = width
        self.enc1 = conv_bn(in_channels, w)
        self.enc2 = conv_bn(w, 2 * w)
        self.mid = conv_bn(2 * w, 2 * w)
        self.dec2 = conv_bn(4 * w, w)  # upsampled mid ++ enc2
        self.dec1 = conv_bn(2 * w, w)  # upsampled dec2 ++ enc1
        self.head = nn.Linear(w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(m, scale_factor=2.0), e2], dim=1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], dim=1))
        return self.head(torch.flatten(d1.mean((2, 3)), 1))


class ResidualMLP(nn.Module):
    """Pre-norm residual blocks of LayerNorm → Linear → GELU → Linear, with a final LayerNorm."""

    def __init__(self, in_shape=(1, 28, 28), num_classes: int = 10, width: int = 32, depth: int = 2) -> None:
        super().__init__()
        d_in = int(torch.tensor(in_shape).prod())
        self.embed = nn.Linear(d_in, width)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.fc1 = nn.ModuleList(nn.Linear(width, 2 * width) for _ in range(depth))
        self.fc2 = nn.ModuleList(nn.Linear(2 * width, width) for _ in range(depth))
        self.final = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x.flatten(1))
        for norm, fc1, fc2 in zip(self.norms, self.fc1, self.fc2, strict=True):
            x = x + fc2(F.gelu(fc1(norm(x))))
        return self.head(self.final(x))


class SEBlockNet(nn.Module):
    """Depthwise-separable convolutions, a squeeze-and-excitation gate, GroupNorm(1, C), torch.flatten."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.gn = nn.GroupNorm(1, width)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.bn = nn.BatchNorm2d(width)
        self.se1 = nn.Linear(width, width // 4)
        self.se2 = nn.Linear(width // 4, width)
        self.pw = nn.Conv2d(width, 2 * width, 1)
        self.head = nn.Linear(2 * width * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.gn(self.stem(x)))
        x = F.hardswish(self.bn(self.dw(x)))
        s = x.mean((2, 3))
        s = torch.sigmoid(self.se2(torch.relu(self.se1(s))))
        x = x * s[:, :, None, None]
        x = F.relu(self.pw(x))
        x = F.adaptive_avg_pool2d(x, 4)
        return self.head(torch.flatten(x, 1))  # a linear over flattened maps: blocks of 4x4 per channel


class ConvNeXtBlockNet(nn.Module):
    """ConvNeXt-style: depthwise conv, channels-last LayerNorm and MLP, layer scale, residual."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 2, stride=2)
        self.dw = nn.ModuleList(nn.Conv2d(width, width, 7, padding=3, groups=width) for _ in range(depth))
        self.norm = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.up = nn.ModuleList(nn.Linear(width, 4 * width) for _ in range(depth))
        self.down = nn.ModuleList(nn.Linear(4 * width, width) for _ in range(depth))
        self.gamma = nn.ParameterList(nn.Parameter(torch.full((width,), 0.5)) for _ in range(depth))
        self.head_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for dw, norm, up, down, gamma in zip(self.dw, self.norm, self.up, self.down, self.gamma, strict=True):
            y = dw(x).permute(0, 2, 3, 1)  # (N, H, W, C)
            y = down(F.gelu(up(norm(y))))
            x = x + (gamma * y).permute(0, 3, 1, 2)
        return self.head(self.head_norm(x.mean((-2, -1))))


class ChannelsLastFlatten(nn.Module):
    """A conv whose channels-last map is flattened: each channel recurs once per position."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.fc = nn.Linear(9 * width, 32)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv(x))).permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return self.head(torch.relu(self.fc(x)))


class FunctionalNet(nn.Module):
    """Parameters used through functions: F.conv2d, F.linear, F.layer_norm, einsum, matmul."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.conv_w = nn.Parameter(torch.randn(width, in_channels, 3, 3) * 0.3)
        self.conv_b = nn.Parameter(torch.randn(width) * 0.1)
        self.ln_w = nn.Parameter(torch.ones(width))
        self.ln_b = nn.Parameter(torch.zeros(width))
        self.mix = nn.Parameter(torch.randn(width, 2 * width) * 0.3)  # used with einsum
        self.proj = nn.Parameter(torch.randn(2 * width, width) * 0.3)  # used with matmul
        self.head_w = nn.Parameter(torch.randn(num_classes, width) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.conv2d(x, self.conv_w, self.conv_b, padding=1))
        x = x.mean((2, 3))
        x = F.layer_norm(x, (x.shape[-1],), self.ln_w, self.ln_b)
        h = torch.tanh(torch.einsum("nc,cd->nd", x, self.mix))
        x = x + h @ self.proj
        return F.linear(x, self.head_w)


class SplitBack(nn.Module):
    """Two branches concatenated, normalised together, then split back into the branches."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.a = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.b = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(10)
        self.after_a = nn.Conv2d(4, 5, 1)
        self.after_b = nn.Conv2d(6, 5, 1)
        self.head = nn.Linear(10, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        left, right = torch.split(y, [4, 6], dim=1)
        z = torch.cat([self.after_a(left), self.after_b(right[:, :, :, :])], 1)
        return self.head(F.relu(z).mean((2, 3)))


class ArgmaxChannels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(12, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        h = self.a(x.flatten(1))
        return self.head(h) * torch.max(h, dim=1)[1][:, None]


def unet(in_channels: int = 3, num_classes: int = 10, width: int = 8) -> nn.Module:
    return UNetClassifier(in_channels, num_classes, width)


def residual_mlp(in_shape=(1, 28, 28), num_classes: int = 10, width: int = 32, depth: int = 2) -> nn.Module:
    return ResidualMLP(in_shape, num_classes, width, depth)


def ten_classes(in_shape=(1, 28, 28)) -> nn.Module:
    """Ignores the dataset's number of classes."""
    return ResidualMLP(in_shape, 10, 8, 1)


# --- networks whose symmetry is not a plain channel permutation: each must be refused ---------


class GroupedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.grouped(torch.relu(self.a(x))).mean((2, 3)))


class ManyGroupNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(4, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.gn(self.a(x)).mean((2, 3)))


class ChannelShuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.a(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(self.b(x).mean((2, 3)))


class SliceChannels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(12, 16)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(torch.relu(self.a(x.flatten(1)))[:, :8])


class CumsumChannels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(12, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(torch.cumsum(self.a(x.flatten(1)), dim=1))


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        t = self.embed(x.flatten(2))  # (N, 3 tokens, 4) -> (N, 3, 16)
        return self.head(self.attn(t, t, t, need_weights=False)[0].mean(1))


class DyingMLP(nn.Module):
    """An MLP whose process exits (as a killed worker's would) at training step ``after_steps`` of the
    rank ``rank`` of a data-parallel group, once: the first time, while the file ``marker`` exists
    (it is removed first). Elsewhere, and after that, a plain MLP."""

    def __init__(
        self,
        in_shape=(1, 28, 28),
        num_classes: int = 10,
        width: int = 16,
        marker: str = "",
        after_steps: int = 1,
        rank: int = 1,
    ) -> None:
        super().__init__()
        features = 1
        for size in in_shape:
            features *= size
        self.flatten = nn.Flatten()
        self.hidden = nn.Linear(features, width)
        self.relu = nn.ReLU()
        self.head = nn.Linear(width, num_classes)
        self.marker, self.after_steps, self.rank, self.steps = marker, after_steps, rank, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distributed = torch.distributed.is_initialized()
        if self.training and self.marker and distributed and torch.distributed.get_rank() == self.rank:
            self.steps += 1
            if self.steps >= self.after_steps and os.path.exists(self.marker):
                os.remove(self.marker)
                os._exit(1)
        return self.head(self.relu(self.hidden(self.flatten(x))))


def dying_mlp(
    in_shape=(1, 28, 28), num_classes: int = 10, width: int = 16, marker: str = "", after_steps: int = 1
) -> nn.Module:
    return DyingMLP(in_shape, num_classes, width, marker, after_steps)
