"""The permutation spec: plain data saying which permutation group acts on which axis.

One :class:`PermutationSpec` drives everything that needs to know a network's symmetry:
applying a permutation, weight matching, activation matching (which module outputs carry a
group's units) and REPAIR (which module outputs are corrected, and in what order).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn


class SpecError(ValueError):
    """A permutation spec does not fit a model or a state dict."""


@dataclass(frozen=True)
class PermutationSpec:
    """Which permutation group acts on each axis of each state-dict entry.

    Attributes:
        axes: for every parameter AND buffer name, one entry per axis: a group name or ``None``
            (axis not permuted). Scalars such as ``num_batches_tracked`` have ``()``.
        sizes: the number of units of each group.
        buffers: names in ``axes`` that are buffers (running statistics), not parameters;
            weight matching ignores them, applying a permutation does not.
        activations: for every group, the module names whose outputs (channel axis 1) carry the
            group's units; activation matching correlates these outputs.
        repair_points: module names whose outputs (channel axis 1) REPAIR corrects, in forward
            order; each is a Linear/Conv with a bias or a norm layer with an affine, so the
            correction folds into its weight and bias.
    """

    axes: Mapping[str, tuple[str | None, ...]]
    sizes: Mapping[str, int]
    buffers: frozenset[str] = frozenset()
    activations: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    repair_points: tuple[str, ...] = ()

    @property
    def groups(self) -> dict[str, list[tuple[str, int]]]:
        """For every group, the (state-dict name, axis) pairs it acts on."""
        out: dict[str, list[tuple[str, int]]] = {g: [] for g in self.sizes}
        for name, groups in self.axes.items():
            for axis, g in enumerate(groups):
                if g is not None:
                    out[g].append((name, axis))
        return out

    def validate(self, state: Mapping[str, torch.Tensor]) -> None:
        """Check that the spec covers exactly ``state``'s entries with consistent axis sizes.

        Raises:
            SpecError: naming the first offending entry.
        """
        missing = sorted(set(state) - set(self.axes))
        if missing:
            raise SpecError(f"permutation spec has no entry for {missing[0]!r} (and {len(missing) - 1} more)")
        extra = sorted(set(self.axes) - set(state))
        if extra:
            raise SpecError(f"permutation spec names {extra[0]!r}, which the model does not have")
        for name, groups in self.axes.items():
            tensor = state[name]
            if len(groups) != tensor.dim():
                raise SpecError(
                    f"permutation spec gives {len(groups)} axes for {name!r}, which has shape {tuple(tensor.shape)}"
                )
            for axis, g in enumerate(groups):
                if g is None:
                    continue
                if g not in self.sizes:
                    raise SpecError(f"{name!r} axis {axis} names unknown permutation group {g!r}")
                if tensor.shape[axis] != self.sizes[g]:
                    raise SpecError(
                        f"{name!r} axis {axis} has size {tensor.shape[axis]} but permutation group {g!r} "
                        f"has {self.sizes[g]} units"
                    )
        unused = [g for g, members in self.groups.items() if not members]
        if unused:
            raise SpecError(f"permutation group {unused[0]!r} acts on no parameter")

    def check_modules(self, model: nn.Module) -> None:
        """Check that every activation and REPAIR point names a module of ``model``."""
        modules = dict(model.named_modules())
        for g, points in self.activations.items():
            if g not in self.sizes:
                raise SpecError(f"activation points given for unknown group {g!r}")
            for p in points:
                if p not in modules:
                    raise SpecError(f"activation point {p!r} of group {g!r} is not a module of the model")
        for p in self.repair_points:
            if p not in modules:
                raise SpecError(f"REPAIR point {p!r} is not a module of the model")


class SpecBuilder:
    """Builds a spec from layer-level statements, in the style of git-re-basin's helpers."""

    def __init__(self) -> None:
        self.axes: dict[str, tuple[str | None, ...]] = {}
        self.activations: dict[str, list[str]] = {}
        self.repair_points: list[str] = []

    def linear(self, name: str, p_in: str | None, p_out: str | None, *, bias: bool = True) -> None:
        self.axes[f"{name}.weight"] = (p_out, p_in)
        if bias:
            self.axes[f"{name}.bias"] = (p_out,)

    def conv(self, name: str, p_in: str | None, p_out: str | None, *, bias: bool = False) -> None:
        self.axes[f"{name}.weight"] = (p_out, p_in, None, None)
        if bias:
            self.axes[f"{name}.bias"] = (p_out,)

    def norm(self, name: str, p: str, module: nn.Module | None) -> None:
        """A norm layer over the channels of group ``p`` (nothing when ``module`` is None)."""
        if module is None:
            return
        if getattr(module, "weight", None) is not None:
            self.axes[f"{name}.weight"] = (p,)
        if getattr(module, "bias", None) is not None:
            self.axes[f"{name}.bias"] = (p,)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            self.axes[f"{name}.running_mean"] = (p,)
            self.axes[f"{name}.running_var"] = (p,)
            self.axes[f"{name}.num_batches_tracked"] = ()

    def activation(self, group: str, module_name: str) -> None:
        self.activations.setdefault(group, []).append(module_name)

    def repair(self, module_name: str) -> None:
        self.repair_points.append(module_name)

    def build(self, model: nn.Module) -> PermutationSpec:
        """Finish the spec, taking group sizes from ``model`` and validating it against the model."""
        state = model.state_dict()
        sizes: dict[str, int] = {}
        for name, groups in self.axes.items():
            if name not in state:
                raise SpecError(f"permutation spec names {name!r}, which the model does not have")
            for axis, g in enumerate(groups):
                if g is not None:
                    sizes.setdefault(g, int(state[name].shape[axis]))
        buffers = frozenset(n for n, _ in model.named_buffers() if n in self.axes)
        spec = PermutationSpec(
            axes=dict(self.axes),
            sizes=sizes,
            buffers=buffers,
            activations={g: tuple(v) for g, v in self.activations.items()},
            repair_points=tuple(self.repair_points),
        )
        spec.validate(state)
        spec.check_modules(model)
        return spec
