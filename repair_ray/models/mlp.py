"""Multi-layer perceptron: ``depth`` hidden layers of ``width`` units, or one width per layer
(LeNet-300-100 of Frankle et al. is ``width=(300, 100)``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..permutation.spec import PermutationSpec, SpecBuilder
from .common import TODAYS_INIT, initialise, make_norm, modules_of


class DenseBlock(nn.Module):
    """Linear → optional norm → ReLU."""

    def __init__(self, d_in: int, d_out: int, norm: str) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out, bias=norm == "none")
        self.norm = make_norm(norm, d_out, spatial=False)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.act(x)


class MLP(nn.Module):
    """``in_shape`` flattened → ``depth`` × DenseBlock(width) → Linear(num_classes); ``width`` may list
    one width per hidden layer (then ``depth`` is its length)."""

    def __init__(
        self,
        *,
        width: int | Sequence[int],
        depth: int,
        norm: str,
        num_classes: int,
        in_shape: tuple[int, ...],
        init: str = TODAYS_INIT,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in width] if isinstance(width, Sequence) else [int(width)] * depth
        if len(widths) != depth:
            raise ValueError(f"width lists {len(widths)} hidden layers but depth is {depth}")
        self.flatten = nn.Flatten()
        sizes = [math.prod(in_shape), *widths]
        self.layers = nn.ModuleList(DenseBlock(sizes[i], sizes[i + 1], norm) for i in range(depth))
        self.head = nn.Linear(sizes[-1], num_classes)
        initialise(self, init, head=self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)

    def permutation_spec(self) -> PermutationSpec:
        b = SpecBuilder()
        p_prev: str | None = None
        for i, layer in enumerate(modules_of(self.layers, DenseBlock)):
            p = f"layers.{i}"
            b.linear(f"layers.{i}.linear", p_prev, p, bias=layer.linear.bias is not None)
            b.norm(f"layers.{i}.norm", p, layer.norm)
            b.activation(p, f"layers.{i}.act")
            b.repair(f"layers.{i}.norm" if layer.norm is not None else f"layers.{i}.linear")
            p_prev = p
        b.linear("head", p_prev, None)
        return b.build(self)
