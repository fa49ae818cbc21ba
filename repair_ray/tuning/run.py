"""One sample of a recipe, trained: its seeds side by side, an epoch at a time, on a held-out split.

The Ray shell (:mod:`repair_ray.sweep.tune_stage`) calls :meth:`TuneRun.epoch` once per epoch and
reports what it returns to Tune; this module knows nothing of Tune.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import torch

from ..datasets import Dataset
from ..models import ModelConfig
from ..training import NonFiniteLossError, TrainConfig, Trainer


def holdout(dataset: Dataset, samples: int, seed: int) -> Dataset:
    """What a tuning trial sees of ``dataset``: ``train`` is the train split without ``samples``
    samples drawn with ``seed``, and ``test`` is those samples (the validation split). The test
    split is not in it: tuning never sees it, so a study's test numbers stay unbiased.

    Raises:
        ValueError: ``samples`` leaves nothing to train on.
    """
    held, rest = dataset.train.split_off(samples, seed=seed)
    return dataclasses.replace(dataset, train=rest, test=held)


class TuneRun:
    """The ``seeds`` of one sample of ``recipe``, each a :class:`Trainer` on the held-out dataset
    (:func:`holdout`), trained in lock step for ``epochs`` epochs (at most the recipe's: fewer stop
    its schedule part way). With ``checkpoint_dir`` each seed resumes from its checkpoint there
    (``seed-<seed>.pt``) when there is one, and :meth:`save` writes them.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        recipe: TrainConfig,
        dataset: Dataset,
        seeds: Sequence[int],
        epochs: int,
        *,
        device: str | torch.device = "cpu",
        checkpoint_dir: str | None = None,
    ) -> None:
        if not 1 <= epochs <= recipe.epochs:
            raise ValueError(f"epochs must be 1 .. the recipe's {recipe.epochs}, got {epochs}")
        self.epochs = epochs
        self.seeds = tuple(seeds)
        self.checkpoint_dir = checkpoint_dir
        self.trainers = [Trainer(model_config, recipe, dataset, seed=seed, device=device) for seed in self.seeds]
        # what the last save reported (None: nothing resumed), for a sample whose checkpoints are its end
        self.saved: dict[str, float] | None = None
        saved = [self._resume(seed, trainer) for seed, trainer in zip(self.seeds, self.trainers, strict=True)]
        if len({t.epoch for t in self.trainers}) > 1:  # seeds checkpointed at different epochs: start over
            self.trainers = [Trainer(model_config, recipe, dataset, seed=seed, device=device) for seed in self.seeds]
        elif saved and saved[0] is not None:
            self.saved = saved[0]

    def _resume(self, seed: int, trainer: Trainer) -> dict[str, float] | None:
        uri = self.checkpoint(seed)
        if uri is None or not os.path.exists(uri):
            return None
        return dict(trainer.resume(uri).get("metrics") or {})

    @property
    def epoch(self) -> int:
        """Epochs every seed has trained."""
        return self.trainers[0].epoch

    @property
    def done(self) -> bool:
        return self.epoch >= self.epochs

    def checkpoint(self, seed: int) -> str | None:
        return None if self.checkpoint_dir is None else os.path.join(self.checkpoint_dir, f"seed-{seed}.pt")

    def epoch_step(self) -> dict[str, float]:
        """Train every seed one more epoch; the means over the seeds of ``val_loss`` and ``val_acc``
        (the held-out split, evaluated without augmentation) and of ``train_loss`` and ``train_acc``
        (averages over the epoch's batches), with ``epoch``.

        Raises:
            NonFiniteLossError: a seed's loss became NaN or infinite (the sample diverged).
        """
        if self.done:
            raise RuntimeError(f"all {self.epochs} epochs of this sample are done")
        sums = {"val_loss": 0.0, "val_acc": 0.0, "train_loss": 0.0, "train_acc": 0.0}
        for trainer in self.trainers:
            running = trainer.train_epoch()
            held = trainer.evaluate(("test",))
            sums["val_loss"] += held["test_loss"]
            sums["val_acc"] += held["test_acc"]
            sums["train_loss"] += running["train_loss"]
            sums["train_acc"] += running["train_acc"]
        return {"epoch": float(self.epoch), **{k: v / len(self.trainers) for k, v in sums.items()}}

    def save(self, metrics: dict[str, float]) -> None:
        """Checkpoint every seed to ``checkpoint_dir`` (weights and training state: exact resumption), with
        ``metrics`` (what :attr:`saved` gives back on resuming)."""
        for seed, trainer in zip(self.seeds, self.trainers, strict=True):
            uri = self.checkpoint(seed)
            if uri is not None:
                trainer.save(uri, metrics, status="running")


__all__ = ["NonFiniteLossError", "TuneRun", "holdout"]
