"""The walk over a traced graph: what it knows of each node, and the rules of the ops that only
move, join, split or reduce axes (reshapes, transposes, broadcasts, concatenations, indexing,
reductions, matrix products).

:class:`Walk` holds the state of one derivation: the layout of every node's output (``env``), the
channel spaces (:class:`.layouts.Channels`) and the node being visited, which every error names.
The rules of layers (linear, convolutions, norms) and the dispatch over modules and functions
are in :mod:`.derive`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.node import Argument

from .layouts import Axis, Channels, Layout, Slot, TensorLayout, axis_size, fixed, is_tensor_layout
from .spec import SpecError
from .trace import arg, flatten_args, int_arg, ints, node_shape, op_name, target

Value = Any
"""What the walk knows of a node's output: a :data:`TensorLayout`, a tuple of them (a tuple of
outputs), or None (no tensor: a shape, a size, a constant)."""


class TensorAxes(tuple):
    """The axes of a tensor argument of a functional op (a parameter's slots, or computed layouts)."""


def param_axes(value: Any) -> tuple[Axis, ...]:
    """The axes of a weight-like argument: a parameter (its slots) or a computed tensor."""
    if isinstance(value, TensorAxes):
        return tuple(value)
    if isinstance(value, torch.Tensor):
        return tuple(Slot(id(value), ax, n) for ax, n in enumerate(value.shape))
    raise TypeError(f"expected a tensor, got {type(value).__name__}")


class Walk:
    """The state of one derivation over ``gm`` (the traced ``model``) and the rules of axis ops."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule) -> None:
        self.model, self.gm = model, gm
        self.channels = Channels(self.error)
        self.state = model.state_dict(keep_vars=True)
        self.tensor_names: dict[int, list[str]] = {}
        for name, t in self.state.items():
            self.tensor_names.setdefault(id(t), []).append(name)
        self.env: dict[fx.Node, Value] = {}
        self.node: fx.Node | None = None
        self.module_calls: dict[str, int] = {}
        for n in gm.graph.nodes:
            if n.op == "call_module":
                self.module_calls[target(n)] = self.module_calls.get(target(n), 0) + 1

    # ---- errors and lookups ------------------------------------------------------------------

    def error(self, message: str) -> SpecError:
        node = self.node
        if node is None:
            return SpecError(message)
        where = node.meta.get("scope") or ""
        if node.op == "call_module":
            module = self.model.get_submodule(target(node))
            what = f"module {node.target!r} ({type(module).__name__})"
        else:
            what = f"op {op_name(node)!r}" + (f" in module {where!r}" if where else " in the top-level forward")
        return SpecError(f"cannot derive a permutation symmetry through {what}: {message}")

    def layout_of(self, a: object) -> Value:
        return self.env.get(a) if isinstance(a, fx.Node) else None

    def tensor(self, value: Value) -> TensorLayout:
        """``value`` as one tensor's layout; refused where the op gets something else."""
        if not is_tensor_layout(value):
            raise self.error("expects a tensor where it gets none (or a tuple of tensors)")
        return value

    def tensor_of(self, a: object) -> TensorLayout:
        return self.tensor(self.layout_of(a))

    def shape(self, a: object) -> tuple[int, ...]:
        """The output shape of a node with one tensor output."""
        found = node_shape(a)
        if found is None:
            raise self.error("expects a tensor with a known shape")
        return found

    def operand(self, node: fx.Node, index: int, key: str) -> Any:
        """A call's argument, a tensor one as its :class:`TensorAxes` (None where it has no layout)."""
        value = arg(node, index, key)
        if isinstance(value, fx.Node):
            layout = self.layout_of(value)
            return TensorAxes(layout) if layout is not None else None
        return value

    def fixed_like(self, node: fx.Node) -> Value:
        meta = node.meta.get("tensor_meta")
        shape = node_shape(node)
        if shape is not None:
            return tuple(fixed(n) for n in shape)
        if isinstance(meta, (tuple, list)):
            return tuple(tuple(fixed(n) for n in m.shape) if hasattr(m, "shape") else None for m in meta)
        return None

    def inputs(self, node: fx.Node) -> list[TensorLayout]:
        return [lay for a in flatten_args((node.args, node.kwargs)) if is_tensor_layout(lay := self.layout_of(a))]

    def refuse_or_fixed(self, node: fx.Node, why: str) -> Value:
        """An op we cannot see through: fine when no free channel axis reaches it, refused otherwise."""
        for lay in self.inputs(node):
            for axis in lay:
                if self.channels.is_free(self.channels.resolve(axis)):
                    raise self.error(why)
        return self.fixed_like(node)

    # ---- ops that move, join, split and reduce axes -------------------------------------------

    def broadcast(self, node: fx.Node, layouts: list[Value], out_shape: tuple[int, ...]) -> TensorLayout:
        operands = [lay for lay in layouts if is_tensor_layout(lay)]
        nd = len(out_shape)
        out = []
        for k in range(nd):
            size = out_shape[k]
            items = []
            for lay in operands:
                j = len(lay) - nd + k
                if j < 0:
                    continue
                n = axis_size(lay[j])
                if n == size:
                    items.append(lay[j])
                elif n == 1:
                    self.channels.meet(lay[j], fixed(1))
                else:
                    raise self.error(f"broadcasts an axis of size {n} to {size}")
            out.append(self.channels.meet(*items) if items else fixed(size))
        return tuple(out)

    def reshape(self, axes: TensorLayout, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> TensorLayout:
        x = [self.channels.resolve(a) for a in axes]
        keep_in = [i for i, n in enumerate(in_shape) if n != 1]
        for i, n in enumerate(in_shape):
            if n == 1:
                self.channels.fix(x[i])
        out: list[Layout] = [fixed(1) for _ in out_shape]  # size-1 axes stay fixed; the others are set below
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
            for b, lay in zip(gj, self.channels.regroup(layouts, [in_shape[a] for a in gi], sizes), strict=True):
                out[b] = lay
        return tuple(out)

    def permute(self, node: fx.Node, name: str, x: TensorLayout) -> TensorLayout:
        nd = len(x)
        rest = node.args[1:]
        if name == "permute":
            dims: Argument = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
            order = [d % nd for d in ints(dims or node.kwargs.get("dims"))]
        elif name == "t":
            order = [1, 0] if nd == 2 else list(range(nd))
        elif name == "movedim":
            src = [s % nd for s in ints(arg(node, 1, "source"))]
            dst = [d % nd for d in ints(arg(node, 2, "destination"))]
            order = [i for i in range(nd) if i not in src]
            for d, s in sorted(zip(dst, src, strict=True)):
                order.insert(d, s)
        else:
            d0 = int_arg(node, 1, "dim0") % nd
            d1 = int_arg(node, 2, "dim1") % nd
            order = list(range(nd))
            order[d0], order[d1] = order[d1], order[d0]
        return tuple(x[d] for d in order)

    def reduce(self, node: fx.Node, name: str, x: TensorLayout) -> Value:
        nd = len(x)
        dim = self.operand(node, 1, "dim")
        if name in ("max", "min"):
            if isinstance(dim, int) and self.channels.is_free(self.channels.resolve(x[dim % nd])):
                raise self.error("takes the index of the largest/smallest channel, which depends on channel order")
            if dim is None:
                return ()
            keepdim = bool(arg(node, 2, "keepdim"))
            values = self._reduced(x, [d % nd for d in ints(dim)], keepdim)
            return (values, tuple(fixed(axis_size(a)) for a in values))
        if name == "norm":
            dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else None)
        out_shape = self.shape(node)
        if dim is None:
            return tuple(fixed(n) for n in out_shape)
        return self._reduced(x, [d % nd for d in ints(dim)], len(out_shape) == nd)

    def _reduced(self, x: TensorLayout, dims: list[int], keepdim: bool) -> TensorLayout:
        # reducing over channels is invariant to their order
        out: list[Axis] = []
        for i, a in enumerate(x):
            if i in dims:
                if keepdim:
                    out.append(fixed(1))
            else:
                out.append(a)
        return tuple(out)

    def _tensor_list(self, node: fx.Node) -> list[TensorLayout]:
        """The layouts of the tensors a ``cat`` or ``stack`` joins."""
        tensors = arg(node, 0, "tensors")
        if not isinstance(tensors, (list, tuple)):
            raise self.error("joins something other than a list of tensors")
        return [self.tensor_of(t) for t in tensors]

    def cat(self, node: fx.Node) -> TensorLayout:
        layouts = self._tensor_list(node)
        nd = len(layouts[0])
        dim = int_arg(node, 1, "dim", 0) % nd
        out = []
        for k in range(nd):
            if k == dim:
                joined = tuple(s for lay in layouts for s in self.channels.resolve(lay[k]))
                out.append(self.channels.canonical(joined))
            else:
                out.append(self.channels.meet(*(lay[k] for lay in layouts)))
        return tuple(out)

    def stack(self, node: fx.Node, out_shape: tuple[int, ...]) -> TensorLayout:
        layouts = self._tensor_list(node)
        dim = int_arg(node, 1, "dim", 0) % len(out_shape)
        axes = [self.channels.meet(*(lay[k] for lay in layouts)) for k in range(len(layouts[0]))]
        return tuple(axes[:dim]) + (fixed(out_shape[dim]),) + tuple(axes[dim:])

    def split(self, node: fx.Node, name: str, x: TensorLayout) -> Value:
        metas = node.meta.get("tensor_meta") or ()
        nd = len(x)
        dim = int_arg(node, 1 if name == "unbind" else 2, "dim", 0) % nd
        layout = self.channels.resolve(x[dim])
        sizes = [m.shape[dim] if name != "unbind" else 1 for m in metas]
        pieces = self.channels.cut(layout, sizes)
        out = []
        for piece in pieces:
            axes = list(x)
            if name == "unbind":
                del axes[dim]
            else:
                axes[dim] = piece
            out.append(tuple(axes))
        return tuple(out)

    def getitem(self, node: fx.Node, x: Value, index: Argument) -> Value:
        if x is None:
            return None
        if not is_tensor_layout(x):  # a tuple of outputs
            return x[index] if isinstance(index, int) else None
        in_shape = self.shape(node.args[0])
        items = index if isinstance(index, tuple) else (index,)
        if any(isinstance(it, (fx.Node, list, torch.Tensor)) for it in items):
            return self.refuse_or_fixed(node, "indexes channels with a tensor or list")
        used = sum(1 for it in items if it is not None and it is not Ellipsis)
        expanded: list[Argument] = []
        for it in items:
            if it is Ellipsis:
                expanded += [slice(None)] * (len(x) - used)
            else:
                expanded.append(it)
        expanded += [slice(None)] * (len(x) - sum(1 for it in expanded if it is not None))
        out: list[Axis] = []
        axis = 0
        for it in expanded:
            if it is None:
                out.append(fixed(1))
                continue
            layout, size = self.channels.resolve(x[axis]), in_shape[axis]
            axis += 1
            if isinstance(it, int):
                if self.channels.is_free(layout):
                    raise self.error("picks one channel by position")
                continue
            if not isinstance(it, slice):
                return self.refuse_or_fixed(node, f"indexes channels with {type(it).__name__}")
            picked = range(size)[it]
            if len(picked) == size and picked.step == 1:
                out.append(layout)
            elif picked.step == 1 and len(picked) > 0:
                out.append(self.channels.cut(layout, [picked.start, len(picked), size - picked.stop])[1])
            elif self.channels.is_free(layout):
                raise self.error("takes channels with a stride")
            else:
                out.append(fixed(len(picked)))
        return tuple(out)

    def matmul(self, a: TensorLayout, b: TensorLayout) -> TensorLayout:
        a_vec, b_vec = len(a) == 1, len(b) == 1
        a = ((fixed(1),) + tuple(a)) if a_vec else tuple(a)
        b = (tuple(b) + (fixed(1),)) if b_vec else tuple(b)
        self.channels.meet(a[-1], b[-2])
        batch_a, batch_b = a[:-2], b[:-2]
        nd = max(len(batch_a), len(batch_b))
        batch = []
        for k in range(nd):
            items = []
            for part in (batch_a, batch_b):
                j = len(part) - nd + k
                if j >= 0:
                    items.append(part[j])
            sizes = [axis_size(it) for it in items]
            big = max(sizes)
            for it, n in zip(items, sizes, strict=True):
                if n == 1 and big > 1:
                    self.channels.meet(it, fixed(1))
            batch.append(self.channels.meet(*(it for it, n in zip(items, sizes, strict=True) if n == big)))
        out = list(batch)
        if not a_vec:
            out.append(self.channels.resolve(a[-2]))
        if not b_vec:
            out.append(self.channels.resolve(b[-1]))
        return tuple(out)

    def einsum(self, node: fx.Node) -> Value:
        equation = node.args[0]
        operands: Sequence[Argument] = node.args[1:]
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = operands[0]
        if not isinstance(equation, str) or "..." in equation or "->" not in equation:
            return self.refuse_or_fixed(node, "einsum with '...' or an implicit output")
        lhs, rhs = equation.replace(" ", "").split("->")
        letters: dict[str, list[Axis]] = {}
        for term, op in zip(lhs.split(","), operands, strict=True):
            for ch, axis in zip(term, self.tensor_of(op), strict=True):
                letters.setdefault(ch, []).append(axis)
        joined = {ch: self.channels.meet(*axes) for ch, axes in letters.items()}
        return tuple(joined[ch] for ch in rhs)
