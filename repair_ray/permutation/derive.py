"""Permutation specs derived from the graph of any PyTorch network that ``torch.fx`` can trace.

The network is traced once (on any device, the meta device included) and every tensor in the
graph gets, for each of its axes, a *layout*: which channel space runs along it. A channel
space is a union-find variable; an operation that ties two axes (a residual add, a linear
layer's input and the previous layer's output, a norm's affine and its input) unites their
variables. Axes no permutation may act on (the input's, the output's, batch and spatial axes)
are united with the variable ``FIXED``. At the end every free variable that reaches a
parameter is a permutation group, and each parameter and buffer axis says which group acts on
it (or, for a concatenation or a flattened feature map, which groups in which order:
:class:`Segment`).

An operation whose symmetry is not a plain permutation of channels (grouped convolutions,
GroupNorm with several groups, reshapes that split channels into heads or shuffle them,
attention modules, anything unknown) raises :class:`SpecError` naming the module and the op
as soon as a free channel axis reaches it: the spec is never wrong, at worst refused.

The parts, in the order they run: :mod:`.trace` (the graph and its shapes), this module (each
node to its rule; the rules of layers), :mod:`.walk` (the walk's state; the rules of ops that move
axes), :mod:`.layouts` (channel spaces and how axes are tied), :mod:`.kinds` (the modules and ops
known, by kind), :mod:`.build` (the spec of the finished walk).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .build import build_spec
from .kinds import (
    BINARY,
    CONVS,
    ELEMENTWISE_MODULES,
    NON_TENSOR,
    REDUCE,
    RESHAPE,
    SPATIAL,
    SPATIAL_MODULES,
    TRANSPOSED,
    UNARY,
)
from .layouts import Layout, Slot, TensorLayout, axis_size, fixed, is_tensor_layout, size, tensor_layouts
from .spec import PermutationSpec
from .trace import arg, flatten_args, get_attr, int_arg, node_shape, op_name, target, trace
from .walk import Value, Walk, param_axes

__all__ = ["derive_spec", "trace"]


def derive_spec(model: nn.Module, example_input: Any) -> PermutationSpec:
    """The permutation spec of ``model``, derived from its traced graph.

    Args:
        model: any ``nn.Module`` that ``torch.fx.symbolic_trace`` can trace.
        example_input: one input batch (a tensor or a tuple of tensors), on the model's device;
            on the meta device nothing is computed.

    Raises:
        SpecError: naming the module and op where a channel symmetry is not a plain permutation
            (or cannot be told), or when the model cannot be traced.
    """
    gm = trace(model, example_input)
    return _Derivation(model, gm).run()


class _Derivation(Walk):
    """The walk with the rules of layers, and the dispatch of every node to its rule."""

    def run(self) -> PermutationSpec:
        for node in self.gm.graph.nodes:
            self.node = node
            self.env[node] = self.visit(node)
        self.node = None
        return build_spec(self)

    def visit(self, node: fx.Node) -> Value:
        if node.op == "placeholder":
            return self.fixed_like(node)
        if node.op == "get_attr":
            value = get_attr(self.gm, target(node))
            if isinstance(value, torch.Tensor):
                if id(value) in self.tensor_names:
                    return tuple(Slot(id(value), ax, n) for ax, n in enumerate(value.shape))
                return tuple(fixed(n) for n in value.shape)
            return None
        if node.op == "output":  # what the network computes is not permuted
            for item in flatten_args(node.args):
                for axis in tensor_layouts(self.layout_of(item)):
                    self.channels.fix(axis)
            return None
        if node.op == "call_module":
            return self.call_module(node, self.model.get_submodule(target(node)))
        return self.call_op(node, op_name(node))

    # ---- modules -----------------------------------------------------------------------------

    def call_module(self, node: fx.Node, m: nn.Module) -> Value:
        value = self.layout_of(node.args[0]) if node.args else None
        out_shape = node_shape(node)
        if isinstance(m, nn.Linear):
            return self.linear(self.tensor(value), m.weight, m.bias)
        if isinstance(m, CONVS):
            return self.conv(self.tensor(value), m.weight, m.bias, m.groups, self.shape(node))
        if isinstance(m, TRANSPOSED):
            if m.groups != 1:
                return self.refuse_or_fixed(node, f"a grouped transposed convolution (groups={m.groups})")
            x = self.tensor(value)
            self.channels.meet(x[1], Slot(id(m.weight), 0, m.weight.shape[0]))
            out_c = self.channels.resolve(Slot(id(m.weight), 1, m.weight.shape[1]))
            self._bias(m.bias, out_c)
            return self.spatial_out(x, self.shape(node), channel=out_c)
        if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.modules.instancenorm._InstanceNorm):
            return self.channel_params(self.tensor(value), 1, [m.weight, m.bias, m.running_mean, m.running_var])
        if isinstance(m, nn.LayerNorm):
            return self.layer_norm(self.tensor(value), len(m.normalized_shape), m.weight, m.bias)
        if isinstance(m, nn.GroupNorm):
            return self.group_norm(self.tensor(value), m.num_groups, m.num_channels, m.weight, m.bias)
        if isinstance(m, nn.PReLU):
            if m.num_parameters == 1:
                return value
            return self.channel_params(self.tensor(value), 1, [m.weight])
        if isinstance(m, nn.Embedding):
            x = self.tensor(value)
            if any(self.channels.is_free(self.channels.resolve(a)) for a in x):
                raise self.error("an embedding's input must be indices")
            self.channels.meet(Slot(id(m.weight), 0, m.weight.shape[0]), fixed(m.weight.shape[0]))
            return tuple(x) + (self.channels.resolve(Slot(id(m.weight), 1, m.weight.shape[1])),)
        if isinstance(m, ELEMENTWISE_MODULES):
            return self.unary(node, value)
        if isinstance(m, SPATIAL_MODULES):
            return self.spatial(node, self.tensor(value), out_shape)
        if isinstance(m, nn.Flatten | nn.Unflatten):
            return self.reshape(self.tensor(value), self.shape(node.args[0]), self.shape(node))
        if isinstance(m, nn.MultiheadAttention):
            return self.refuse_or_fixed(
                node,
                "attention heads (nn.MultiheadAttention) are not supported: its packed in_proj weight needs a "
                "per-head permutation structure that repair_ray does not derive",
            )
        if isinstance(m, nn.ChannelShuffle | nn.PixelShuffle | nn.PixelUnshuffle | nn.LocalResponseNorm):
            return self.refuse_or_fixed(node, f"{type(m).__name__} mixes or reorders channels by position")
        return self.refuse_or_fixed(
            node, f"repair_ray does not know how {type(m).__name__} treats its channels, so it cannot tell its symmetry"
        )

    def _bias(self, bias: torch.Tensor | None, channels: Layout) -> None:
        if bias is not None:
            self.channels.meet(Slot(id(bias), 0, bias.shape[0]), channels)

    # ---- layers (modules and their functional forms) -----------------------------------------

    def linear(self, x: TensorLayout, weight: Any, bias: Any) -> TensorLayout:
        w = param_axes(weight)
        self.channels.meet(x[-1], w[1])
        out = self.channels.resolve(w[0])
        if bias is not None:
            self.channels.meet(param_axes(bias)[0], out)
        return tuple(x[:-1]) + (out,)

    def conv(self, x: TensorLayout, weight: Any, bias: Any, groups: int, out_shape: tuple[int, ...]) -> TensorLayout:
        channels = self.channels
        w = param_axes(weight)
        c_in = size(channels.resolve(x[1]))
        for k in range(2, len(w)):
            channels.meet(w[k], fixed(axis_size(w[k])))
        if groups == 1:
            channels.meet(x[1], w[1])
            out = channels.resolve(w[0])
        elif groups == c_in and axis_size(w[0]) == c_in:  # depthwise: output channel c filters input channel c
            channels.meet(w[1], fixed(1))
            out = channels.meet(x[1], w[0])
        elif not channels.is_free(channels.resolve(x[1])):  # grouped, on fixed input: outputs stay in place
            channels.meet(w[1], fixed(axis_size(w[1])))
            out = channels.meet(w[0], fixed(axis_size(w[0])))
        else:
            raise self.error(
                f"a grouped convolution (groups={groups} of {c_in} input channels) only permits permutations "
                "within and of whole groups, which is not a plain channel permutation"
            )
        if bias is not None:
            channels.meet(param_axes(bias)[0], out)
        return self.spatial_out(x, out_shape, channel=out)

    def spatial_out(self, x: TensorLayout, out_shape: tuple[int, ...], *, channel: Layout) -> TensorLayout:
        for axis in x[2:]:
            if self.channels.is_free(self.channels.resolve(axis)):
                raise self.error("slides over an axis that carries channels")
        return (self.channels.resolve(x[0]), channel, *(fixed(n) for n in out_shape[2:]))

    def channel_params(self, x: TensorLayout, axis: int, params: Sequence[Any]) -> TensorLayout:
        axes = [x[axis]] + [param_axes(p)[0] for p in params if p is not None]
        out = self.channels.meet(*axes)
        return tuple(out if i == axis else a for i, a in enumerate(x))

    def layer_norm(self, x: TensorLayout, k: int, weight: Any, bias: Any) -> TensorLayout:
        # normalising over the last k axes is invariant to permuting them; the affine follows them
        out = list(x)
        for j in range(k):
            ax = len(x) - k + j
            params = [param_axes(p)[j] for p in (weight, bias) if p is not None]
            out[ax] = self.channels.meet(x[ax], *params)
        return tuple(out)

    def group_norm(self, x: TensorLayout, groups: int, channels: int, weight: Any, bias: Any) -> TensorLayout:
        if groups not in (1, channels) and self.channels.is_free(self.channels.resolve(x[1])):
            raise self.error(
                f"GroupNorm with {groups} groups of {channels} channels only permits permutations within and of "
                "whole groups (GroupNorm(1, C) and GroupNorm(C, C) are supported)"
            )
        return self.channel_params(x, 1, [weight, bias])

    def unary(self, node: fx.Node, x: Value) -> Value:
        out_shape = node_shape(node)
        if out_shape is not None and len(out_shape) != len(x):
            return self.refuse_or_fixed(node, "changes the number of axes")
        return x

    def spatial(self, node: fx.Node, x: TensorLayout, out_shape: tuple[int, ...] | None) -> Value:
        if out_shape is None or len(out_shape) != len(x) or len(x) < 3:
            return self.refuse_or_fixed(node, "pools or resizes a tensor without spatial axes after the channels")
        return self.spatial_out(x, out_shape, channel=self.channels.resolve(x[1]))

    # ---- functions and methods ---------------------------------------------------------------

    def call_op(self, node: fx.Node, name: str) -> Value:
        args, kwargs = node.args, node.kwargs
        out_shape = node_shape(node)
        value = self.layout_of(args[0]) if args else None
        if name in NON_TENSOR or (out_shape is None and node.meta.get("tensor_meta") is None):
            return None
        if name == "getitem":
            return self.getitem(node, value, args[1])
        if not any(is_tensor_layout(self.layout_of(a)) for a in flatten_args((args, kwargs))):
            return self.fixed_like(node)  # made from constants and shapes only
        if name in UNARY or (name == "pow" and not isinstance(args[1], fx.Node)):
            return self.unary(node, value)
        if name in BINARY:
            return self.broadcast(node, [self.layout_of(a) for a in flatten_args((args, kwargs))], self.shape(node))
        if name in ("linear",):
            return self.linear(self.tensor(value), self.operand(node, 1, "weight"), self.operand(node, 2, "bias"))
        if name in ("conv1d", "conv2d", "conv3d"):
            groups = self.operand(node, 6, "groups") or 1  # a size computed in the graph has no layout: None
            weight, bias = self.operand(node, 1, "weight"), self.operand(node, 2, "bias")
            return self.conv(self.tensor(value), weight, bias, groups, self.shape(node))
        if name == "batch_norm":
            named = ((3, "weight"), (4, "bias"), (1, "running_mean"), (2, "running_var"))
            params = [self.operand(node, i, k) for i, k in named]
            return self.channel_params(self.tensor(value), 1, params)
        if name == "layer_norm":
            shape = arg(node, 1, "normalized_shape")
            if not isinstance(shape, (int, list, tuple)):
                raise self.error("normalises over a shape computed in the graph")
            k = 1 if isinstance(shape, int) else len(shape)
            weight, bias = self.operand(node, 2, "weight"), self.operand(node, 3, "bias")
            return self.layer_norm(self.tensor(value), k, weight, bias)
        if name == "group_norm":
            x = self.tensor(value)
            channels = size(self.channels.resolve(x[1]))
            weight, bias = self.operand(node, 2, "weight"), self.operand(node, 3, "bias")
            return self.group_norm(x, int_arg(node, 1, "num_groups"), channels, weight, bias)
        if name in SPATIAL:
            return self.spatial(node, self.tensor(value), out_shape)
        if name == "pad":
            out = []
            for axis, n_in, n_out in zip(self.tensor(value), self.shape(args[0]), self.shape(node), strict=True):
                if n_in != n_out and self.channels.is_free(self.channels.resolve(axis)):
                    raise self.error("pads an axis that carries channels")
                out.append(axis if n_in == n_out else fixed(n_out))
            return tuple(out)
        if name in ("expand", "expand_as", "broadcast_to"):
            return self.broadcast(node, [value], self.shape(node))
        if name in RESHAPE:
            return self.reshape(self.tensor(value), self.shape(args[0]), self.shape(node))
        if name in ("permute", "transpose", "t", "movedim", "swapaxes", "swapdims"):
            return self.permute(node, name, self.tensor(value))
        if name in ("max", "min") and isinstance(self.operand(node, 1, "other"), tuple):
            return self.broadcast(node, [self.layout_of(a) for a in node.args], self.shape(node))
        if name in REDUCE or name in ("max", "min"):
            return self.reduce(node, name, self.tensor(value))
        if name in ("cat", "concat", "concatenate"):
            return self.cat(node)
        if name == "stack":
            return self.stack(node, self.shape(node))
        if name in ("split", "chunk", "unbind", "tensor_split"):
            return self.split(node, name, self.tensor(value))
        if name in ("matmul", "mm", "bmm"):
            return self.matmul(self.tensor(value), self.tensor_of(args[1]))
        if name == "einsum":
            return self.einsum(node)
        if name == "scaled_dot_product_attention":
            query, key, values = (self.tensor_of(a) for a in args[:3])
            self.channels.meet(query[-1], key[-1])
            self.channels.meet(key[-2], values[-2])
            batch = [self.channels.meet(*axes) for axes in zip(query[:-2], key[:-2], values[:-2], strict=True)]
            return (*batch, self.channels.resolve(query[-2]), self.channels.resolve(values[-1]))
        return self.refuse_or_fixed(
            node, "repair_ray does not know how this op treats channels, so it cannot tell its symmetry"
        )
