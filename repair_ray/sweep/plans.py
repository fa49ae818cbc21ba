"""The grid a sweep config expands to: model configs, their stable keys, their seeds and pairs
(which pairs: :mod:`.pair_designs`).

A :class:`ModelPlan` is one model config of the grid and the seeds it is trained with; its
:func:`model_key` is a readable, stable hash of everything that determines its networks (as
open_lth names a run by a hash of its hyperparameters), so "already on storage" means "done".
This module imports neither Ray nor the sweep's config (which builds these plans).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from ..datasets import dataset_in_shape
from ..models import ModelConfig
from ..training import TrainConfig
from .layout import checkpoint_uri
from .messages import ImportedNetwork


@dataclass(frozen=True)
class DatasetSpec:
    """The dataset of a sweep: a registry name and its options (e.g. synthetic's shape)."""

    name: str
    options: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options)}


@dataclass(frozen=True)
class Branch:
    """Where the children of a stability study branch: the trunk's seed and the trunk epoch.

    A round of IMP with rewinding (lottery tickets) is a branch at the rewind epoch with a mask:
    ``imp_round`` (0 = dense), the pruning ``rate`` per round and the ``prune_seed``, the child of
    each round whose trained weights are pruned for the next (the last two only for rounds >= 1,
    whose mask they determine).
    """

    trunk_seed: int
    epoch: int
    imp_round: int | None = None
    rate: float | None = None
    prune_seed: int | None = None

    def identity(self) -> dict[str, Any]:
        """What names this branch in a model key (fields that are not set are left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ModelPlan:
    """One model config of the grid and the seeds it is trained with.

    With a ``branch`` the seeds are children of one trunk at one epoch (they share the trunk's
    weights there and differ in data order); without, independent networks.
    """

    model_key: str
    model: ModelConfig
    seeds: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...]
    branch: Branch | None = None
    trunk_key: str | None = None  # the model key of the unbranched config, which names the trunk's files
    sparsity: float | None = None  # an IMP round's: the fraction of prunable weights its mask removes
    prune_from: str | None = None  # an IMP round >= 1: the model key of the previous round
    # networks trained elsewhere (``models[i].checkpoints``), one per seed (None: the sweep trains them)
    imported: tuple[ImportedNetwork, ...] | None = None
    # the recipe its networks train with: the sweep's ``train``, or ``models[i].train`` merged over it (None: imported)
    train: TrainConfig | None = None
    # ``models[i].train`` as written (canonical JSON; None: the grid has none), for the rows' train_override column
    train_override: str | None = None
    grid: int = 0  # which entry of ``models`` it comes from (models[grid])

    @property
    def is_imported(self) -> bool:
        """Whether its networks are files trained elsewhere, not trained by the sweep."""
        return self.imported is not None

    def fields(self) -> dict[str, Any]:
        """The model config as the fields ``ModelConfig(**fields)`` takes, for tasks and rows; an
        imported network's ``init`` is None (it was initialised elsewhere, so its rows say nothing)."""
        fields = asdict(self.model)
        return {**fields, "init": None} if self.is_imported else fields

    def recipe(self, sweep: TrainConfig) -> TrainConfig:
        """The training config of its networks (``sweep``, the sweep's ``train``, for a plan made without one)."""
        return self.train or sweep

    def network(self, seed: int) -> ImportedNetwork | None:
        """The imported network file numbered ``seed`` (None for a network the sweep trains)."""
        return next((n for n in self.imported or () if n.seed == seed), None)

    def checkpoint(self, root: str, seed: int) -> str:
        """Where network ``seed`` is: its file for an imported one, else its checkpoint in the sweep ``root``."""
        network = self.network(seed)
        return network.uri if network is not None else checkpoint_uri(root, self.model_key, seed)

    def lineage(self) -> dict[str, Any]:
        """The ``trunk_seed``, ``branch_epoch``, ``imp_round`` and ``sparsity`` columns of this plan's
        rows (null for independent seeds; the last two null outside IMP)."""
        b = self.branch
        return {
            "trunk_seed": None if b is None else b.trunk_seed,
            "branch_epoch": None if b is None else b.epoch,
            "imp_round": None if b is None else b.imp_round,
            "sparsity": self.sparsity,
        }


def model_key(model: ModelConfig, train: TrainConfig, dataset: dict[str, Any], branch: Branch | None = None) -> str:
    """A readable, stable key: the model's shape plus a hash of model, training and dataset config
    (and, for the children of a trunk, the trunk seed and branch epoch: ``...-t0-e2-<hash>``; for
    a round of IMP also the round: ``...-t0-e1-r3-<hash>``). The training config is named as it
    acts on the dataset's inputs (:meth:`TrainConfig.identity`: ``pad`` only where they are augmented)."""
    in_shape = dataset_in_shape(dataset["name"], dataset.get("options"))
    # every dataset kind knows its input shape from its options; were one not to, automatic
    # augmentation would count as off (an explicit one still names its padding)
    described = {"model": model.described(), "train": train.identity(in_shape or (0, 0, 0)), "dataset": dataset}
    if branch is not None:
        described["branch"] = branch.identity()
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:10]
    where = "" if branch is None else f"-t{branch.trunk_seed}-e{branch.epoch}"
    if branch is not None and branch.imp_round is not None:
        where += f"-r{branch.imp_round}"
    return f"{model.label}{where}-{digest}"


def imported_model_key(model: ModelConfig, dataset: dict[str, Any]) -> str:
    """The key of a model config whose networks are imported: its shape plus a hash of the model
    config and the dataset (``...-imported-<hash>``). The files are not in it: each network is
    named by its content (its seed), so adding files keeps the key and computes only new pairs.
    An imported network was initialised elsewhere: ``init`` is not part of it."""
    shape = {k: v for k, v in model.described().items() if k != "init"}
    described = {"model": shape, "dataset": dataset, "source": "imported"}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{model.label}-imported-{digest}"
