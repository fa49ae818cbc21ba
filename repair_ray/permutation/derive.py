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
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .spec import PermutationSpec, Segment, SpecError

FIXED = 0
Seg = tuple[int, int, int]  # (variable, units, inner)
Layout = tuple[Seg, ...]  # the segments along one axis


@dataclass(frozen=True)
class Slot:
    """An axis of a parameter or buffer, bound to a layout on first use."""

    tensor: int  # id of the tensor
    axis: int
    size: int


Axis = Layout | Slot
TensorLayout = tuple[Axis, ...]

_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.Threshold, nn.LogSigmoid,
)  # fmt: skip
_ELEMENTWISE_MODULES = (
    *_ACTIVATIONS, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout, nn.Softmax, nn.LogSoftmax, nn.Softmax2d,
)  # fmt: skip
_SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d, nn.LPPool2d,
)  # fmt: skip
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm, nn.GroupNorm)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

_UNARY = {
    "relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh",
    "leaky_relu", "elu", "selu", "celu", "mish", "softplus", "softsign", "logsigmoid", "dropout",
    "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "contiguous", "clone",
    "detach", "float", "double", "half", "bfloat16", "to", "type", "type_as", "abs", "neg", "exp", "log",
    "sqrt", "rsqrt", "square", "sin", "cos", "erf", "clamp", "clamp_min", "clamp_max", "clip", "sign",
    "softmax", "log_softmax", "nan_to_num", "reciprocal", "floor", "ceil", "round", "sigmoid_", "tanh_",
    "stochastic_depth", "requires_grad_", "cpu", "cuda", "hardswish_", "silu_", "gelu_", "threshold",
}  # fmt: skip
_BINARY = {
    "add", "sub", "mul", "truediv", "div", "floordiv", "maximum", "minimum", "where", "iadd", "isub",
    "imul", "itruediv", "add_", "mul_", "sub_", "div_", "rsub", "pow", "eq", "ne", "lt", "le", "gt", "ge",
    "logical_and", "logical_or", "and_", "or_", "addcmul", "lerp", "masked_fill", "fmod", "remainder",
}  # fmt: skip
_REDUCE = {"mean", "sum", "amax", "amin", "std", "var", "logsumexp", "prod", "norm", "nansum", "nanmean"}
_SPATIAL = {
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "interpolate", "upsample", "upsample_nearest",
    "upsample_bilinear",
}  # fmt: skip
_RESHAPE = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
_NON_TENSOR = {"size", "dim", "numel", "getattr", "len", "__len__", "ndimension", "nelement"}

# Kinds of point, best first, for activation matching: a nonlinearity's output, a norm's, an affine layer's.
_POINT_KINDS = ("activation", "norm", "affine")


class _Vars:
    """Union-find over channel-space variables; ``FIXED`` is always the root of its class."""

    def __init__(self) -> None:
        self.parent = [FIXED]

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, v: int) -> int:
        while self.parent[v] != v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)  # FIXED = 0 stays the root; else the oldest
            self.parent[hi] = lo


def _fixed(n: int) -> Layout:
    return ((FIXED, n, 1),)


def _size(layout: Layout) -> int:
    return sum(u * i for _, u, i in layout)


class _Tracer(fx.Tracer):
    """The default tracer, recording in each node the module it was called from."""

    def __init__(self) -> None:
        super().__init__()
        self._stack: list[str] = []

    def call_module(self, m, forward, args, kwargs):
        self._stack.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self._stack.pop()

    def create_node(self, *args, **kwargs):
        node = super().create_node(*args, **kwargs)
        node.meta["scope"] = self._stack[-1] if self._stack else ""
        return node


@dataclass(frozen=True)
class _TensorShape:
    shape: tuple[int, ...]


def _shape_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _TensorShape(tuple(value.shape))
    if isinstance(value, (tuple, list)):
        return tuple(_shape_meta(v) for v in value)
    return None


class _Shapes(fx.Interpreter):
    """Runs the graph once, recording every node's output shape(s) in ``node.meta['tensor_meta']``."""

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        n.meta["tensor_meta"] = _shape_meta(result)
        return result


def trace(model: nn.Module, example_input: Any) -> fx.GraphModule:
    """The model's fx graph with every node's output shape (``node.meta['tensor_meta']``, a ``.shape``)."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as error:  # noqa: BLE001 - any tracing failure becomes one clear error
        raise SpecError(
            f"torch.fx cannot trace {type(model).__name__}: {type(error).__name__}: {error}. Permutation specs "
            "are derived from the traced graph; make the forward traceable (no Python control flow on "
            "tensor values) or give the model a permutation_spec() method"
        ) from None
    gm = fx.GraphModule(model, graph)
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _Shapes(gm).run(*inputs)
    except Exception as error:  # noqa: BLE001
        cause = error.__cause__ or error
        shapes = [tuple(x.shape) for x in inputs if isinstance(x, torch.Tensor)]
        raise SpecError(
            f"{type(model).__name__} does not run on an example input of shape {shapes}: "
            f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
        ) from None
    finally:
        model.train(was_training)
    return gm


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


class _Derivation:
    def __init__(self, model: nn.Module, gm: fx.GraphModule) -> None:
        self.model, self.gm = model, gm
        self.vars = _Vars()
        self.state = model.state_dict(keep_vars=True)
        self.tensor_names: dict[int, list[str]] = {}
        for name, t in self.state.items():
            self.tensor_names.setdefault(id(t), []).append(name)
        self.bound: dict[tuple[int, int], Layout] = {}
        self.env: dict[fx.Node, Any] = {}
        self.node: fx.Node | None = None
        self.module_calls: dict[str, int] = {}
        for n in gm.graph.nodes:
            if n.op == "call_module":
                self.module_calls[n.target] = self.module_calls.get(n.target, 0) + 1

    # ---- layouts -----------------------------------------------------------------------------

    def fresh(self, n: int) -> Layout:
        return ((self.vars.new(), n, 1),) if n > 1 else _fixed(n)

    def resolve(self, axis: Axis) -> Layout:
        """A concrete layout; an unbound parameter axis gets a fresh channel space."""
        if isinstance(axis, Slot):
            key = (axis.tensor, axis.axis)
            if key not in self.bound:
                self.bound[key] = self.fresh(axis.size)
            return self.bound[key]
        return axis

    def meet(self, *axes: Axis) -> Layout:
        """Tie axes that must carry the same permutation; returns their common layout."""
        concrete = [a for a in axes if not (isinstance(a, Slot) and (a.tensor, a.axis) not in self.bound)]
        result = self.resolve(concrete[0] if concrete else axes[0])
        for a in axes:
            if isinstance(a, Slot) and (a.tensor, a.axis) not in self.bound:
                self.bound[(a.tensor, a.axis)] = result
            else:
                self._unify(result, self.resolve(a))
        return result

    def is_free(self, layout: Layout) -> bool:
        return any(self.vars.find(v) != FIXED for v, _, _ in layout)

    def fix(self, layout: Axis) -> None:
        for v, _, _ in self.resolve(layout):
            self.vars.union(v, FIXED)

    def _unify(self, a: Layout, b: Layout) -> None:
        if a is b:
            return
        if _size(a) != _size(b):
            raise self.error(f"ties axes of sizes {_size(a)} and {_size(b)}")
        a, b = self._canonical(a), self._canonical(b)
        if not self.is_free(a) or not self.is_free(b):
            self.fix(a)
            self.fix(b)
            return
        if [(u, i) for _, u, i in a] != [(u, i) for _, u, i in b]:
            raise self.error(
                "combines two channel axes whose units are arranged differently (e.g. a concatenation "
                "added to a single layer's output); the symmetry would need splitting a channel group"
            )
        for (va, _, _), (vb, _, _) in zip(a, b, strict=True):
            self.vars.union(va, vb)

    def _canonical(self, layout: Layout) -> Layout:
        """Adjacent fixed segments merged into one."""
        out: list[Seg] = []
        for v, u, i in layout:
            if self.vars.find(v) == FIXED:
                if out and self.vars.find(out[-1][0]) == FIXED:
                    out[-1] = (FIXED, _size((out[-1],)) + u * i, 1)
                else:
                    out.append((FIXED, u * i, 1))
            else:
                out.append((self.vars.find(v), u, i))
        return tuple(out)

    # ---- errors ------------------------------------------------------------------------------

    def error(self, message: str) -> SpecError:
        node = self.node
        if node is None:
            return SpecError(message)
        where = node.meta.get("scope") or ""
        if node.op == "call_module":
            module = self.model.get_submodule(node.target)
            what = f"module {node.target!r} ({type(module).__name__})"
        else:
            what = f"op {_op_name(node)!r}" + (f" in module {where!r}" if where else " in the top-level forward")
        return SpecError(f"cannot derive a permutation symmetry through {what}: {message}")

    # ---- the walk ----------------------------------------------------------------------------

    def run(self) -> PermutationSpec:
        for node in self.gm.graph.nodes:
            self.node = node
            self.env[node] = self.visit(node)
        self.node = None
        return self.build()

    def shape(self, node: fx.Node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if hasattr(meta, "shape") else None

    def layout_of(self, arg: Any) -> TensorLayout | None:
        return self.env.get(arg) if isinstance(arg, fx.Node) else None

    def visit(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            return self.fixed_like(node)
        if node.op == "get_attr":
            value = _get_attr(self.gm, node.target)
            if isinstance(value, torch.Tensor):
                if id(value) in self.tensor_names:
                    return tuple(Slot(id(value), ax, n) for ax, n in enumerate(value.shape))
                return tuple(_fixed(n) for n in value.shape)
            return None
        if node.op == "output":  # what the network computes is not permuted
            for item in _flatten_args(node.args):
                for axis in _tensor_layouts(self.layout_of(item)):
                    self.fix(axis)
            return None
        if node.op == "call_module":
            return self.call_module(node, self.model.get_submodule(node.target))
        return self.call_op(node, _op_name(node))

    def fixed_like(self, node: fx.Node) -> Any:
        meta = node.meta.get("tensor_meta")
        if hasattr(meta, "shape"):
            return tuple(_fixed(n) for n in meta.shape)
        if isinstance(meta, (tuple, list)):
            return tuple(tuple(_fixed(n) for n in m.shape) if hasattr(m, "shape") else None for m in meta)
        return None

    def inputs(self, node: fx.Node) -> list[TensorLayout]:
        return [lay for a in _flatten_args((node.args, node.kwargs)) if _is_tensor_layout(lay := self.layout_of(a))]

    def refuse_or_fixed(self, node: fx.Node, why: str) -> Any:
        """An op we cannot see through: fine when no free channel axis reaches it, refused otherwise."""
        for lay in self.inputs(node):
            for axis in lay:
                if self.is_free(self.resolve(axis)):
                    raise self.error(why)
        return self.fixed_like(node)

    # ---- modules -----------------------------------------------------------------------------

    def call_module(self, node: fx.Node, m: nn.Module) -> Any:
        x = self.layout_of(node.args[0]) if node.args else None
        out_shape = self.shape(node)
        if isinstance(m, nn.Linear):
            return self.linear(x, m.weight, m.bias)
        if isinstance(m, _CONVS):
            return self.conv(x, m.weight, m.bias, m.groups, out_shape)
        if isinstance(m, _TRANSPOSED):
            if m.groups != 1:
                return self.refuse_or_fixed(node, f"a grouped transposed convolution (groups={m.groups})")
            self.meet(x[1], Slot(id(m.weight), 0, m.weight.shape[0]))
            out_c = self.resolve(Slot(id(m.weight), 1, m.weight.shape[1]))
            self._bias(m.bias, out_c)
            return self.spatial_out(x, out_shape, channel=out_c)
        if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.modules.instancenorm._InstanceNorm):
            return self.channel_params(x, 1, [m.weight, m.bias, m.running_mean, m.running_var])
        if isinstance(m, nn.LayerNorm):
            return self.layer_norm(x, len(m.normalized_shape), m.weight, m.bias)
        if isinstance(m, nn.GroupNorm):
            return self.group_norm(node, x, m.num_groups, m.num_channels, m.weight, m.bias)
        if isinstance(m, nn.PReLU):
            if m.num_parameters == 1:
                return x
            return self.channel_params(x, 1, [m.weight])
        if isinstance(m, nn.Embedding):
            if any(self.is_free(self.resolve(a)) for a in x):
                raise self.error("an embedding's input must be indices")
            self.meet(Slot(id(m.weight), 0, m.weight.shape[0]), _fixed(m.weight.shape[0]))
            return tuple(x) + (self.resolve(Slot(id(m.weight), 1, m.weight.shape[1])),)
        if isinstance(m, _ELEMENTWISE_MODULES):
            return self.unary(node, x)
        if isinstance(m, _SPATIAL_MODULES):
            return self.spatial(node, x, out_shape)
        if isinstance(m, nn.Flatten | nn.Unflatten):
            return self.reshape(x, self.shape(node.args[0]), out_shape)
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
            self.meet(Slot(id(bias), 0, bias.shape[0]), channels)

    def linear(self, x: TensorLayout, weight: Any, bias: Any) -> TensorLayout:
        w = _param_axes(weight)
        self.meet(x[-1], w[1])
        out = self.resolve(w[0])
        if bias is not None:
            self.meet(_param_axes(bias)[0], out)
        return tuple(x[:-1]) + (out,)

    def conv(self, x: TensorLayout, weight: Any, bias: Any, groups: int, out_shape) -> TensorLayout:
        w = _param_axes(weight)
        c_in = _size(self.resolve(x[1]))
        for k in range(2, len(w)):
            self.meet(w[k], _fixed(_axis_size(w[k])))
        if groups == 1:
            self.meet(x[1], w[1])
            out = self.resolve(w[0])
        elif groups == c_in and _axis_size(w[0]) == c_in:  # depthwise: output channel c filters input channel c
            self.meet(w[1], _fixed(1))
            out = self.meet(x[1], w[0])
        elif not self.is_free(self.resolve(x[1])):  # grouped, on fixed input: outputs stay in place
            self.meet(w[1], _fixed(_axis_size(w[1])))
            out = self.meet(w[0], _fixed(_axis_size(w[0])))
        else:
            raise self.error(
                f"a grouped convolution (groups={groups} of {c_in} input channels) only permits permutations "
                "within and of whole groups, which is not a plain channel permutation"
            )
        if bias is not None:
            self.meet(_param_axes(bias)[0], out)
        return self.spatial_out(x, out_shape, channel=out)

    def spatial_out(self, x: TensorLayout, out_shape, *, channel: Layout) -> TensorLayout:
        for axis in x[2:]:
            if self.is_free(self.resolve(axis)):
                raise self.error("slides over an axis that carries channels")
        return (self.resolve(x[0]), channel, *(_fixed(n) for n in out_shape[2:]))

    def channel_params(self, x: TensorLayout, axis: int, params: Sequence[Any]) -> TensorLayout:
        axes = [x[axis]] + [_param_axes(p)[0] for p in params if p is not None]
        out = self.meet(*axes)
        return tuple(out if i == axis else a for i, a in enumerate(x))

    def layer_norm(self, x: TensorLayout, k: int, weight: Any, bias: Any) -> TensorLayout:
        # normalising over the last k axes is invariant to permuting them; the affine follows them
        out = list(x)
        for j in range(k):
            ax = len(x) - k + j
            params = [_param_axes(p)[j] for p in (weight, bias) if p is not None]
            out[ax] = self.meet(x[ax], *params)
        return tuple(out)

    def group_norm(self, node, x, groups: int, channels: int, weight: Any, bias: Any) -> TensorLayout:
        if groups not in (1, channels) and self.is_free(self.resolve(x[1])):
            raise self.error(
                f"GroupNorm with {groups} groups of {channels} channels only permits permutations within and of "
                "whole groups (GroupNorm(1, C) and GroupNorm(C, C) are supported)"
            )
        return self.channel_params(x, 1, [weight, bias])

    def unary(self, node: fx.Node, x: TensorLayout) -> TensorLayout:
        out_shape = self.shape(node)
        if out_shape is not None and len(out_shape) != len(x):
            return self.refuse_or_fixed(node, "changes the number of axes")
        return x

    def spatial(self, node: fx.Node, x: TensorLayout, out_shape) -> TensorLayout:
        if out_shape is None or len(out_shape) != len(x) or len(x) < 3:
            return self.refuse_or_fixed(node, "pools or resizes a tensor without spatial axes after the channels")
        return self.spatial_out(x, out_shape, channel=self.resolve(x[1]))

    # ---- functions and methods ---------------------------------------------------------------

    def call_op(self, node: fx.Node, name: str) -> Any:
        args, kwargs = node.args, node.kwargs
        out_shape = self.shape(node)
        x = self.layout_of(args[0]) if args else None
        if name in _NON_TENSOR or (out_shape is None and node.meta.get("tensor_meta") is None):
            return None
        if name == "getitem":
            return self.getitem(node, x, args[1])
        if not any(_is_tensor_layout(self.layout_of(a)) for a in _flatten_args((args, kwargs))):
            return self.fixed_like(node)  # made from constants and shapes only
        if name in _UNARY or (name == "pow" and not isinstance(args[1], fx.Node)):
            return self.unary(node, x)
        if name in _BINARY:
            return self.broadcast(node, [self.layout_of(a) for a in _flatten_args((args, kwargs))], out_shape)
        if name in ("linear",):
            return self.linear(x, self._arg(node, 1, "weight"), self._arg(node, 2, "bias"))
        if name in ("conv1d", "conv2d", "conv3d"):
            groups = self._arg(node, 6, "groups") or 1
            return self.conv(x, self._arg(node, 1, "weight"), self._arg(node, 2, "bias"), groups, out_shape)
        if name == "batch_norm":
            params = [
                self._arg(node, i, k) for i, k in ((3, "weight"), (4, "bias"), (1, "running_mean"), (2, "running_var"))
            ]
            return self.channel_params(x, 1, params)
        if name == "layer_norm":
            shape = self._arg(node, 1, "normalized_shape")
            k = 1 if isinstance(shape, int) else len(shape)
            return self.layer_norm(x, k, self._arg(node, 2, "weight"), self._arg(node, 3, "bias"))
        if name == "group_norm":
            groups = self._arg(node, 1, "num_groups")
            return self.group_norm(
                node, x, groups, _size(self.resolve(x[1])), self._arg(node, 2, "weight"), self._arg(node, 3, "bias")
            )
        if name in _SPATIAL:
            return self.spatial(node, x, out_shape)
        if name == "pad":
            in_shape = self.shape(args[0])
            out = []
            for axis, n_in, n_out in zip(x, in_shape, out_shape, strict=True):
                if n_in != n_out and self.is_free(self.resolve(axis)):
                    raise self.error("pads an axis that carries channels")
                out.append(axis if n_in == n_out else _fixed(n_out))
            return tuple(out)
        if name in _RESHAPE or name in ("expand", "expand_as", "broadcast_to"):
            if name in ("expand", "expand_as", "broadcast_to"):
                return self.broadcast(node, [x], out_shape)
            return self.reshape(x, self.shape(args[0]), out_shape)
        if name in ("permute", "transpose", "t", "movedim", "swapaxes", "swapdims"):
            return self.permute(node, name, x)
        if name in ("max", "min") and isinstance(self._arg(node, 1, "other"), tuple):
            return self.broadcast(node, [self.layout_of(a) for a in node.args], out_shape)
        if name in _REDUCE or name in ("max", "min"):
            return self.reduce(node, name, x, out_shape)
        if name in ("cat", "concat", "concatenate"):
            return self.cat(node)
        if name == "stack":
            return self.stack(node, out_shape)
        if name in ("split", "chunk", "unbind", "tensor_split"):
            return self.split(node, name, x)
        if name in ("matmul", "mm", "bmm"):
            return self.matmul(x, self.layout_of(args[1]))
        if name == "einsum":
            return self.einsum(node)
        if name == "scaled_dot_product_attention":
            q, k, v = (self.layout_of(a) for a in args[:3])
            self.meet(q[-1], k[-1])
            self.meet(k[-2], v[-2])
            batch = [self.meet(a, b, c) for a, b, c in zip(q[:-2], k[:-2], v[:-2], strict=True)]
            return (*batch, self.resolve(q[-2]), self.resolve(v[-1]))
        return self.refuse_or_fixed(
            node, "repair_ray does not know how this op treats channels, so it cannot tell its symmetry"
        )

    def _arg(self, node: fx.Node, index: int, key: str) -> Any:
        value = node.args[index] if len(node.args) > index else node.kwargs.get(key)
        if isinstance(value, fx.Node):
            layout = self.layout_of(value)
            return _TensorAxes(layout) if layout is not None else None
        return value

    def broadcast(self, node: fx.Node, layouts: list[Any], out_shape) -> TensorLayout:
        operands = [lay for lay in layouts if _is_tensor_layout(lay)]
        nd = len(out_shape)
        out = []
        for k in range(nd):
            size = out_shape[k]
            items = []
            for lay in operands:
                j = len(lay) - nd + k
                if j < 0:
                    continue
                n = _axis_size(lay[j])
                if n == size:
                    items.append(lay[j])
                elif n == 1:
                    self.meet(lay[j], _fixed(1))
                else:
                    raise self.error(f"broadcasts an axis of size {n} to {size}")
            out.append(self.meet(*items) if items else _fixed(size))
        return tuple(out)

    def reshape(self, x: TensorLayout, in_shape, out_shape) -> TensorLayout:
        x = [self.resolve(a) for a in x]
        keep_in = [i for i, n in enumerate(in_shape) if n != 1]
        for i, n in enumerate(in_shape):
            if n == 1:
                self.fix(x[i])
        out: list[Layout | None] = [None] * len(out_shape)
        for j, n in enumerate(out_shape):
            if n == 1:
                out[j] = _fixed(1)
        keep_out = [j for j, n in enumerate(out_shape) if n != 1]
        i = j = 0
        while i < len(keep_in) or j < len(keep_out):
            gi, gj = [keep_in[i]], [keep_out[j]]
            pi, pj = in_shape[keep_in[i]], out_shape[keep_out[j]]
            i, j = i + 1, j + 1
            while pi != pj:
                if pi < pj:
                    gi.append(keep_in[i])
                    pi *= in_shape[keep_in[i]]
                    i += 1
                else:
                    gj.append(keep_out[j])
                    pj *= out_shape[keep_out[j]]
                    j += 1
            layouts = [x[a] for a in gi]
            sizes = [out_shape[b] for b in gj]
            for b, lay in zip(gj, self._regroup(layouts, [in_shape[a] for a in gi], sizes), strict=True):
                out[b] = lay
        return tuple(out)

    def _regroup(self, layouts: list[Layout], in_sizes: list[int], out_sizes: list[int]) -> list[Layout]:
        free = [k for k, lay in enumerate(layouts) if self.is_free(lay)]
        if not free:
            return [_fixed(n) for n in out_sizes]
        if len(free) > 1:
            raise self.error("reshapes two axes that both carry channels into one another")
        merged = self._flatten(layouts, in_sizes, free[0])
        if len(out_sizes) == 1:
            return [merged]
        # a split is fine only when it undoes a flatten: one output axis holds the units, the rest are fixed
        units = {(self.vars.find(v), u) for v, u, _ in merged if self.vars.find(v) != FIXED}
        if len(units) == 1:
            ((v, u),) = units
            for m in (m for m, n in enumerate(out_sizes) if n == u):
                candidate = [_fixed(n) for n in out_sizes]
                candidate[m] = ((v, u, 1),)
                if self._flatten(candidate, out_sizes, m) == self._canonical(merged):
                    return candidate
        raise self.error(
            "splits an axis that carries channels into several axes (e.g. into attention heads or groups, or to "
            "shuffle channels): the symmetry is not a plain channel permutation"
        )

    def _flatten(self, layouts: list[Layout], sizes: list[int], m: int) -> Layout:
        outer, inner = math.prod(sizes[:m]), math.prod(sizes[m + 1 :])
        one = tuple((self.vars.find(v), u, i * inner) for v, u, i in layouts[m])
        return self._canonical(one * outer)

    def permute(self, node: fx.Node, name: str, x: TensorLayout) -> TensorLayout:
        nd = len(x)
        args = node.args[1:]
        if name == "permute":
            dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
            dims = dims or node.kwargs.get("dims")
            order = [d % nd for d in dims]
        elif name == "t":
            order = [1, 0] if nd == 2 else list(range(nd))
        elif name == "movedim":
            src, dst = (self._arg(node, 1, "source"), self._arg(node, 2, "destination"))
            src = [s % nd for s in (src if isinstance(src, (list, tuple)) else [src])]
            dst = [d % nd for d in (dst if isinstance(dst, (list, tuple)) else [dst])]
            order = [i for i in range(nd) if i not in src]
            for d, s in sorted(zip(dst, src, strict=True)):
                order.insert(d, s)
        else:
            d0 = self._arg(node, 1, "dim0") % nd
            d1 = self._arg(node, 2, "dim1") % nd
            order = list(range(nd))
            order[d0], order[d1] = order[d1], order[d0]
        return tuple(x[d] for d in order)

    def reduce(self, node: fx.Node, name: str, x: TensorLayout, out_shape) -> Any:
        nd = len(x)
        dim = self._arg(node, 1, "dim")
        if name in ("max", "min"):
            if isinstance(dim, int) and self.is_free(self.resolve(x[dim % nd])):
                raise self.error("takes the index of the largest/smallest channel, which depends on channel order")
            if dim is None:
                return ()
            keepdim = bool(self._arg(node, 2, "keepdim"))
            values = self._reduced(x, [dim % nd], keepdim)
            return (values, tuple(_fixed(_axis_size(a)) for a in values))
        if name == "norm":
            dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else None)
        if dim is None:
            return tuple(_fixed(n) for n in out_shape)
        dims = [d % nd for d in (dim if isinstance(dim, (list, tuple)) else [dim])]
        return self._reduced(x, dims, len(out_shape) == nd)

    def _reduced(self, x: TensorLayout, dims: list[int], keepdim: bool) -> TensorLayout:
        # reducing over channels is invariant to their order
        out = []
        for i, a in enumerate(x):
            if i in dims:
                if keepdim:
                    out.append(_fixed(1))
            else:
                out.append(a)
        return tuple(out)

    def cat(self, node: fx.Node) -> TensorLayout:
        tensors = node.args[0] if node.args else node.kwargs["tensors"]
        layouts = [self.layout_of(t) for t in tensors]
        nd = len(layouts[0])
        dim = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % nd
        out = []
        for k in range(nd):
            if k == dim:
                out.append(self._canonical(tuple(s for lay in layouts for s in self.resolve(lay[k]))))
            else:
                out.append(self.meet(*(lay[k] for lay in layouts)))
        return tuple(out)

    def stack(self, node: fx.Node, out_shape) -> TensorLayout:
        tensors = node.args[0] if node.args else node.kwargs["tensors"]
        layouts = [self.layout_of(t) for t in tensors]
        dim = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % len(out_shape)
        axes = [self.meet(*(lay[k] for lay in layouts)) for k in range(len(layouts[0]))]
        return tuple(axes[:dim]) + (_fixed(out_shape[dim]),) + tuple(axes[dim:])

    def split(self, node: fx.Node, name: str, x: TensorLayout) -> Any:
        metas = node.meta.get("tensor_meta")
        nd = len(x)
        dim = (self._arg(node, 1 if name == "unbind" else 2, "dim") or 0) % nd
        layout = self.resolve(x[dim])
        sizes = [m.shape[dim] if name != "unbind" else 1 for m in metas]
        pieces = self._cut(layout, sizes)
        out = []
        for piece in pieces:
            axes = list(x)
            if name == "unbind":
                del axes[dim]
            else:
                axes[dim] = piece
            out.append(tuple(axes))
        return tuple(out)

    def _cut(self, layout: Layout, sizes: list[int]) -> list[Layout]:
        """Cut an axis into consecutive pieces; a piece may not cut through a channel group."""
        if not self.is_free(layout):
            return [_fixed(n) for n in sizes]
        segs = list(self._canonical(layout))
        pieces = []
        for n in sizes:
            piece: list[Seg] = []
            while n > 0:
                v, u, i = segs.pop(0)
                total = u * i
                if total <= n:
                    piece.append((v, u, i))
                    n -= total
                elif self.vars.find(v) == FIXED:
                    piece.append((FIXED, n, 1))
                    segs.insert(0, (FIXED, total - n, 1))
                    n = 0
                else:
                    raise self.error(
                        "slices through the channels of one group (only whole concatenated parts can be taken apart)"
                    )
            pieces.append(tuple(piece))
        return pieces

    def getitem(self, node: fx.Node, x: Any, index: Any) -> Any:
        if x is None:
            return None
        if not _is_tensor_layout(x):  # a tuple of outputs
            return x[index] if isinstance(index, int) else None
        in_shape = self.shape(node.args[0])
        items = index if isinstance(index, tuple) else (index,)
        if any(isinstance(it, (fx.Node, list, torch.Tensor)) for it in items):
            return self.refuse_or_fixed(node, "indexes channels with a tensor or list")
        used = sum(1 for it in items if it is not None and it is not Ellipsis)
        expanded: list[Any] = []
        for it in items:
            if it is Ellipsis:
                expanded += [slice(None)] * (len(x) - used)
            else:
                expanded.append(it)
        expanded += [slice(None)] * (len(x) - sum(1 for it in expanded if it is not None))
        out, axis = [], 0
        for it in expanded:
            if it is None:
                out.append(_fixed(1))
                continue
            layout, size = self.resolve(x[axis]), in_shape[axis]
            axis += 1
            if isinstance(it, int):
                if self.is_free(layout):
                    raise self.error("picks one channel by position")
                continue
            picked = range(size)[it]
            if len(picked) == size and picked.step == 1:
                out.append(layout)
            elif picked.step == 1 and len(picked) > 0:
                out.append(self._cut(layout, [picked.start, len(picked), size - picked.stop])[1])
            elif self.is_free(layout):
                raise self.error("takes channels with a stride")
            else:
                out.append(_fixed(len(picked)))
        return tuple(out)

    def matmul(self, a: TensorLayout, b: TensorLayout) -> TensorLayout:
        a_vec, b_vec = len(a) == 1, len(b) == 1
        a = ((_fixed(1),) + tuple(a)) if a_vec else tuple(a)
        b = (tuple(b) + (_fixed(1),)) if b_vec else tuple(b)
        self.meet(a[-1], b[-2])
        batch_a, batch_b = a[:-2], b[:-2]
        nd = max(len(batch_a), len(batch_b))
        batch = []
        for k in range(nd):
            items = []
            for part in (batch_a, batch_b):
                j = len(part) - nd + k
                if j >= 0:
                    items.append(part[j])
            sizes = [_axis_size(it) for it in items]
            big = max(sizes)
            for it, n in zip(items, sizes, strict=True):
                if n == 1 and big > 1:
                    self.meet(it, _fixed(1))
            batch.append(self.meet(*(it for it, n in zip(items, sizes, strict=True) if n == big)))
        out = list(batch)
        if not a_vec:
            out.append(self.resolve(a[-2]))
        if not b_vec:
            out.append(self.resolve(b[-1]))
        return tuple(out)

    def einsum(self, node: fx.Node) -> TensorLayout:
        equation = node.args[0]
        operands = node.args[1:]
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = operands[0]
        if "..." in equation or "->" not in equation:
            return self.refuse_or_fixed(node, "einsum with '...' or an implicit output")
        lhs, rhs = equation.replace(" ", "").split("->")
        letters: dict[str, list[Axis]] = {}
        for term, op in zip(lhs.split(","), operands, strict=True):
            for ch, axis in zip(term, self.layout_of(op), strict=True):
                letters.setdefault(ch, []).append(axis)
        joined = {ch: self.meet(*axes) for ch, axes in letters.items()}
        return tuple(joined[ch] for ch in rhs)

    # ---- the spec ----------------------------------------------------------------------------

    def build(self) -> PermutationSpec:
        names: dict[int, str] = {}
        taken: set[str] = set()

        def group_name(root: int, hint: str) -> str:
            if root not in names:
                name, k = hint, 2
                while name in taken:
                    name, k = f"{hint}#{k}", k + 1
                names[root] = name
                taken.add(name)
            return names[root]

        # Name each group after the first layer (in forward order) whose outputs it permutes.
        by_id = {id(t): t for t in self.state.values()}
        used: list[int] = []
        for node in self.gm.graph.nodes:
            if node.op == "call_module":
                used += [id(p) for p in self.model.get_submodule(node.target).parameters(recurse=False)]
            elif node.op == "get_attr":
                used.append(id(_get_attr(self.gm, node.target)))
        used = [i for i in dict.fromkeys(used) if i in by_id]
        for i in used:
            lay = self.bound.get((i, 0))
            name = self.tensor_names[i][0]
            if lay is not None and not name.endswith(".bias"):
                for v, _, _ in lay:
                    root = self.vars.find(v)
                    if root != FIXED:
                        group_name(root, name.removesuffix(".weight"))
        for i in used:
            for ax in range(by_id[i].dim()):
                for v, _, _ in self.bound.get((i, ax), ()):
                    if self.vars.find(v) != FIXED:
                        group_name(self.vars.find(v), f"{self.tensor_names[i][0]}:{ax}")
        axes: dict[str, tuple] = {}
        sizes: dict[str, int] = {}
        for name, t in self.state.items():
            entries = []
            for ax in range(t.dim()):
                lay = self.bound.get((id(t), ax))
                entries.append(None if lay is None else self._entry(lay, name, ax, group_name, sizes))
            axes[name] = tuple(entries)
        order = list(names.values())
        sizes = {g: sizes[g] for g in sorted(sizes, key=order.index)}
        buffers = frozenset(n for n, _ in self.model.named_buffers() if n in axes)
        activations, repair_points, channel_axes = self._points(names)
        carried, classifier_input = self._carried_points()
        for target, (axis, _) in carried.items():
            if axis != 1:
                channel_axes[target] = axis
        spec = PermutationSpec(
            axes=axes,
            sizes=sizes,
            buffers=buffers,
            activations=activations,
            repair_points=repair_points,
            channel_axes=channel_axes,
            carried_points={t: self._entry(lay, t, axis, group_name, sizes) for t, (axis, lay) in carried.items()},
            classifier_input=classifier_input,
        )
        spec.validate(self.model.state_dict())
        return spec

    def _entry(self, lay: Layout, name: str, ax: int, group_name: Callable[[int, str], str], sizes: dict) -> Any:
        lay = self._canonical(lay)
        if not self.is_free(lay):
            return None
        segments = []
        for v, u, i in lay:
            root = self.vars.find(v)
            if root == FIXED:
                segments.append(Segment(None, u * i, 1))
            else:
                g = group_name(root, f"{name}:{ax}")
                sizes.setdefault(g, u)
                segments.append(Segment(g, u, i))
        if len(segments) == 1 and segments[0].inner == 1:
            return segments[0].group
        return tuple(segments)

    def _single_free_axis(self, node: fx.Node) -> tuple[int, Layout] | None:
        out = self.env.get(node)
        if not _is_tensor_layout(out):
            return None
        free = [(k, self._canonical(self.resolve(a))) for k, a in enumerate(out)]
        free = [(k, lay) for k, lay in free if self.is_free(lay)]
        return free[0] if len(free) == 1 else None

    def _is_residual_add(self, node: Any) -> bool:
        if not isinstance(node, fx.Node) or node.op not in ("call_function", "call_method"):
            return False
        if _op_name(node) not in ("add", "iadd", "add_"):
            return False
        operands = [self.layout_of(a) for a in node.args[:2]]
        return all(_is_tensor_layout(o) for o in operands) and self._single_free_axis(node) is not None

    def _carried_points(self) -> tuple[dict[str, tuple[int, Layout]], str | None]:
        """REPAIR's ResNet points: each residual block's output (a nonlinearity module, called once,
        applied to a residual add) and, in networks that have such blocks, the classifier's input
        (also returned on its own; None where there is none)."""
        out: dict[str, tuple[int, Layout]] = {}
        residual = False  # whether two tensors carrying channels are ever added
        for node in self.gm.graph.nodes:
            if self._is_residual_add(node):
                residual = True
            if node.op != "call_module" or self.module_calls[node.target] != 1:
                continue
            if not isinstance(self.model.get_submodule(node.target), _ACTIVATIONS) or not node.args:
                continue
            if self._is_residual_add(node.args[0]) and (free := self._single_free_axis(node)):
                out[node.target] = free
        if not residual:
            return out, None
        classifier_input = None
        for node in self.gm.graph.nodes:  # the classifier: a linear layer whose outputs are the network's
            is_linear = node.op == "call_module" and isinstance(self.model.get_submodule(node.target), nn.Linear)
            layout = self.env.get(node)
            if not is_linear or not _is_tensor_layout(layout) or self.is_free(self.resolve(layout[-1])):
                continue
            source = node.args[0]
            while (
                isinstance(source, fx.Node)
                and source.op in ("call_function", "call_method")
                and _op_name(source) in (_RESHAPE | {"contiguous"})
            ):
                source = source.args[0]
            if (
                isinstance(source, fx.Node)
                and source.op == "call_module"
                and self.module_calls[source.target] == 1
                and (free := self._single_free_axis(source))
            ):
                out[source.target] = free
                classifier_input = source.target
        return out, classifier_input

    def _points(self, names: dict[int, str]):
        """Activation and REPAIR points: outputs of modules called once, with their channel axis."""
        found = []  # (module name, kind, axis, layout)
        for node in self.gm.graph.nodes:
            if node.op != "call_module" or self.module_calls[node.target] != 1:
                continue
            out = self.env.get(node)
            if not _is_tensor_layout(out):
                continue
            free = [(k, self._canonical(self.resolve(a))) for k, a in enumerate(out)]
            free = [(k, lay) for k, lay in free if self.is_free(lay)]
            if len(free) != 1:
                continue
            axis, lay = free[0]
            m = self.model.get_submodule(node.target)
            if isinstance(m, _ACTIVATIONS):
                kind = "activation"
            elif isinstance(m, _NORMS):
                kind = "norm"
            elif isinstance(m, (nn.Linear, *_CONVS)):
                kind = "affine"
            else:
                continue
            found.append((node.target, kind, axis, lay))

        def plain_group(lay: Layout) -> str | None:
            if len(lay) == 1 and lay[0][2] == 1:
                return names.get(self.vars.find(lay[0][0]))
            return None

        # activation matching: for each group, its points of the best kind there is
        candidates: dict[str, dict[str, list[str]]] = {}
        for target, kind, _, lay in found:
            g = plain_group(lay)
            if g is not None:
                candidates.setdefault(g, {}).setdefault(kind, []).append(target)
        activations = {g: next(by_kind[k] for k in _POINT_KINDS if k in by_kind) for g, by_kind in candidates.items()}

        # REPAIR: every norm with an affine, and the affine layers of groups no norm normalises; the
        # correction folds into the weight's axis 0, so that axis must run over the output channels
        def foldable(target: str, lay: Layout) -> bool:
            m = self.model.get_submodule(target)
            weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
            if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
                return False
            rows = self.bound.get((id(weight), 0))
            return rows is not None and self._canonical(rows) == lay

        normed = {self.vars.find(v) for _, k, _, lay in found if k == "norm" for v, _, _ in lay}
        repair = []
        for target, kind, _, lay in found:
            if not foldable(target, lay):
                continue
            if kind == "norm" or (kind == "affine" and plain_group(lay) and self.vars.find(lay[0][0]) not in normed):
                repair.append(target)
        axes = {t: a for t, _, a, _ in found if a != 1 and (t in repair or any(t in v for v in activations.values()))}
        return {g: tuple(v) for g, v in activations.items()}, tuple(repair), axes


class _TensorAxes(tuple):
    """The axes of a tensor argument of a functional op (a parameter's slots, or computed layouts)."""


def _param_axes(value: Any) -> tuple[Axis, ...]:
    if isinstance(value, _TensorAxes):
        return tuple(value)
    if isinstance(value, torch.Tensor):
        return tuple(Slot(id(value), ax, n) for ax, n in enumerate(value.shape))
    raise TypeError(f"expected a tensor, got {type(value).__name__}")


def _axis_size(axis: Axis) -> int:
    return axis.size if isinstance(axis, Slot) else _size(axis)


def _get_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    target = node.target
    if target in (operator.getitem,):
        return "getitem"
    name = getattr(target, "__name__", str(target))
    return name.strip("_") if name.startswith("__") else name


def _flatten_args(value: Any) -> list[Any]:
    out: list[Any] = []
    if isinstance(value, (list, tuple)):
        for v in value:
            out += _flatten_args(v)
    elif isinstance(value, dict):
        for v in value.values():
            out += _flatten_args(v)
    else:
        out.append(value)
    return out


def _is_tensor_layout(value: Any) -> bool:
    """A tensor's layout is a tuple of axes (each a tuple of segments or a Slot); () is a scalar's."""
    return isinstance(value, tuple) and all(isinstance(a, Slot) or _is_layout(a) for a in value)


def _is_layout(value: Any) -> bool:
    return isinstance(value, tuple) and all(
        isinstance(s, tuple) and len(s) == 3 and isinstance(s[0], int) for s in value
    )


def _tensor_layouts(value: Any) -> list[Axis]:
    if value is None:
        return []
    if _is_tensor_layout(value):
        return list(value)
    out: list[Axis] = []
    for v in value:
        out += _tensor_layouts(v)
    return out
