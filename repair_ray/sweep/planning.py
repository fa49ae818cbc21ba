"""Planning a sweep: stable model keys, pairings of seeds, and the pair jobs still to run.

What is done is read from the tables on storage, never from memory: the functions here turn the
``models`` and ``pairs`` tables into what is left to do. This module imports no Ray.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..datasets import dataset_in_shape, split_sizes
from ..io.tables import read_table
from ..models import ModelConfig
from ..pair import sample_forwards
from ..training import TrainConfig

if TYPE_CHECKING:
    from .config import SweepConfig
    from .schema import FirstPairs


@dataclass(frozen=True)
class ModelPlan:
    """One model config of the grid and the seeds it is trained with."""

    model_key: str
    model: ModelConfig
    seeds: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...]


def model_key(model: ModelConfig, train: TrainConfig, dataset: dict[str, Any]) -> str:
    """A readable, stable key: the model's shape plus a hash of model, training and dataset config."""
    payload = json.dumps(
        {"model": asdict(model), "train": asdict(train), "dataset": dataset}, sort_keys=True, default=str
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:10]
    return f"{model.arch}-w{model.width:g}-d{model.depth}-{model.norm}-{digest}"


def pairing(seeds: list[int], rule: str | FirstPairs) -> list[tuple[int, int]]:
    """The pairs of seeds a rule asks for: ``all``, ``disjoint`` or the first k of all."""
    every = list(itertools.combinations(seeds, 2))
    if rule == "all":
        return every
    if rule == "disjoint":  # (s0, s1), (s2, s3), ...: pairs that share no network
        return [(seeds[i], seeds[i + 1]) for i in range(0, len(seeds) - 1, 2)]
    return every[: rule.first]


def pair_stem(model_key: str, seed_a: int, seed_b: int) -> str:
    """The name of a pair's files and its handle in messages."""
    return f"{model_key}__{seed_a}-{seed_b}"


def pair_outcomes(pairs: pd.DataFrame) -> dict[tuple[str, int, int], bool]:
    """(model_key, seed_a, seed_b) -> whether every row of that pair is ``ok`` (the "done" rule)."""
    if not len(pairs):
        return {}
    status = pairs.groupby(["model_key", "seed_a", "seed_b"])["status"].agg(lambda s: bool((s == "ok").all()))
    return {(str(k), int(a), int(b)): ok for (k, a, b), ok in status.items()}


def model_outcomes(models: pd.DataFrame) -> dict[tuple[str, int], str]:
    """(model_key, seed) -> the status of that trial's row (``ok`` or ``failed``)."""
    return {
        (str(k), int(s)): str(st)
        for k, s, st in zip(models["model_key"], models["seed"], models["status"], strict=True)
    }


@dataclass
class PairJobs:
    jobs: list[dict[str, Any]]
    done: int  # already on disk with status ok
    left_out: list[str]  # pairs that cannot run because a model failed or is missing


def plan_pair_jobs(config: SweepConfig, threads: float) -> PairJobs:
    """The pair tasks still to run, from the ``models`` and ``pairs`` tables on storage."""
    models = read_table(config.root, "models")
    trained = {(str(r.model_key), int(r.seed)): r for r in models.itertuples(index=False) if r.status == "ok"}
    finished = {key for key, ok in pair_outcomes(read_table(config.root, "pairs")).items() if ok}
    settings = asdict(config.pair_settings)
    jobs, left_out, done = [], [], 0
    for plan in config.models:
        for seed_a, seed_b in plan.pairs:
            if (plan.model_key, seed_a, seed_b) in finished:
                done += 1
                continue
            a, b = trained.get((plan.model_key, seed_a)), trained.get((plan.model_key, seed_b))
            if a is None or b is None:
                left_out.append(pair_stem(plan.model_key, seed_a, seed_b))
                continue
            jobs.append(
                {
                    "sweep": config.name,
                    "model_key": plan.model_key,
                    "model": asdict(plan.model),
                    "dataset": config.dataset.as_dict(),
                    "seed_a": seed_a,
                    "seed_b": seed_b,
                    "uri_a": a.checkpoint_uri,
                    "uri_b": b.checkpoint_uri,
                    "settings": settings,
                    "threads": threads,
                }
            )
    # Longest first: the most expensive pairs start early, so the end of the stage is not one
    # worker finishing a big pair while the others idle (stable: config order among equals).
    cost = {
        plan.model_key: forward_flops(plan.model, config.dataset.name, config.dataset.options) for plan in config.models
    }
    jobs.sort(key=lambda job: -cost[job["model_key"]])
    return PairJobs(jobs, done, left_out)


def forward_flops(model: ModelConfig, dataset: str, options: dict[str, Any]) -> float:
    """FLOPs of one sample's forward pass, counted on the meta device (no memory, no compute)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    in_shape = dataset_in_shape(dataset, options) or (3, 32, 32)
    with torch.device("meta"):
        net = model.build(10, in_shape)
        with FlopCounterMode(display=False) as counter:
            net(torch.empty(1, *in_shape))
    return float(counter.get_total_flops())


def sample_forward_passes(config: SweepConfig) -> int | None:
    """Samples the pair stage pushes through a network over all pairs (see :func:`sample_forwards`).

    None when the dataset's split sizes are known only from its files.
    """
    sizes = split_sizes(config.dataset.name, config.dataset.options)
    if sizes is None:
        return None
    n_train, n_test = sizes
    s = config.pair_settings
    train_eval = n_train if s.train_samples is None else min(n_train, s.train_samples)
    return sum(
        len(plan.pairs) * sample_forwards(s, train_eval, n_test, batchnorm=plan.model.has_batchnorm)
        for plan in config.models
    )
