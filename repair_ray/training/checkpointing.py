"""What a checkpoint of a training run holds and how a run comes back from one.

:class:`Checkpointing` is the part of :class:`~repair_ray.training.Trainer` that saves a run (its
weights, :meth:`~Checkpointing.checkpoint_meta` and :meth:`~Checkpointing.training_state`: epoch,
step, optimizer, data order, history, IMP mask), resumes it bit for bit, and starts a branch from a
trunk's snapshot (:func:`~repair_ray.training.train_trunk`).

A run trained data-parallel is checkpointed by rank 0 alone (the same file as one process writes),
and its processes resume from the same file.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from typing import Any

import torch

from ..datasets import Dataset
from ..io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..models import ModelConfig
from ..pruning import Mask
from .config import TrainConfig
from .distributed import World, barrier, broadcast_decision


class Checkpointing:
    """Saving, resuming and branching of a :class:`~repair_ray.training.Trainer` (its mixin: the
    attributes below are the trainer's)."""

    # the trainer's, set in Trainer.__init__
    model_config: ModelConfig
    train_config: TrainConfig
    dataset: Dataset
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    seed: int
    init_seed: int
    data_seed: int
    branch_epoch: int | None
    imp_round: int | None
    steps_per_epoch: int
    epoch: int
    step: int
    seconds: float
    history: list[dict[str, float]]
    world: World
    data_parallel: bool
    mask: Mask | None
    _masked: list[tuple[torch.Tensor, torch.Tensor]]
    set_mask: Callable[..., None]  # Trainer.set_mask: prunes the run (a resumed IMP round's mask)

    def training_state(self) -> dict[str, Any]:
        """A snapshot of everything besides the weights that training depends on (with the IMP mask)."""
        state = {
            "epoch": self.epoch,
            "step": self.step,
            "seconds": self.seconds,
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "generator": self.generator.get_state(),
            "history": [dict(h) for h in self.history],
        }
        if self.mask is not None:
            state["mask"] = {name: keep.cpu() for name, keep in self.mask.items()}
        return state

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`training_state` snapshot (load the matching weights separately)."""
        missing = {"epoch", "step", "optimizer", "generator"} - set(state)
        if missing:
            raise ValueError(f"training state lacks {', '.join(sorted(missing))}")
        epoch, step = int(state["epoch"]), int(state["step"])
        if step != epoch * self.steps_per_epoch:
            raise ValueError(
                f"training state is at step {step} after {epoch} epochs, but this run takes "
                f"{self.steps_per_epoch} steps per epoch: the batch size or the dataset differ"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())
        self.epoch, self.step = epoch, step
        self.seconds = float(state.get("seconds", 0.0))
        self.history = [dict(h) for h in state.get("history") or []]  # none in checkpoints older than it
        if state.get("mask") is not None:
            self.set_mask(state["mask"], optimizer_state=False)  # resumed as it was

    def checkpoint_meta(self, metrics: dict[str, float], status: str) -> dict[str, Any]:
        """What a checkpoint of this run records besides the weights."""
        return {
            "model_config": self.model_config.described(),
            "train_config": self.train_config.identity(self.dataset.in_shape),
            "seed": self.seed,
            "init_seed": self.init_seed,
            "data_seed": self.data_seed,
            "branch_epoch": self.branch_epoch,
            "imp_round": self.imp_round,
            "dataset": self.dataset.name,
            "num_classes": self.dataset.num_classes,
            "in_shape": list(self.dataset.in_shape),
            "epoch": self.epoch,
            "metrics": metrics,
            "seconds": self.seconds,
            "status": status,
        }

    def save(self, uri: str | os.PathLike[str], metrics: dict[str, float], *, status: str) -> None:
        """Checkpoint the weights, :meth:`checkpoint_meta` and :meth:`training_state` to ``uri``.

        Data-parallel, rank 0 writes and every process waits until it has written. The weights are
        rank 0's (every process holds the same: ``DistributedDataParallel`` keeps the parameters equal,
        and the trainer copies rank 0's buffers, BatchNorm's running statistics, to the others after
        every epoch). How many processes trained the run is not recorded: it is how the run was
        computed, not which run it is, so a run may resume on another number of processes.
        """
        if self.world.is_main:
            save_checkpoint(
                uri, self.model, self.checkpoint_meta(metrics, status), training_state=self.training_state()
            )
        if self.data_parallel:
            barrier()

    def decided(self, decision: bool) -> bool:
        """Rank 0's ``decision`` on every process of a data-parallel run (``decision`` itself alone),
        for the branches all of them must take alike."""
        return broadcast_decision(decision) if self.data_parallel else decision

    def resume(self, uri: str | os.PathLike[str]) -> dict[str, Any]:
        """Load weights and training state from the checkpoint at ``uri``; returns its meta.

        Raises ValueError when the checkpoint belongs to a run with other configs or seeds.
        """
        expected = _jsonable(self.checkpoint_meta({}, "running"))
        keys = ("model_config", "train_config", "init_seed", "data_seed", "branch_epoch", "imp_round")
        meta = self._load(uri, {k: expected[k] for k in keys}, "belongs to another run", "this run's", "resume")
        if self.imp_round and self.mask is None:
            raise CheckpointError(f"checkpoint {uri} has no mask, but it is of IMP round {self.imp_round}")
        return meta

    def _load(self, uri: str | os.PathLike[str], wanted: dict[str, Any], misfit: str, ours: str, verb: str) -> dict:
        """Load the weights and training state of the checkpoint at ``uri`` whose meta has ``wanted``."""
        checkpoint = load_checkpoint(uri)
        for key, value in wanted.items():
            if checkpoint.meta.get(key) != value:
                raise ValueError(
                    f"checkpoint {uri} {misfit}: its {key} is {checkpoint.meta.get(key)!r}, {ours} is {value!r}"
                )
        if checkpoint.training_state is None:
            raise CheckpointError(f"checkpoint {uri} has no training state to {verb} from")
        self.model.load_state_dict(checkpoint.state_dict)
        self.load_training_state(checkpoint.training_state)
        return checkpoint.meta

    def start_from(self, uri: str | os.PathLike[str]) -> dict[str, Any]:
        """Start this run from a trunk's snapshot (see :func:`train_trunk`): its weights, optimizer
        state, epoch and step (so the learning-rate schedule goes on where the trunk was), but this
        run's own data order. Returns the snapshot's meta.

        Raises:
            ValueError: when the snapshot is of another network, training config, trunk seed or epoch.
            CheckpointError: when it cannot be read.
        """
        mine = _jsonable(self.checkpoint_meta({}, "running"))
        wanted = {
            "model_config": mine["model_config"],
            "train_config": mine["train_config"],
            "seed": self.init_seed,
            "epoch": self.branch_epoch,
        }
        generator = self.generator.get_state()
        meta = self._load(uri, wanted, "does not fit this branch", "the branch needs", "branch")
        self.generator.set_state(generator)  # the child's own data order
        self.seconds = 0.0  # the child's own compute; the trunk's is the trunk's
        self.history = []  # ... and its own curve
        self.mask, self._masked = None, []  # a trunk is dense; the child's own mask comes next
        return meta


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))
