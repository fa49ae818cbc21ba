"""The Ray shell around the core: schema and config, planning, train stage (Ray Tune), pair stage
(Ray tasks), runner.

Importing this package imports neither Ray nor torch; the names below load on first use and the
stages import Ray when they run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {"ConfigError": ".config", "SweepConfig": ".config", "load_config": ".config", "parse_config": ".config"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'repair_ray.sweep' has no attribute {name!r}")


if TYPE_CHECKING:
    from .config import ConfigError, SweepConfig, load_config, parse_config
