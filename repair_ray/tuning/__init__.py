"""Tuning a model config's recipe before a seed study (pure PyTorch; ``repair-ray tune`` runs it on Ray Tune).

:class:`TuneSettings` is the ``tune:`` section of a sweep, checked when made: a search space over the
keys of :class:`~repair_ray.training.TrainConfig` (:class:`Distribution`: choice, grid, uniform,
loguniform), the metric and mode, the scheduler and the seeds each sample trains. :func:`holdout`
carves the validation split out of the train split (the test split is never touched), and
:class:`TuneRun` trains a sample's seeds side by side an epoch at a time, averaging their
validation metrics, resumable from its checkpoints.
"""

from __future__ import annotations

from .run import TuneRun, holdout
from .space import METRICS, SCHEDULERS, Distribution, TuneSettings, sampled_recipe

__all__ = ["METRICS", "SCHEDULERS", "Distribution", "TuneRun", "TuneSettings", "holdout", "sampled_recipe"]
