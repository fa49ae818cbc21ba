"""Planning a sweep: stable model keys, pairings of seeds, and the pair jobs still to run.

What is done is read from the tables on storage, never from memory: the functions here turn the
``models`` and ``pairs`` tables into what is left to do. This module imports no Ray.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..datasets import dataset_in_shape, dataset_num_classes, split_sizes
from ..io.tables import read_arrow
from ..models import ModelConfig
from ..pair import ANALYSIS_VERSION, LATER_FIELDS, METHOD_FIELDS, PairSettings, sample_forwards
from ..training import TrainConfig

if TYPE_CHECKING:
    from .config import SweepConfig
    from .schema import FirstPairs


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
    a round of IMP also the round: ``...-t0-e1-r3-<hash>``)."""
    described = {"model": model.described(), "train": train.identity(), "dataset": dataset}
    if branch is not None:
        described["branch"] = branch.identity()
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:10]
    where = "" if branch is None else f"-t{branch.trunk_seed}-e{branch.epoch}"
    if branch is not None and branch.imp_round is not None:
        where += f"-r{branch.imp_round}"
    return f"{model.label}{where}-{digest}"


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


def analysis_key(settings: PairSettings, dataset: dict[str, Any], align: str | None = None) -> str:
    """A readable, stable key of every setting that determines a pair's rows, besides the networks.

    Alphas, evaluation and statistics sample counts and batch sizes, the subset and matching
    seeds, iterations and the dataset; not the lists of aligns and corrections, since each row is
    about one (align, correction): adding a method keeps every row already computed. The settings
    of a learned matching (``ste``, ``sinkhorn``) are in the key of that align's rows only, so
    changing them recomputes those rows and no others.
    """
    method = set(METHOD_FIELDS.get(align, ()))
    every_method = {f for fields in METHOD_FIELDS.values() for f in fields}
    fields = {
        k: v
        for k, v in asdict(settings).items()
        if k not in ("aligns", "corrections") and (k not in every_method or k in method)
    }
    for name, default in LATER_FIELDS.items():  # added later: out of the key at their default
        if fields.get(name) == default:
            fields.pop(name)
    payload = {"settings": fields, "dataset": dataset}
    if ANALYSIS_VERSION > 1:
        payload["version"] = ANALYSIS_VERSION
    payload = json.dumps(payload, sort_keys=True, default=str)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:10]
    return f"a{len(settings.alphas)}-s{settings.stat_samples}-{digest}"


def analysis_keys(settings: PairSettings, dataset: dict[str, Any]) -> dict[str, str]:
    """The analysis key of each align's rows (see :func:`analysis_key`)."""
    return {align: analysis_key(settings, dataset, align) for align in settings.aligns}


def model_outcomes(models: pd.DataFrame) -> dict[tuple[str, int], str]:
    """(model_key, seed) -> the status of that trial's newest row (``ok`` or ``failed``)."""
    return {
        (str(k), int(s)): str(st)
        for k, s, st in zip(models["model_key"], models["seed"], models["status"], strict=True)
    }


Method = tuple[str, str]  # (align, correction)
PairId = tuple[str, int, int]  # (model_key, seed_a, seed_b)
_PAIR_METHOD = ["model_key", "seed_a", "seed_b", "align", "correction"]


@dataclass
class PairState:
    """What the tables hold for one analysis key: per pair, its complete methods, and its failures.

    A (pair, method) is complete when its ``pairs`` row says ``ok`` and its ``curves`` and
    ``layers`` rows are readable too: a damaged file of any of the three makes it missing again.
    """

    complete: dict[PairId, set[Method]]
    failed: set[PairId]


def read_pair_state(root: str, keys: Mapping[str, str]) -> PairState:
    """The :class:`PairState` of the analysis keys ``{align: key}``, from the key columns of the tables only.

    A row counts when its analysis key is the one of its align.
    """

    def methods(table: str, *extra: str) -> pa.Table:
        data = read_arrow(root, table, columns=[*_PAIR_METHOD, "analysis_key", *extra], newest=table == "pairs").data
        mask = pa.array([False] * len(data), pa.bool_())
        for align, key in keys.items():
            mine = pc.and_(pc.equal(data["align"], align), pc.equal(data["analysis_key"], key))
            mask = pc.or_(mask, pc.fill_null(mine, False))
        data = data.filter(mask)
        return data if extra else data.group_by(_PAIR_METHOD).aggregate([])

    pairs = methods("pairs", "status")
    ok = pc.equal(pairs["status"], "ok")
    with_curves, with_layers = _methods(methods("curves")), _methods(methods("layers"))
    complete: dict[PairId, set[Method]] = {}
    for item in _methods(pairs.filter(ok)):
        if item in with_curves and item in with_layers:
            complete.setdefault(item[:3], set()).add(item[3:])
    failed = {item[:3] for item in _methods(pairs.filter(pc.invert(ok)))}
    return PairState(complete, failed)


def _methods(data: pa.Table) -> set[tuple[str, int, int, str, str]]:
    return set(zip(*(data[c].to_pylist() for c in _PAIR_METHOD), strict=True))


def method_gaps(
    have: set[Method], expected: list[Method], settings: PairSettings
) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The (aligns, corrections) a pair whose complete methods are ``have`` still needs; None when none.

    ``expected`` is every method its model config needs. The product of the result covers every gap
    (it may recompute a method that is there: the newest row wins).
    """
    gaps = [m for m in expected if m not in have]
    if not gaps:
        return None
    aligns = tuple(a for a in settings.aligns if any(g[0] == a for g in gaps))
    corrections = tuple(c for c in settings.corrections if any(g[1] == c for g in gaps))
    return aligns, corrections


def forward_flops(model: ModelConfig, dataset: str, options: dict[str, Any]) -> float:
    """FLOPs of one sample's forward pass, counted on the meta device (no memory, no compute)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    in_shape = dataset_in_shape(dataset, options) or (3, 32, 32)
    net = model.skeleton(10, in_shape).eval()
    device = next(iter(net.parameters()), torch.empty(0)).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, *in_shape, device=device))
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
        len(plan.pairs)
        * sample_forwards(s, train_eval, n_test, batchnorm=config.batchnorm[plan.model_key], n_train=n_train)
        for plan in config.models
    )


# What ``train.seeds_per_trial: auto`` assumes of a GPU it cannot see (the driver may have none):
# the memory of the smallest common datacenter GPU (T4, V100-16GB), unless resources.train.gpu_memory
# says otherwise, of which the stacked seeds may take half (the dataset, workspaces and the
# allocator's slack share the rest).
DEFAULT_GPU_MEMORY_GIB = 16.0
STACK_MEMORY_SHARE = 0.5
# Fewer seeds to a trial than this train alone: on an H200 one seed in the stacked loop runs at 0.62x
# of a lone run, 16 at 6-8.5x per seed, and 6 seeds in 3 trials of 2 (27 s) lost to 6 lone trials (20 s)
MIN_STACK = 4


def training_bytes_per_seed(model: ModelConfig, train: TrainConfig, in_shape: tuple[int, ...], classes: int) -> int:
    """GPU memory one more seed adds to a stack, estimated on the meta device (no memory, no compute).

    Its weights, gradients and optimizer state (SGD with momentum: one copy, Adam: two) in float32,
    its batch of inputs, and every module output of one batch, as autograd keeps them for the
    backward pass (an upper bound: in-place activations keep less).
    """
    import torch

    net = model.skeleton(classes, in_shape)
    params = sum(p.numel() for p in net.parameters())
    states = 2 if train.optimizer == "adam" else (1 if train.momentum else 0)
    outputs: list[int] = []
    leaves = [m for m in net.modules() if not list(m.children())]
    handles = [m.register_forward_hook(lambda _m, _i, out: outputs.append(_numel(out))) for m in leaves]
    try:
        device = next(iter(net.parameters()), torch.empty(0)).device
        net.train()(torch.zeros(train.batch_size, *in_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
    inputs = train.batch_size * math.prod(in_shape)
    return 4 * (params * (2 + states) + inputs + sum(outputs))


def _numel(out: object) -> int:
    import torch

    return out.numel() if isinstance(out, torch.Tensor) else 0


def has_convolutions(model: ModelConfig, in_shape: tuple[int, ...], classes: int) -> bool:
    """Whether the network convolves (its stacked training is vmap's grouped convolutions)."""
    from torch import nn

    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.skeleton(classes, in_shape).modules())


def stack_size(
    plan: ModelPlan,
    train: TrainConfig,
    dataset: dict[str, Any],
    *,
    seeds_per_trial: int | None,
    gpu: float,
    gpu_memory_gib: float | None = None,
    per_slot: int | None = None,
) -> int:
    """How many seeds of ``plan`` one trial trains together.

    An explicit ``seeds_per_trial`` is kept. ``None`` (``auto``): 1 where trials get no GPU (a CPU
    core is already busy with one network: today's lone trials) and for networks that convolve (a
    lone ResNet20 x4 already keeps an H200 busy, 45,000 images/s in bf16, and vmap's stacked
    convolutions are slower there); otherwise as many seeds as fit in the trial's share of GPU
    memory (``gpu`` x ``gpu_memory_gib``, default :data:`DEFAULT_GPU_MEMORY_GIB`, of which
    :data:`STACK_MEMORY_SHARE`), and no more than ``per_slot`` (the seeds to train over the trials
    the cluster runs at once: a stack must not leave the other slots idle), spread evenly over as
    few trials as that allows (100 seeds that fit 40 to a trial: 34 + 33 + 33). Measured on an
    H200, 64 narrow MLPs train 13-21x faster per seed together than one at a time, but 6 seeds in
    one trial on a quarter of the GPU took twice as long as 4 parallel trials (BENCHMARKS.md); stacks
    smaller than :data:`MIN_STACK` are not worth it, so those seeds train alone.
    """
    if seeds_per_trial is not None:
        return seeds_per_trial
    seeds = len(plan.seeds)
    if gpu <= 0 or seeds < 2:
        return 1
    in_shape = dataset_in_shape(dataset["name"], dataset.get("options")) or (3, 224, 224)
    classes = dataset_num_classes(dataset["name"], dataset.get("options")) or 1000
    if has_convolutions(plan.model, in_shape, classes):
        return 1
    budget = STACK_MEMORY_SHARE * min(gpu, 1.0) * (gpu_memory_gib or DEFAULT_GPU_MEMORY_GIB) * 2**30
    fit = max(1, int(budget // training_bytes_per_seed(plan.model, train, in_shape, classes)))
    fit = min(fit, per_slot or fit)
    if fit < MIN_STACK:
        return 1
    trials = math.ceil(seeds / fit)
    return math.ceil(seeds / trials)
