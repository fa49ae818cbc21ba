"""The spec of a finished walk: every free channel space that reaches a parameter becomes a named
permutation group, each parameter and buffer axis names the group (or :class:`Segment` list) acting
on it, and the activation and REPAIR points are the outputs of modules called once.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from .kinds import ACTIVATIONS, CONVS, NORMS, POINT_KINDS, RESHAPE
from .layouts import FIXED, Layout, is_tensor_layout
from .spec import AxisEntry, PermutationSpec, Segment
from .trace import get_attr, op_name, target
from .walk import Walk

Point = tuple[str, str, int, Layout]  # (module name, kind, channel axis, layout)


def build_spec(walk: Walk) -> PermutationSpec:
    """The permutation spec of ``walk``, after it has visited every node of its graph."""
    return _Build(walk).spec()


class _Build:
    def __init__(self, walk: Walk) -> None:
        self.walk = walk
        self.channels = walk.channels
        self.names: dict[int, str] = {}  # root variable -> group name
        self.taken: set[str] = set()
        self.sizes: dict[str, int] = {}

    def find(self, v: int) -> int:
        return self.channels.find(v)

    def group_name(self, root: int, hint: str) -> str:
        if root not in self.names:
            name, k = hint, 2
            while name in self.taken:
                name, k = f"{hint}#{k}", k + 1
            self.names[root] = name
            self.taken.add(name)
        return self.names[root]

    def spec(self) -> PermutationSpec:
        walk, bound = self.walk, self.channels.bound
        # Name each group after the first layer (in forward order) whose outputs it permutes.
        by_id = {id(t): t for t in walk.state.values()}
        used: list[int] = []
        for node in walk.gm.graph.nodes:
            if node.op == "call_module":
                used += [id(p) for p in walk.model.get_submodule(target(node)).parameters(recurse=False)]
            elif node.op == "get_attr":
                used.append(id(get_attr(walk.gm, target(node))))
        used = [i for i in dict.fromkeys(used) if i in by_id]
        for i in used:
            lay = bound.get((i, 0))
            name = walk.tensor_names[i][0]
            if lay is not None and not name.endswith(".bias"):
                for v, _, _ in lay:
                    root = self.find(v)
                    if root != FIXED:
                        self.group_name(root, name.removesuffix(".weight"))
        for i in used:
            for ax in range(by_id[i].dim()):
                for v, _, _ in bound.get((i, ax), ()):
                    if self.find(v) != FIXED:
                        self.group_name(self.find(v), f"{walk.tensor_names[i][0]}:{ax}")
        axes: dict[str, tuple[AxisEntry, ...]] = {}
        for name, t in walk.state.items():
            entries: list[AxisEntry] = []
            for ax in range(t.dim()):
                lay = bound.get((id(t), ax))
                entries.append(None if lay is None else self.entry(lay, name, ax))
            axes[name] = tuple(entries)
        order = list(self.names.values())
        sizes = {g: self.sizes[g] for g in sorted(self.sizes, key=order.index)}
        self.sizes = sizes  # groups first met at a carried point below are added to the spec's sizes
        buffers = frozenset(n for n, _ in walk.model.named_buffers() if n in axes)
        activations, repair_points, channel_axes = self.points()
        carried, classifier_input = self.carried_points()
        for name, (axis, _) in carried.items():
            if axis != 1:
                channel_axes[name] = axis
        spec = PermutationSpec(
            axes=axes,
            sizes=sizes,
            buffers=buffers,
            activations=activations,
            repair_points=repair_points,
            channel_axes=channel_axes,
            carried_points={t: self.entry(lay, t, axis) for t, (axis, lay) in carried.items()},
            classifier_input=classifier_input,
        )
        spec.validate(walk.model.state_dict())
        return spec

    def entry(self, lay: Layout, name: str, ax: int) -> AxisEntry:
        """What acts on an axis of ``lay``: None, a group's name, or the segments of several."""
        lay = self.channels.canonical(lay)
        if not self.channels.is_free(lay):
            return None
        segments = []
        for v, u, i in lay:
            root = self.find(v)
            if root == FIXED:
                segments.append(Segment(None, u * i, 1))
            else:
                g = self.group_name(root, f"{name}:{ax}")
                self.sizes.setdefault(g, u)
                segments.append(Segment(g, u, i))
        if len(segments) == 1 and segments[0].inner == 1:
            return segments[0].group
        return tuple(segments)

    # ---- points ------------------------------------------------------------------------------

    def single_free_axis(self, node: object) -> tuple[int, Layout] | None:
        out = self.walk.env.get(node) if isinstance(node, fx.Node) else None
        if not is_tensor_layout(out):
            return None
        free = self.channels.free_axes(out)
        return free[0] if len(free) == 1 else None

    def is_residual_add(self, node: object) -> bool:
        if not isinstance(node, fx.Node) or node.op not in ("call_function", "call_method"):
            return False
        if op_name(node) not in ("add", "iadd", "add_"):
            return False
        operands = [self.walk.layout_of(a) for a in node.args[:2]]
        return all(is_tensor_layout(o) for o in operands) and self.single_free_axis(node) is not None

    def carried_points(self) -> tuple[dict[str, tuple[int, Layout]], str | None]:
        """REPAIR's ResNet points: each residual block's output (a nonlinearity module, called once,
        applied to a residual add) and, in networks that have such blocks, the classifier's input
        (also returned on its own; None where there is none)."""
        walk = self.walk
        out: dict[str, tuple[int, Layout]] = {}
        residual = False  # whether two tensors carrying channels are ever added
        for node in walk.gm.graph.nodes:
            if self.is_residual_add(node):
                residual = True
            if node.op != "call_module" or walk.module_calls[target(node)] != 1:
                continue
            if not isinstance(walk.model.get_submodule(target(node)), ACTIVATIONS) or not node.args:
                continue
            if self.is_residual_add(node.args[0]) and (free := self.single_free_axis(node)):
                out[target(node)] = free
        if not residual:
            return out, None
        classifier_input = None
        for node in walk.gm.graph.nodes:  # the classifier: a linear layer whose outputs are the network's
            is_linear = node.op == "call_module" and isinstance(walk.model.get_submodule(target(node)), nn.Linear)
            layout = walk.env.get(node)
            if not is_linear or not is_tensor_layout(layout):
                continue
            if self.channels.is_free(self.channels.resolve(layout[-1])):
                continue
            source = node.args[0]
            while (
                isinstance(source, fx.Node)
                and source.op in ("call_function", "call_method")
                and op_name(source) in (RESHAPE | {"contiguous"})
            ):
                source = source.args[0]
            if (
                isinstance(source, fx.Node)
                and source.op == "call_module"
                and walk.module_calls[target(source)] == 1
                and (free := self.single_free_axis(source))
            ):
                out[target(source)] = free
                classifier_input = target(source)
        return out, classifier_input

    def plain_group(self, lay: Layout) -> str | None:
        if len(lay) == 1 and lay[0][2] == 1:
            return self.names.get(self.find(lay[0][0]))
        return None

    def points(self) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...], dict[str, int]]:
        """Activation and REPAIR points: outputs of modules called once, with their channel axis."""
        walk = self.walk
        found: list[Point] = []
        for node in walk.gm.graph.nodes:
            if node.op != "call_module" or walk.module_calls[target(node)] != 1:
                continue
            free = self.single_free_axis(node)
            if free is None:
                continue
            axis, lay = free
            m = walk.model.get_submodule(target(node))
            if isinstance(m, ACTIVATIONS):
                kind = "activation"
            elif isinstance(m, NORMS):
                kind = "norm"
            elif isinstance(m, (nn.Linear, *CONVS)):
                kind = "affine"
            else:
                continue
            found.append((target(node), kind, axis, lay))

        # activation matching: for each group, its points of the best kind there is
        candidates: dict[str, dict[str, list[str]]] = {}
        for name, kind, _, lay in found:
            g = self.plain_group(lay)
            if g is not None:
                candidates.setdefault(g, {}).setdefault(kind, []).append(name)
        activations = {g: next(by_kind[k] for k in POINT_KINDS if k in by_kind) for g, by_kind in candidates.items()}

        # REPAIR: every norm with an affine, and the affine layers of groups no norm normalises; the
        # correction folds into the weight's axis 0, so that axis must run over the output channels
        normed = {self.find(v) for _, k, _, lay in found if k == "norm" for v, _, _ in lay}
        repair = []
        for name, kind, _, lay in found:
            if not self.foldable(name, lay):
                continue
            if kind == "norm" or (kind == "affine" and self.plain_group(lay) and self.find(lay[0][0]) not in normed):
                repair.append(name)
        axes = {t: a for t, _, a, _ in found if a != 1 and (t in repair or any(t in v for v in activations.values()))}
        return {g: tuple(v) for g, v in activations.items()}, tuple(repair), axes

    def foldable(self, name: str, lay: Layout) -> bool:
        """Whether a module's weight rows run over the channels of ``lay`` (and it has a bias)."""
        m = self.walk.model.get_submodule(name)
        weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
        if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
            return False
        rows = self.channels.bound.get((id(weight), 0))
        return rows is not None and self.channels.canonical(rows) == lay
