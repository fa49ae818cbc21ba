"""Networks from outside the zoo: ``torchvision:<name>`` and ``package.module:factory``.

A factory is any callable returning an ``nn.Module``. It must be importable wherever it runs:
in a sweep that means on every Ray worker (an installed package, or Ray's ``runtime_env``
``py_modules``/``working_dir``; see the README). The sweep's knobs reach the factory only as
the keyword arguments it names: ``width``, ``depth``, ``norm``, ``num_classes``, ``in_shape``
and ``in_channels``; torchvision's classification builders get ``num_classes``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

KNOBS = ("width", "depth", "norm")
# what a factory may take besides the user's keyword arguments and the knobs
DATA_ARGS = ("num_classes", "in_shape", "in_channels")


def is_external(arch: str) -> bool:
    return ":" in arch


@functools.lru_cache(maxsize=64)
def load_factory(arch: str) -> Callable[..., nn.Module]:
    """The callable named by ``torchvision:<name>`` or ``package.module:attribute``.

    Raises:
        ValueError: naming what could not be imported or found.
    """
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


def factory_parameters(arch: str) -> tuple[set[str], bool]:
    """The keyword parameters a factory names, and whether it also takes ``**kwargs``."""
    factory = load_factory(arch)
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return set(), True
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def factory_arguments(
    arch: str, kwargs: dict[str, Any], knobs: dict[str, Any], num_classes: int, in_shape: tuple[int, ...]
) -> dict[str, Any]:
    """The keyword arguments a factory is called with."""
    named, _ = factory_parameters(arch)
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
    arch: str, kwargs: dict[str, Any], knobs: dict[str, Any], num_classes: int, in_shape: tuple[int, ...]
) -> nn.Module:
    factory = load_factory(arch)
    model = factory(**factory_arguments(arch, kwargs, knobs, num_classes, in_shape))
    if not isinstance(model, nn.Module):
        raise TypeError(f"{arch} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
