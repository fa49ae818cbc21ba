"""Layouts: which channel spaces run along each axis of a tensor, and the union-find that ties them.

A *layout* is the list of segments along one axis: ``(variable, units, inner)`` says that a
channel space (a union-find variable) of ``units`` channels runs there, each channel repeated
``inner`` times in a row (a flattened feature map). The variable ``FIXED`` is the class of axes
no permutation may act on. A parameter's or buffer's axis is a :class:`Slot` until an op binds
it to a layout. :class:`Channels` holds the variables and the bindings and ties axes together;
it knows nothing of graphs (see :mod:`.walk`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

from .spec import SpecError

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


def fixed(n: int) -> Layout:
    """An axis of ``n`` positions no permutation acts on."""
    return ((FIXED, n, 1),)


def size(layout: Layout) -> int:
    return sum(u * i for _, u, i in layout)


def axis_size(axis: Axis) -> int:
    return axis.size if isinstance(axis, Slot) else size(axis)


def is_layout(value: Any) -> TypeGuard[Layout]:
    return isinstance(value, tuple) and all(
        isinstance(s, tuple) and len(s) == 3 and isinstance(s[0], int) for s in value
    )


def is_tensor_layout(value: Any) -> TypeGuard[TensorLayout]:
    """A tensor's layout is a tuple of axes (each a tuple of segments or a Slot); () is a scalar's."""
    return isinstance(value, tuple) and all(isinstance(a, Slot) or is_layout(a) for a in value)


def tensor_layouts(value: Any) -> list[Axis]:
    """Every axis of every tensor in ``value`` (a tensor's layout, or nested tuples of them, or None)."""
    if value is None:
        return []
    if is_tensor_layout(value):
        return list(value)
    out: list[Axis] = []
    for v in value:
        out += tensor_layouts(v)
    return out


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


class Channels:
    """The channel spaces of one derivation: the union-find variables and the layout bound to each
    parameter axis. ``error`` turns a message into the :class:`SpecError` to raise (it names the
    node being visited)."""

    def __init__(self, error: Callable[[str], SpecError] = SpecError) -> None:
        self.vars = _Vars()
        self.bound: dict[tuple[int, int], Layout] = {}
        self.error = error

    def find(self, v: int) -> int:
        return self.vars.find(v)

    def fresh(self, n: int) -> Layout:
        return ((self.vars.new(), n, 1),) if n > 1 else fixed(n)

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
        if size(a) != size(b):
            raise self.error(f"ties axes of sizes {size(a)} and {size(b)}")
        a, b = self.canonical(a), self.canonical(b)
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

    def canonical(self, layout: Layout) -> Layout:
        """Adjacent fixed segments merged into one."""
        out: list[Seg] = []
        for v, u, i in layout:
            if self.vars.find(v) == FIXED:
                if out and self.vars.find(out[-1][0]) == FIXED:
                    out[-1] = (FIXED, size((out[-1],)) + u * i, 1)
                else:
                    out.append((FIXED, u * i, 1))
            else:
                out.append((self.vars.find(v), u, i))
        return tuple(out)

    def free_axes(self, layout: TensorLayout) -> list[tuple[int, Layout]]:
        """The axes of a tensor that carry channels, each with its canonical layout."""
        axes = [(k, self.canonical(self.resolve(a))) for k, a in enumerate(layout)]
        return [(k, lay) for k, lay in axes if self.is_free(lay)]

    def regroup(self, layouts: list[Layout], in_sizes: list[int], out_sizes: list[int]) -> list[Layout]:
        """The layouts of ``out_sizes`` axes reshaped from axes of ``in_sizes`` with ``layouts``
        (the same elements in the same order)."""
        free = [k for k, lay in enumerate(layouts) if self.is_free(lay)]
        if not free:
            return [fixed(n) for n in out_sizes]
        if len(free) > 1:
            raise self.error("reshapes two axes that both carry channels into one another")
        merged = self.flatten(layouts, in_sizes, free[0])
        if len(out_sizes) == 1:
            return [merged]
        # a split is fine only when it undoes a flatten: one output axis holds the units, the rest are fixed
        units = {(self.vars.find(v), u) for v, u, _ in merged if self.vars.find(v) != FIXED}
        if len(units) == 1:
            ((v, u),) = units
            for m in (m for m, n in enumerate(out_sizes) if n == u):
                candidate = [fixed(n) for n in out_sizes]
                candidate[m] = ((v, u, 1),)
                if self.flatten(candidate, out_sizes, m) == self.canonical(merged):
                    return candidate
        raise self.error(
            "splits an axis that carries channels into several axes (e.g. into attention heads or groups, or to "
            "shuffle channels): the symmetry is not a plain channel permutation"
        )

    def flatten(self, layouts: list[Layout], sizes: list[int], m: int) -> Layout:
        """One axis made of axes of ``sizes`` where only axis ``m`` (of ``layouts``) carries channels."""
        outer, inner = math.prod(sizes[:m]), math.prod(sizes[m + 1 :])
        one = tuple((self.vars.find(v), u, i * inner) for v, u, i in layouts[m])
        return self.canonical(one * outer)

    def cut(self, layout: Layout, sizes: list[int]) -> list[Layout]:
        """Cut an axis into consecutive pieces; a piece may not cut through a channel group."""
        if not self.is_free(layout):
            return [fixed(n) for n in sizes]
        segs = list(self.canonical(layout))
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
