"""The Ray shell around the core: a sweep config becomes train and pair tasks on Ray, and tables.

A map, in the order data flows:

- ``schema`` (the YAML's shape), ``config`` (YAML -> :class:`SweepConfig`), with ``plans`` (the
  grid: model keys, seeds, pairs), ``designs`` (branch, imp), ``rules`` (checks before Ray) and
  ``stacking`` (seeds trained together);
- ``layout``: every path and file name of a sweep folder; ``stored``: the config a folder records;
- ``planning``: what is done and what is left, from storage (the one definition of "done"),
  used by ``runner`` (``run``), ``status`` and the CLI's ``validate``;
- ``messages``: what the driver sends to Ray workers (:class:`~.messages.Trial`,
  :class:`~.messages.PairJob`, :class:`~.messages.PairContext`) and what comes back;
- train stage: ``trials`` (group the work into trials), ``train_scheduler`` (what may start),
  ``train_worker`` (what a task runs), ``train_stage`` (the driver's loop);
- pair stage: ``pair_worker`` (what a task runs), ``pair_stage`` (the driver's loop, part files);
  ``rows``: the rows both stages write;
- ``runner`` (both stages pipelined, under the ``lease``), ``cluster`` (Ray and resources),
  ``worker`` (device, threads, dataset cache in a worker), ``jobs`` (Ray Jobs), ``tracking`` (MLflow).

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
