"""Networks from outside the zoo: ``torchvision:<name>`` and ``package.module:factory``.

A factory is any callable returning an ``nn.Module``. It must be importable wherever it runs:
in a sweep that means on every Ray worker (an installed package, or Ray's ``runtime_env``
``py_modules``/``working_dir``; see docs/studies.md). The sweep's knobs reach the factory only as
the keyword arguments it names: ``width``, ``depth``, ``norm``, ``num_classes``, ``in_shape``
and ``in_channels``; torchvision's classification builders get ``num_classes``.

Naming a module in a config runs that module's code, so a name is imported only where the user
allowed it (:func:`import_allowed`): the command line's ``--allow-import``, the
``REPAIR_RAY_ALLOW_IMPORT`` environment variable, or ``allow_import=`` in Python. torchvision's
classification builders are a fixed table (``torchvision.models.get_model_builder``) and need no
allowance. A config read back from a sweep folder imports nothing.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

KNOBS = ("width", "depth", "norm")
# what a factory may take besides the user's keyword arguments and the knobs
DATA_ARGS = ("num_classes", "in_shape", "in_channels")


ALLOW_IMPORT_ENV = "REPAIR_RAY_ALLOW_IMPORT"
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class ImportRefused(ValueError):
    """A config names a module to import that the user did not allow."""


def is_external(arch: str) -> bool:
    return ":" in arch


def module_of(arch: str) -> str:
    """The module an external ``arch`` names: ``my_pkg.nets:make`` -> ``my_pkg.nets``."""
    return arch.partition(":")[0]


def needs_import(arch: str) -> bool:
    """Whether building ``arch`` imports a module the user names (not the zoo, not torchvision's table)."""
    return is_external(arch) and module_of(arch) != "torchvision"


def allowed_modules(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``allow_import`` as a tuple of module names; a string may list several, comma-separated.

    Raises:
        ValueError: for a name that is not a dotted Python module name.
    """
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else [part for v in value for part in str(v).split(",")]
    names = tuple(dict.fromkeys(item.strip() for item in items if item.strip()))
    bad = [name for name in names if not _MODULE_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"allow_import takes module names such as my_pkg or my_pkg.nets, got {bad[0]!r}")
    return names


def allowed_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The modules ``$REPAIR_RAY_ALLOW_IMPORT`` allows (comma-separated)."""
    return allowed_modules((os.environ if environ is None else environ).get(ALLOW_IMPORT_ENV))


def import_allowed(arch: str, allow_import: Iterable[str]) -> bool:
    """Whether ``arch`` may be built: it imports nothing of the user's, or its module is allowed
    (allowing a package allows its submodules: ``my_pkg`` allows ``my_pkg.nets``)."""
    if not needs_import(arch):
        return True
    module = module_of(arch)
    return any(module == name or module.startswith(name + ".") for name in allow_import)


def refusal(arch: str) -> str:
    """Why ``arch`` is not imported, and how the user allows it."""
    module = module_of(arch)
    return (
        f"{arch!r} would import and run the module {module!r}, which is not allowed: code named in a config runs "
        f"only when you allow it, with --allow-import {module} on the command line (or "
        f"{ALLOW_IMPORT_ENV}={module}, or allow_import=[{module!r}] in Python)"
    )


def check_allowed(arch: str, allow_import: Iterable[str]) -> None:
    """Raises :class:`ImportRefused` unless :func:`import_allowed`."""
    if not import_allowed(arch, allow_import):
        raise ImportRefused(refusal(arch))


def load_factory(arch: str, allow_import: Iterable[str] = ()) -> Callable[..., nn.Module]:
    """The callable named by ``torchvision:<name>`` or ``package.module:attribute``; the module is
    imported only when ``allow_import`` names it or a package above it.

    Raises:
        ImportRefused: the module is not allowed (nothing was imported).
        ValueError: naming what could not be imported or found.
    """
    check_allowed(arch, allow_import)
    return _load_factory(arch)


@functools.lru_cache(maxsize=64)
def _load_factory(arch: str) -> Callable[..., nn.Module]:
    module_name, _, attr = arch.partition(":")
    if not module_name or not attr:
        raise ValueError(f"must be a zoo name or 'package.module:factory' (e.g. torchvision:resnet18), got {arch!r}")
    if module_name == "torchvision":
        from torchvision import models

        try:
            return models.get_model_builder(attr)
        except ValueError:
            known = ", ".join(sorted(models.list_models(module=models))[:12])
            raise ValueError(f"torchvision has no classification model {attr!r} (e.g. {known}, ...)") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"cannot import {module_name!r} for {arch!r}: {error}. The module must be importable here and on "
            "every Ray worker (install it, or ship it with runtime_env py_modules / working_dir)"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{arch!r} is not callable")
    return obj


def factory_parameters(arch: str, allow_import: Iterable[str] = ()) -> tuple[set[str], bool]:
    """The keyword parameters a factory names, and whether it also takes ``**kwargs``."""
    factory = load_factory(arch, allow_import)
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return set(), True
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def factory_arguments(
    arch: str,
    kwargs: dict[str, Any],
    knobs: dict[str, Any],
    num_classes: int,
    in_shape: tuple[int, ...],
    allow_import: Iterable[str] = (),
) -> dict[str, Any]:
    """The keyword arguments a factory is called with."""
    named, _ = factory_parameters(arch, allow_import)
    args = dict(kwargs)
    args.update({k: v for k, v in knobs.items() if v is not None})
    data = {"num_classes": num_classes, "in_shape": tuple(in_shape), "in_channels": in_shape[0]}
    for key, value in data.items():
        if key in named and key not in args:
            args[key] = value
    if arch.startswith("torchvision:") and "num_classes" not in args:
        args["num_classes"] = num_classes
    return args


def build_external(
    arch: str,
    kwargs: dict[str, Any],
    knobs: dict[str, Any],
    num_classes: int,
    in_shape: tuple[int, ...],
    allow_import: Iterable[str] = (),
) -> nn.Module:
    factory = load_factory(arch, allow_import)
    model = factory(**factory_arguments(arch, kwargs, knobs, num_classes, in_shape, allow_import))
    if not isinstance(model, nn.Module):
        raise TypeError(f"{arch} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
