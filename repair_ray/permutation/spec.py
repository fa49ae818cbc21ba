"""The permutation spec: plain data saying which permutation group acts on which axis.

One :class:`PermutationSpec` drives everything that needs to know a network's symmetry:
applying a permutation, weight matching, activation matching (which module outputs carry a
group's units) and REPAIR (which module outputs are corrected, and in what order).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import nn


class SpecError(ValueError):
    """A permutation spec does not fit a model or a state dict, or a network's symmetry cannot be derived."""


@runtime_checkable
class HasPermutationSpec(Protocol):
    """A network that carries its own permutation spec (the zoo's networks do)."""

    def permutation_spec(self) -> PermutationSpec: ...


@dataclass(frozen=True)
class Segment:
    """A run of ``units`` units of one group along an axis, each unit repeated ``inner`` times in a row.

    An axis that is not one group's units in order is a tuple of segments: the channels of a
    concatenation (one segment per part), a flattened feature map before a linear layer (each
    channel a block of H×W entries: ``inner = H·W``) or a channels-last flatten (H·W segments of
    ``inner = 1``). ``group`` None marks units no permutation acts on.
    """

    group: str | None
    units: int
    inner: int = 1


# What a spec says of one axis: a group, None (not permuted) or a tuple of segments.
AxisEntry = str | None | tuple[Segment, ...]


def entry_groups(entry: AxisEntry) -> list[str]:
    """The groups acting on an axis, in order of appearance."""
    if entry is None:
        return []
    if isinstance(entry, str):
        return [entry]
    return list(dict.fromkeys(s.group for s in entry if s.group is not None))


def entry_size(entry: tuple[Segment, ...]) -> int:
    return sum(s.units * s.inner for s in entry)


def axis_index(entry: AxisEntry, perm: Mapping[str, torch.Tensor], device: torch.device | str = "cpu"):
    """The gather index of an axis under ``perm`` (None when the axis is not permuted)."""
    if entry is None:
        return None
    if isinstance(entry, str):
        return perm[entry]
    parts, offset = [], 0
    for s in entry:
        if s.group is None:
            parts.append(torch.arange(offset, offset + s.units * s.inner, device=device))
        else:
            units = perm[s.group].to(device)
            parts.append((offset + units[:, None] * s.inner + torch.arange(s.inner, device=device)).reshape(-1))
        offset += s.units * s.inner
    return torch.cat(parts)


def unit_positions(entry: AxisEntry, group: str, units: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(units, occurrences): where along the axis each unit of ``group`` sits."""
    if isinstance(entry, str):
        return torch.arange(units, device=device)[:, None]
    if entry is None:
        raise ValueError(f"group {group!r} has no units on an axis that no permutation acts on")
    cols, offset = [], 0
    for s in entry:
        if s.group == group:
            starts = offset + torch.arange(units, device=device)[:, None] * s.inner
            cols.append(starts + torch.arange(s.inner, device=device))
        offset += s.units * s.inner
    return torch.cat(cols, dim=1)


@dataclass(frozen=True)
class PermutationSpec:
    """Which permutation group acts on each axis of each state-dict entry.

    Attributes:
        axes: for every parameter AND buffer name, one entry per axis: a group name, ``None``
            (axis not permuted) or a tuple of :class:`Segment` (several groups, or a group's units
            repeated, along one axis). Scalars such as ``num_batches_tracked`` have ``()``.
        sizes: the number of units of each group.
        buffers: names in ``axes`` that are buffers (running statistics), not parameters;
            weight matching ignores them, applying a permutation does not.
        activations: for every group, the module names whose outputs carry the group's units
            on their channel axis; activation matching correlates these outputs.
        repair_points: module names whose outputs REPAIR corrects, in forward order; each is a
            Linear/Conv with a bias or a norm layer with an affine, so the correction folds into
            its weight and bias (whose axis 0 runs over the output channels).
        channel_axes: the channel axis of a point's output where it is not axis 1 (a
            channels-last LayerNorm or Linear on a (N, H, W, C) tensor has 3).
        carried_points: module outputs REPAIR also renormalises although no weight can take the
            correction (a residual block's output after the add, the classifier's input), each
            with the group entry of its channels: the repaired network carries a per-channel
            affine there (a forward hook), as the REPAIR paper does for ResNets.
        classifier_input: the carried point that is the classifier's input (None if none is):
            this tool's ``repair`` of nets without BatchNorm renormalises it, the paper's REPAIR of
            BatchNorm ResNets does not (:func:`repair_ray.correction.correction_plan`).
    """

    axes: Mapping[str, tuple[AxisEntry, ...]]
    sizes: Mapping[str, int]
    buffers: frozenset[str] = frozenset()
    activations: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    repair_points: tuple[str, ...] = ()
    channel_axes: Mapping[str, int] = field(default_factory=dict)
    carried_points: Mapping[str, AxisEntry] = field(default_factory=dict)
    classifier_input: str | None = None

    @property
    def corrected_points(self) -> tuple[str, ...]:
        """Every point REPAIR renormalises: the REPAIR points, then the carried ones."""
        return (*self.repair_points, *self.carried_points)

    def point_entry(self, point: str) -> AxisEntry:
        """The group entry of a corrected point's channels."""
        if point in self.carried_points:
            return self.carried_points[point]
        return self.axes[f"{point}.weight"][0]

    def channel_axis(self, point: str) -> int:
        """The channel axis of an activation or REPAIR point's output."""
        return self.channel_axes.get(point, 1)

    @property
    def groups(self) -> dict[str, list[tuple[str, int]]]:
        """For every group, the (state-dict name, axis) pairs it acts on."""
        out: dict[str, list[tuple[str, int]]] = {g: [] for g in self.sizes}
        for name, entries in self.axes.items():
            for axis, entry in enumerate(entries):
                for g in entry_groups(entry):
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
                if not isinstance(g, str):
                    self._validate_segments(name, axis, g, tensor)
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

    def _validate_segments(self, name: str, axis: int, entry: tuple[Segment, ...], tensor: torch.Tensor) -> None:
        if entry_size(entry) != tensor.shape[axis]:
            raise SpecError(
                f"{name!r} axis {axis} has size {tensor.shape[axis]} but its segments cover {entry_size(entry)} entries"
            )
        for s in entry:
            if s.group is None:
                continue
            if s.group not in self.sizes:
                raise SpecError(f"{name!r} axis {axis} names unknown permutation group {s.group!r}")
            if s.units != self.sizes[s.group]:
                raise SpecError(
                    f"{name!r} axis {axis} has a segment of {s.units} units of group {s.group!r}, "
                    f"which has {self.sizes[s.group]}"
                )

    def check_modules(self, model: nn.Module) -> None:
        """Check that every activation and REPAIR point names a module of ``model``."""
        modules = dict(model.named_modules())
        for g, points in self.activations.items():
            if g not in self.sizes:
                raise SpecError(f"activation points given for unknown group {g!r}")
            for p in points:
                if p not in modules:
                    raise SpecError(f"activation point {p!r} of group {g!r} is not a module of the model")
        for p in self.corrected_points:
            if p not in modules:
                raise SpecError(f"REPAIR point {p!r} is not a module of the model")


class SpecBuilder:
    """Builds a spec from layer-level statements, in the style of git-re-basin's helpers."""

    def __init__(self) -> None:
        self.axes: dict[str, tuple[str | None, ...]] = {}
        self.activations: dict[str, list[str]] = {}
        self.repair_points: list[str] = []
        self.carried: dict[str, str] = {}
        self.classifier_input: str | None = None

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

    def carry(self, module_name: str, group: str, *, classifier_input: bool = False) -> None:
        """A REPAIR point without a weight to fold into (see :attr:`PermutationSpec.carried_points`);
        ``classifier_input``: it is the classifier's input (:attr:`PermutationSpec.classifier_input`)."""
        self.carried[module_name] = group
        if classifier_input:
            self.classifier_input = module_name

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
            carried_points=dict(self.carried),
            classifier_input=self.classifier_input,
        )
        spec.validate(state)
        spec.check_modules(model)
        return spec
