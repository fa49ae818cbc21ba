"""Tracing a network for spec derivation: its ``torch.fx`` graph, each node's output shape and the
module it was called from, and typed access to what a node holds.

``torch.fx`` types a node's arguments as any of a dozen kinds (:data:`torch.fx.node.Argument`);
the accessors here say which kind the derivation expects and narrow to it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.node import Argument

from .spec import SpecError


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
class TensorShape:
    """What a node's ``meta['tensor_meta']`` holds for a tensor output (a tuple of them for a tuple)."""

    shape: tuple[int, ...]


def _shape_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return TensorShape(tuple(value.shape))
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


# ----------------------------------------------------------------------------- reading nodes


def node_shape(node: object) -> tuple[int, ...] | None:
    """The output shape of a node with one tensor output; None for anything else."""
    if not isinstance(node, fx.Node):
        return None
    shape = getattr(node.meta.get("tensor_meta"), "shape", None)
    return tuple(shape) if shape is not None else None


def target(node: fx.Node) -> str:
    """The qualified name a ``call_module`` or ``get_attr`` node refers to."""
    if not isinstance(node.target, str):
        raise TypeError(f"node {node.name} ({node.op}) names no module or attribute")
    return node.target


def get_attr(gm: fx.GraphModule, name: str) -> Any:
    obj: Any = gm
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def op_name(node: fx.Node) -> str:
    """The name of a function or method a node calls, without dunder underscores (``add``, ``getitem``)."""
    if node.op == "call_method":
        return str(node.target)
    called = node.target
    if called in (operator.getitem,):
        return "getitem"
    name = getattr(called, "__name__", str(called))
    return name.strip("_") if name.startswith("__") else name


def flatten_args(value: Any) -> list[Any]:
    """The leaves of nested lists, tuples and dicts of node arguments."""
    out: list[Any] = []
    if isinstance(value, (list, tuple)):
        for v in value:
            out += flatten_args(v)
    elif isinstance(value, dict):
        for v in value.values():
            out += flatten_args(v)
    else:
        out.append(value)
    return out


def arg(node: fx.Node, index: int, key: str, default: Argument = None) -> Argument:
    """A call's argument by position, else by keyword, else ``default``."""
    return node.args[index] if len(node.args) > index else node.kwargs.get(key, default)


def int_arg(node: fx.Node, index: int, key: str, default: int | None = None) -> int:
    """An argument that is an int (an axis, a count); ``default`` where it is absent or None."""
    value = arg(node, index, key)
    if value is None:
        value = default
    if not isinstance(value, int):
        raise TypeError(f"argument {key!r} of {op_name(node)} is not an int: {value!r}")
    return value


def ints(value: Argument) -> list[int]:
    """An int or a sequence of ints (dims, sizes) as a list."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    out = [v for v in items if isinstance(v, int)]
    if len(out) != len(items):
        raise TypeError(f"expected ints, got {value!r}")
    return out
