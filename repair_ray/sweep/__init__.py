"""The Ray shell around the core: schema and config, planning, train stage (Ray tasks), pair stage
(Ray tasks), runner.

Importing this package imports neither Ray nor torch; the names below load on first use and the
stages import Ray when they run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {"ConfigError": ".config", "SweepConfig": ".config", "load_config": ".config", "parse_config": ".config"}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)


if TYPE_CHECKING:
    from .config import ConfigError, SweepConfig, load_config, parse_config
