"""The rules a sweep config must follow beyond its shape (problems collected, not raised).

The sweep's own rules (resources, retries, pairing, tasks in flight, flushing, tracking) and what
each network must offer the asked-for methods (its permutation spec, activation and REPAIR
points), checked before Ray starts. This module imports no Ray.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ..datasets import dataset_in_shape, dataset_num_classes
from ..models import ModelConfig
from ..models.fold import fold_problem
from ..pair import PairSettings, correction_applies
from ..permutation import SpecError
from ..training import TrainConfig
from .pair_designs import check_design
from .plans import DatasetSpec, ModelPlan
from .schema import SweepSection


def uri_credentials(uri: str) -> str | None:
    """Why a tracking URI is refused: a user, password or token in it (it is saved in sweep.yaml and in
    what Tune writes, and printed); None when it holds none."""
    parts = urlsplit(uri)
    keys = [item.split("=", 1)[0] for item in parts.query.split("&") if item]
    if parts.username or parts.password or any(re.search(r"secret|token|password|key|auth", k, re.I) for k in keys):
        return (
            "the URI holds credentials, which would be saved and logged; give them as MLFLOW_TRACKING_USERNAME / "
            "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN in the environment instead"
        )
    return None


def mlflow_installed() -> bool:
    """Whether ``import mlflow`` can work here (without importing it: that takes seconds)."""
    import importlib.util

    try:
        return importlib.util.find_spec("mlflow") is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules: blocked
        return False


def check_sweep_settings(s: SweepSection, problems: list[str]) -> None:
    """The rules that belong to a sweep alone: resources, retries, pairing, tasks in flight."""
    for stage in ("train", "pair"):
        spec = getattr(s.resources, stage)
        if not (math.isfinite(spec.cpu) and spec.cpu > 0):
            problems.append(f"resources.{stage}.cpu: must be a positive number, got {spec.cpu}")
        if not math.isfinite(spec.gpu) or spec.gpu < 0 or (spec.gpu > 1 and spec.gpu != int(spec.gpu)):
            problems.append(f"resources.{stage}.gpu: must be a fraction in [0, 1] or a whole number, got {spec.gpu}")
    if s.eval.alphas_per_pass != "auto" and s.eval.alphas_per_pass < 1:
        problems.append(f"eval.alphas_per_pass: must be a positive integer or auto, got {s.eval.alphas_per_pass}")
    memory = s.resources.train.gpu_memory
    if memory is not None and not (math.isfinite(memory) and memory > 0):
        problems.append(f"resources.train.gpu_memory: must be a positive number of GiB, got {memory}")
    for key in ("max_pairs_in_flight", "max_trials_in_flight"):
        if getattr(s, key) is not None and getattr(s, key) < 1:
            problems.append(f"{key}: must be a positive integer, got {getattr(s, key)}")
    for key in ("pair_retries", "train_retries"):
        if getattr(s, key) < 0:
            problems.append(f"{key}: must be 0 or more, got {getattr(s, key)}")
    if s.tracking.mlflow is not None and (reason := uri_credentials(s.tracking.mlflow)) is not None:
        problems.append(f"tracking.mlflow: {reason}")
    if s.tracking.mlflow is not None and not mlflow_installed():
        problems.append(
            "tracking.mlflow: the mlflow package is not installed here; "
            "pip install mlflow (or pip install 'repair-ray[tracking]'), or remove tracking.mlflow"
        )
    if s.flush.pairs < 1:
        problems.append(f"flush.pairs: must be a positive integer, got {s.flush.pairs}")
    if not (math.isfinite(s.flush.seconds) and s.flush.seconds >= 0):
        problems.append(f"flush.seconds: must be 0 or more, got {s.flush.seconds}")
    check_design(s.pairs, problems)


def check_workers(s: SweepSection, problems: list[str]) -> None:
    """The rules of ``train.workers_per_trial`` that hold on any cluster: each network is trained by that
    many workers, one GPU (or ``resources.train.cpu`` CPUs) each, on slices of one global batch."""
    n = s.train.workers_per_trial
    if n <= 1:
        return
    key = "train.workers_per_trial"
    batch = s.train.model_dump().get("batch_size")
    if isinstance(batch, int) and batch % n:
        problems.append(
            f"train.batch_size: must be divisible by {key} ({n}): each worker trains on its slice of the "
            f"global batch, got {batch}"
        )
    if s.train.seeds_per_trial != "auto" and s.train.seeds_per_trial > 1:
        problems.append(
            f"train.seeds_per_trial: a network trained across workers ({key} {n}) is not stacked with others; "
            f"leave seeds_per_trial at auto or 1, got {s.train.seeds_per_trial}"
        )
    gpu = s.resources.train.gpu
    if gpu not in (0, 1):
        problems.append(f"resources.train.gpu: must be 0 or 1 with {key} {n} (one GPU per worker), got {gpu:g}")
    for design in ("branch", "imp"):
        if getattr(s, design) is not None:
            problems.append(
                f"{key}: {n} workers per network is not available for {design} studies yet (their trunks train "
                "on one worker); set it to 1"
            )


def check_streamed(s: SweepSection, loading: str | None, problems: list[str]) -> None:
    """What a dataset streamed from disk (``imagefolder`` with ``load: stream``, or ``auto`` over its
    memory budget) cannot do: hold a whole split in memory for the pair stage, stack seeds (they
    index tensors), or translate (augmentation is RandomResizedCrop and flips)."""
    if loading != "stream":
        return
    why = "the dataset is streamed from disk"
    if s.eval.train_samples is None:
        problems.append(
            f"eval.train_samples: must be a number of samples ({why}: the pair stage decodes and holds the samples "
            "it reads; the whole train split would not fit), got null"
        )
    for method in ("ste", "sinkhorn"):
        if getattr(s, method).samples is not None and method in s.align:
            problems.append(
                f"{method}.samples: must be left unset ({why}: learned matchings train on the statistics samples), "
                f"got {getattr(s, method).samples!r}"
            )
    if s.train.seeds_per_trial != "auto" and s.train.seeds_per_trial > 1:
        problems.append(
            f"train.seeds_per_trial: must be 1 or auto ({why}: seeds train together only on data held in memory), "
            f"got {s.train.seeds_per_trial}"
        )
    if s.train.model_dump().get("augment") == "translate":
        problems.append(
            f"train.augment: translate needs data held in memory ({why}: training crops with RandomResizedCrop and "
            "flips, or with augment: false uses the evaluation crop)"
        )
    if s.eval.stat_samples == "all":
        problems.append(
            f"eval.stat_samples: all needs data held in memory ({why}: it would decode the whole train split); "
            "give a number of samples"
        )
    if s.eval.stat_augment:
        problems.append(
            f"eval.stat_augment: true needs data held in memory ({why}: the pair stage reads its samples with the "
            "evaluation crop)"
        )


def check_stat_augment(
    s: SweepSection,
    trains: Mapping[int, TrainConfig],
    dataset: DatasetSpec,
    imports: Mapping[int, Any],
    problems: list[str],
) -> None:
    """``eval.stat_augment`` augments the statistics samples as the sweep's training augments its
    inputs: there must be such an augmentation in the recipe of every grid the sweep trains
    (``trains``: grid index -> its recipe), and networks the sweep trained with it."""
    if not s.eval.stat_augment:
        return
    if imports:
        problems.append(
            f"eval.stat_augment: augments as the sweep trains, but models[{min(imports)}] imports networks "
            "trained elsewhere (their augmentation is not the sweep's)"
        )
    in_shape = dataset_in_shape(dataset.name, dataset.options)
    for i, train in trains.items():
        if in_shape is not None and train.augmentation(in_shape) is None:
            where = f"models[{i}].train" if s.models[i].train is not None else "train"
            problems.append(
                f"eval.stat_augment: true augments the statistics samples as training does, but the training config "
                f"of models[{i}] augments nothing on inputs of shape {tuple(in_shape)} "
                f"({where}.augment: {train.augment!r})"
            )
            return  # once is enough


def check_specs(
    configs: list[tuple[int, ModelConfig]], dataset: DatasetSpec, settings: PairSettings, problems: list[str]
) -> None:
    """Every network's permutation spec, derived before Ray starts (on the meta device where possible).

    A network whose symmetry cannot be derived fails here, naming the module and op; so does one
    without the activation or REPAIR points an asked-for method needs.
    """
    in_shape = dataset_in_shape(dataset.name, dataset.options)
    num_classes = dataset_num_classes(dataset.name, dataset.options)
    for i, mc in configs:
        if in_shape is None or num_classes is None:
            continue  # an image folder: its shape is known only from its files, so the workers check it
        if settings.fold_batchnorm:
            why = fold_problem(mc.skeleton(num_classes, in_shape))
            if why is not None:
                problems.append(f"models[{i}] ({mc.label}): eval.fold_batchnorm: {why}")
                continue
        try:
            spec = mc.permutation_spec(num_classes, in_shape)
        except (SpecError, TypeError, ValueError, RuntimeError) as error:
            problems.append(f"models[{i}] ({mc.label}): {error}")
            continue
        no_points = [g for g in spec.sizes if g not in spec.activations]
        if "activation" in settings.aligns and no_points:
            problems.append(
                f"models[{i}] ({mc.label}): align activation needs a module output carrying each permutation "
                f"group, and group {no_points[0]!r} has none (e.g. its nonlinearity is a function or a module used "
                "twice); leave activation out of align for this network"
            )
        if "repair" in settings.corrections and not spec.repair_points:
            problems.append(
                f"models[{i}] ({mc.label}): correction repair needs norm layers with an affine or layers with a "
                "bias to fold into, and this network has none; leave repair out of correction"
            )


def warn_skipped_corrections(
    plans: list[ModelPlan], batchnorm: Mapping[str, bool], settings: PairSettings, source: str
) -> None:
    skipped = sorted(
        {
            (correction, plan.model_key)
            for plan in plans
            if plan.model_key in batchnorm
            for correction in settings.corrections
            if not correction_applies(correction, batchnorm=batchnorm[plan.model_key] and not settings.fold_batchnorm)
        }
    )
    for correction in dict.fromkeys(c for c, _ in skipped):
        keys = [k for c, k in skipped if c == correction]
        folded = " (or with it folded: eval.fold_batchnorm)" if settings.fold_batchnorm else ""
        warnings.warn(
            f"{source}: correction {correction!r} applies only to BatchNorm nets; it is skipped for "
            f"{len(keys)} model config(s) without BatchNorm{folded} "
            f"({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})",
            stacklevel=3,
        )
