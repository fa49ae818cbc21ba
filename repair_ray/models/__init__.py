"""The model zoo: one registry mapping an architecture name to its builder and its knobs.

:class:`ModelConfig` is the one home of the rules for model knobs (which widths, depths and
norms an architecture takes); :func:`build_model` and the sweep's config both go through it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import InitVar, dataclass
from typing import Any, cast

from torch import nn

from ..errors import Problems, unknown_choice
from ..permutation.derive import derive_spec
from ..permutation.spec import HasPermutationSpec, PermutationSpec, SpecError
from .common import DEFAULT_INIT, INITS, NORMS, TODAYS_INIT
from .external import (
    DATA_ARGS,
    KNOBS,
    ImportRefused,
    allowed_modules,
    build_external,
    check_allowed,
    factory_parameters,
    import_allowed,
    is_external,
)
from .mlp import MLP
from .resnet import cifar_resnet, resnet18, resnet50
from .vgg import VGG, VGG_LAYERS


@dataclass(frozen=True)
class Arch:
    """What the registry knows of an architecture: its builder and the knobs it accepts."""

    build: Callable[..., nn.Module]
    norms: tuple[str, ...]
    default_depth: int
    depths: Callable[[int], bool]
    depth_hint: str
    integer_width: bool  # mlp width counts units; conv widths are multipliers
    layer_widths: bool = False  # takes a list of per-layer widths (mlp: LeNet-300-100 is width [300, 100])


ARCHS: dict[str, Arch] = {
    "mlp": Arch(MLP, NORMS, 3, lambda d: d >= 1, "a positive number of hidden layers", True, True),
    "vgg": Arch(VGG, NORMS, 11, lambda d: d in VGG_LAYERS, "one of 11, 13, 16, 19", False),
    # the CIFAR family of He et al. at any depth 6n+2; resnet20 is its depth-20 member
    "cifar_resnet": Arch(
        cifar_resnet,
        ("batch", "layer"),
        20,
        lambda d: d >= 8 and (d - 2) % 6 == 0,
        "6n+2: 8, 14, 20, 32, 44, ...",
        False,
    ),
    "resnet20": Arch(cifar_resnet, ("batch", "layer"), 20, lambda d: d == 20, "20 (cifar_resnet takes 6n+2)", False),
    "resnet18": Arch(resnet18, ("batch", "layer"), 18, lambda d: d == 18, "18", False),
    "resnet50": Arch(resnet50, ("batch", "layer"), 50, lambda d: d == 50, "50", False),
}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class ModelConfig:
    """A network of the zoo, of torchvision or of a user's factory, with its knobs; checked on construction.

    ``arch`` is a zoo name (``mlp``, ``vgg``, ...), ``torchvision:<name>`` or
    ``package.module:factory``. For the zoo, ``width`` counts hidden units for ``mlp`` (an
    integer) and is a channel multiplier for the others; ``depth`` None means the
    architecture's default and ``norm`` None means ``none``; ``init`` (``torch``, ``he`` or ``lecun``,
    see :func:`repair_ray.models.common.initialise`) None means :data:`DEFAULT_INIT`. For other
    architectures (which initialise themselves, so take no ``init``) a knob that
    is given is passed to the factory, which must name it as a parameter; ``kwargs`` (a mapping,
    kept as canonical JSON so configs compare and hash by value) are passed as they are.
    Raises :class:`repair_ray.SettingError` naming every offending field.

    ``allow_import`` names the modules (or packages above them) that a ``package.module:factory``
    may import: naming a module runs its code, so nothing else is imported. A config whose module
    is not allowed is plain data: its knobs are checked against the factory, and it is built, only
    where it is allowed (:class:`~repair_ray.models.external.ImportRefused` otherwise). The
    allowance is not part of the config's value (it compares, hashes and describes the same) but
    travels with the object, pickled to Ray workers included.
    """

    arch: str
    width: float | tuple[int, ...] | None = None
    depth: int | None = None
    norm: str | None = None
    kwargs: str | dict[str, Any] = ""
    init: str | None = None
    allow_import: InitVar[Iterable[str] | str | None] = ()

    def __post_init__(self, allow_import: Iterable[str] | str | None = ()) -> None:
        problems = Problems("ModelConfig")
        try:
            object.__setattr__(self, "_allowed", allowed_modules(allow_import))
        except ValueError as error:
            object.__setattr__(self, "_allowed", ())
            problems.add("allow_import", str(error))
        kwargs = self._canonical_kwargs(problems)
        if is_external(self.arch):
            if self.init is not None:
                problems.add("init", f"applies to the zoo's architectures; {self.arch} initialises its own network")
            self._check_external(kwargs, problems)
            problems.raise_if_any()
            return
        info = ARCHS.get(self.arch)
        if info is None:
            problems.add(
                "arch",
                unknown_choice("arch", self.arch, list(ARCHS))
                + " (or 'torchvision:<name>' / 'package.module:factory' for any other network)",
            )
            problems.raise_if_any()
        else:
            self._settle_zoo(info, kwargs, problems)

    def _settle_zoo(self, info: Arch, kwargs: dict[str, Any], problems: Problems) -> None:
        """Check a zoo architecture's knobs against ``info``, then fill in the defaults."""
        if kwargs:
            problems.add("kwargs", f"{self.arch} is a zoo architecture and takes no keyword arguments")
        width = self.width
        if width is None:
            problems.add("width", f"{self.arch} needs a width")
        elif isinstance(width, (list, tuple)):
            if not info.layer_widths:
                problems.add("width", f"{self.arch} takes one width, not a list of per-layer widths, got {width!r}")
            elif not width or not all(_is_number(w) and w > 0 and int(w) == w for w in width):
                problems.add(
                    "width", f"per-layer widths must be positive integers, one per hidden layer, got {width!r}"
                )
            elif self.depth is not None and self.depth != len(width):
                problems.add("depth", f"is {self.depth!r} but width lists {len(width)} hidden layers (leave depth out)")
            else:
                object.__setattr__(self, "width", tuple(int(w) for w in width))
                object.__setattr__(self, "depth", len(width))
        elif not _is_number(width) or not width > 0:
            problems.add("width", f"must be a positive {'integer' if info.integer_width else 'number'}, got {width!r}")
        elif info.integer_width and int(width) != width:
            problems.add("width", f"{self.arch} width counts hidden units and must be an integer, got {width!r}")
        depth = info.default_depth if self.depth is None else self.depth
        if not (isinstance(depth, int) and not isinstance(depth, bool)) or not info.depths(depth):
            problems.add("depth", f"{self.arch} depth must be {info.depth_hint}, got {depth!r}")
        norm = "none" if self.norm is None else self.norm
        if norm not in info.norms:
            problems.add("norm", f"{self.arch} supports norm {', '.join(info.norms)}; got {norm!r}")
        init = DEFAULT_INIT if self.init is None else self.init
        if init not in INITS:
            problems.add("init", unknown_choice("init", init, list(INITS)))
        problems.raise_if_any()
        if isinstance(self.width, (int, float)):  # a tuple of per-layer widths is settled above
            object.__setattr__(self, "width", int(self.width) if info.integer_width else float(self.width))
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "norm", norm)
        object.__setattr__(self, "init", init)

    def _canonical_kwargs(self, problems: Problems) -> dict[str, Any]:
        raw = self.kwargs
        try:
            value = json.loads(raw) if isinstance(raw, str) and raw else (raw or {})
            if not isinstance(value, dict):
                raise TypeError(f"must be a mapping of keyword arguments, got {type(value).__name__}")
            canonical = json.dumps(value, sort_keys=True, allow_nan=False) if value else ""
        except (TypeError, ValueError) as error:
            problems.add("kwargs", f"must be a mapping of plain values (numbers, strings, lists, mappings): {error}")
            return {}
        object.__setattr__(self, "kwargs", canonical)
        return value

    def _check_external(self, kwargs: dict[str, Any], problems: Problems) -> None:
        for knob in KNOBS:
            if knob in kwargs:
                problems.add("kwargs", f"gives {knob!r}; use the model's {knob} key, which the sweep grid varies")
        for key in DATA_ARGS:
            if key in kwargs:
                problems.add("kwargs", f"gives {key!r}, which the sweep takes from the dataset")
        if not self.importable:
            return  # data only: the factory's parameters are checked where it may be imported
        try:
            named, _ = factory_parameters(self.arch, self.allowed_imports)
        except ValueError as error:
            problems.add("arch", str(error))
            return
        for knob in KNOBS:
            value = getattr(self, knob)
            if value is not None and knob not in named:
                problems.add(
                    knob,
                    f"{self.arch} takes no {knob!r} argument, so {knob} {value!r} cannot reach it "
                    f"(it takes: {', '.join(sorted(named)) or 'no named arguments'})",
                )

    @property
    def allowed_imports(self) -> tuple[str, ...]:
        """The modules this config may import (see the class docstring)."""
        return getattr(self, "_allowed", ())

    @property
    def importable(self) -> bool:
        """Whether this network can be built here: it imports nothing of the user's, or what it imports is allowed."""
        return import_allowed(self.arch, self.allowed_imports)

    def described(self) -> dict[str, Any]:
        """The config as plain data for keys and checkpoints; without ``kwargs`` when there are none
        and without ``init`` when it is ``he`` (the zoo's only init before it was a knob), so the
        keys and checkpoints of networks made before either existed stay what they were."""
        width = list(self.width) if isinstance(self.width, tuple) else self.width
        out: dict[str, Any] = {"arch": self.arch, "width": width, "depth": self.depth, "norm": self.norm}
        if self.kwargs:
            out["kwargs"] = self.kwargs
        if self.init is not None and self.init != TODAYS_INIT:
            out["init"] = self.init
        return out

    @property
    def options(self) -> dict[str, Any]:
        """The keyword arguments for an architecture outside the zoo."""
        raw = self.kwargs  # canonical JSON after construction
        return json.loads(raw) if isinstance(raw, str) and raw else dict(raw or {})

    @property
    def label(self) -> str:
        """A readable name: ``mlp-w512-d3-none``, ``torchvision-resnet18``."""
        if not is_external(self.arch):
            width = "x".join(map(str, self.width)) if isinstance(self.width, tuple) else f"{self.width:g}"
            return f"{self.arch}-w{width}-d{self.depth}-{self.norm}"
        parts = [re.sub(r"[^A-Za-z0-9_.]+", "-", self.arch)]
        for knob in KNOBS:
            value = getattr(self, knob)
            if value is not None:
                parts.append(str(value) if knob == "norm" else f"{knob[0]}{value:g}")
        return "-".join(parts)

    def build(
        self,
        num_classes: int = 10,
        in_shape: tuple[int, ...] = (1, 28, 28),
        *,
        allow_import: Iterable[str] | str | None = None,
    ) -> nn.Module:
        """A freshly initialised network (under the current torch RNG state).

        ``allow_import`` adds modules to the config's own allowance for this build.

        Raises:
            ImportRefused: the network's module is not allowed (nothing was imported).
        """
        if is_external(self.arch):
            allowed = (*self.allowed_imports, *allowed_modules(allow_import))
            knobs = {k: getattr(self, k) for k in KNOBS}
            return build_external(self.arch, self.options, knobs, num_classes, tuple(in_shape), allowed)
        model = ARCHS[self.arch].build(
            width=self.width,
            depth=self.depth,
            norm=self.norm,
            num_classes=num_classes,
            in_shape=tuple(in_shape),
            init=self.init,
        )
        model.arch = self.arch  # type: ignore[assignment]  # torch types Module attributes as tensors or modules
        return model

    def permutation_spec(self, num_classes: int = 10, in_shape: tuple[int, ...] = (1, 28, 28)) -> PermutationSpec:
        """The permutation spec of this network: the zoo's own, or derived from the graph (see
        :func:`repair_ray.permutation_spec`). It names state-dict entries and modules, so it fits
        every instance; it is computed once per process, on the meta device where the factory
        allows it.

        Raises:
            SpecError: naming the module and op whose symmetry cannot be derived.
            ImportRefused: the network's module is not allowed (nothing was imported).
        """
        check_allowed(self.arch, self.allowed_imports)  # before the cache: another config may have built it
        return _spec(self, num_classes, tuple(in_shape))

    def skeleton(self, num_classes: int = 10, in_shape: tuple[int, ...] = (1, 28, 28)) -> nn.Module:
        """This network on the meta device (no memory; on the CPU when the factory computes with
        tensors while building), built once per process: for shapes, FLOPs and specs, not for training."""
        check_allowed(self.arch, self.allowed_imports)
        return _meta_build(self, num_classes, tuple(in_shape))

    @property
    def has_batchnorm(self) -> bool:
        """Whether the network has BatchNorm layers (what RESET needs); read off a meta-device build."""
        check_allowed(self.arch, self.allowed_imports)
        return _has_batchnorm(self)


@functools.lru_cache(maxsize=256)
def _meta_build(config: ModelConfig, num_classes: int = 10, in_shape: tuple[int, ...] = (1, 28, 28)) -> nn.Module:
    import torch

    try:
        with torch.device("meta"):
            return config.build(num_classes, in_shape)
    except (NotImplementedError, RuntimeError):  # a factory that computes on tensors while building
        return config.build(num_classes, in_shape)


@functools.lru_cache(maxsize=256)
def _spec(config: ModelConfig, num_classes: int, in_shape: tuple[int, ...]) -> PermutationSpec:
    import torch

    model = _meta_build(config, num_classes, in_shape)
    if isinstance(model, HasPermutationSpec) and not is_external(config.arch):
        return model.permutation_spec()
    device = next(iter(model.parameters()), torch.empty(0)).device
    example = torch.zeros(2, *in_shape, device=device)
    spec = derive_spec(model, example)
    with torch.no_grad():
        out = model.eval()(example)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SpecError(
            f"{config.arch} must return logits of shape (batch, {num_classes}) for this dataset; it returns {shape}"
        )
    return spec


@functools.lru_cache(maxsize=256)
def _has_batchnorm(config: ModelConfig) -> bool:
    from ..correction import has_batchnorm

    return has_batchnorm(_meta_build(config))


def build_model(
    arch: str,
    *,
    width: float | Sequence[int] | None = None,
    depth: int | None = None,
    norm: str | None = None,
    init: str | None = None,
    num_classes: int = 10,
    in_shape: tuple[int, ...] = (1, 28, 28),
    allow_import: Iterable[str] | str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a freshly initialised network of the zoo, of torchvision or of a factory (see :class:`ModelConfig`).

    Args:
        arch: ``mlp``, ``vgg``, ``cifar_resnet`` (CIFAR family, depth 6n+2), ``resnet20`` (its
            depth-20 member), ``resnet18`` or ``resnet50``.
        width: hidden units for ``mlp`` (or one per hidden layer: ``[300, 100]`` is LeNet-300-100);
            a channel multiplier for the others (1 = the paper's width).
        depth: hidden layers for ``mlp``; 11/13/16/19 for ``vgg``; 6n+2 for ``cifar_resnet``;
            None for the architecture's default.
        norm: ``none``, ``batch`` or ``layer`` (resnets: ``batch`` or ``layer``).
        init: ``torch`` (PyTorch's default), ``he`` or ``lecun`` for the zoo; None for the default.
        num_classes: outputs of the classifier.
        in_shape: (channels, height, width) of one input.
        allow_import: the modules (or packages above them) a ``package.module:factory`` may import;
            nothing else is imported (torchvision's builders need no allowance).
        kwargs: keyword arguments of a torchvision builder or a factory.
    """
    # ModelConfig takes any sequence of per-layer widths and keeps it as a tuple
    config_width = cast("float | tuple[int, ...] | None", width)
    return ModelConfig(arch, config_width, depth, norm, kwargs, init, allow_import).build(num_classes, in_shape)


def permutation_spec(model: nn.Module, example_input: Any = None) -> PermutationSpec:
    """The :class:`~repair_ray.PermutationSpec` of a network: which permutation acts on which axis.

    With ``example_input`` (one batch, a tensor or a tuple, on the model's device or the meta
    device) the spec is derived from the network's ``torch.fx`` graph: any network fx can trace,
    see the support table in docs/studies.md. Without it, the model must carry its own
    ``permutation_spec()`` (the zoo's models do).

    Raises:
        SpecError: naming the module and op whose channel symmetry is not a plain permutation (or
            cannot be told), or when the network cannot be traced.
    """
    if example_input is not None:
        return derive_spec(model, example_input)
    if not isinstance(model, HasPermutationSpec):
        raise TypeError(
            f"{type(model).__name__} has no permutation_spec() of its own; pass an example input, "
            "permutation_spec(model, example_input), to derive it from the graph"
        )
    return model.permutation_spec()


__all__ = ["ARCHS", "Arch", "ImportRefused", "ModelConfig", "build_model", "permutation_spec"]
