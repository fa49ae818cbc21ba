"""The Ray shell around the core: config, train stage (Ray Tune), pair stage (Ray tasks), runner.

Importing this package does not import Ray; the stages import it when they run.
"""

from .config import ConfigError, SweepConfig, load_config, parse_config

__all__ = ["ConfigError", "SweepConfig", "load_config", "parse_config"]
