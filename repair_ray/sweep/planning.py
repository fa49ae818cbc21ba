"""Planning a sweep: what is done and what is left, read from storage, never from memory.

"Done" is defined here once, and ``run`` (both stages), ``status`` and ``validate`` all ask it:

- a trial (model config, seed) is done when its newest ``models`` row says ``ok`` and its
  checkpoint is still there, whole (the size its row recorded), and no pair task has failed to
  load it since (a ``pairs`` row whose ``unloadable_seed`` names it): :func:`plan_trials`;
- a pair is done when every (align, correction) of the current config has an ``ok`` ``pairs``
  row under its analysis key and readable ``curves`` and ``layers`` rows: :func:`read_pair_state`
  and :func:`method_gaps`.

This module imports no Ray.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..datasets import dataset_in_shape, split_sizes
from ..io import storage
from ..io.tables import read_arrow, read_table
from ..models import ModelConfig
from ..pair import ANALYSIS_VERSION, LATER_FIELDS, METHOD_FIELDS, PairSettings, sample_forwards
from .layout import checkpoints_dir, resolve_uri
from .messages import Network

# The grid and the stacking estimates were planned here once; their public names still are.
from .pair_designs import pairing
from .plans import Branch, ModelPlan, model_key
from .stacking import (
    DEFAULT_GPU_MEMORY_GIB,
    MIN_STACK,
    STACK_MEMORY_SHARE,
    has_convolutions,
    stack_size,
    training_bytes_per_seed,
)

if TYPE_CHECKING:
    from .config import SweepConfig

__all__ = [
    "DEFAULT_GPU_MEMORY_GIB",
    "MIN_STACK",
    "STACK_MEMORY_SHARE",
    "Branch",
    "Method",
    "ModelPlan",
    "PairId",
    "PairState",
    "TrialPlan",
    "analysis_key",
    "analysis_keys",
    "forward_flops",
    "has_convolutions",
    "method_gaps",
    "model_key",
    "model_outcomes",
    "pair_gaps",
    "pairing",
    "plan_trials",
    "read_pair_state",
    "sample_forward_passes",
    "stack_size",
    "training_bytes_per_seed",
    "unloadable_checkpoints",
]


@dataclass
class TrialPlan:
    """What the train stage has to do: trials done (checkpoint verified) and trials to (re)train."""

    done: dict[tuple[str, int], str]  # (model_key, seed) -> checkpoint URI
    todo: list[tuple[ModelPlan, int]]
    damaged: list[str]  # checkpoints of finished trials that are gone or not whole: retrained
    # how each damaged network was trained, (model_key, seed) -> trained together: it is retrained so
    together: dict[tuple[str, int], bool] = field(default_factory=dict)


def plan_trials(config: SweepConfig) -> TrialPlan:
    """Finished trials whose checkpoint is still whole, and the trials to (re)train (from storage).

    A finished trial is retrained when its checkpoint is gone, has another size than its row
    recorded (truncated, rewritten), or failed to load in a pair task after the trial finished.
    The damaged file itself is left for the trial to replace (it starts over when it cannot load it).
    """
    rows = read_table(config.root, "models")
    keys = {p.model_key for p in config.models}
    ok = {
        (str(r.model_key), int(r.seed)): r
        for r in rows.itertuples(index=False)
        if r.status == "ok" and r.model_key in keys
    }
    unloadable = unloadable_checkpoints(config.root)
    done: dict[tuple[str, int], str] = {}
    todo: list[tuple[ModelPlan, int]] = []
    damaged: list[str] = []
    together: dict[tuple[str, int], bool] = {}
    for plan in config.models:
        if plan.is_imported:
            _plan_imports(plan, ok, unloadable, done, todo)
            continue
        seeds = [seed for seed in plan.seeds if (plan.model_key, seed) in ok]
        sizes = storage.file_sizes(checkpoints_dir(config.root, plan.model_key)) if seeds else {}
        for seed in plan.seeds:
            row = ok.get((plan.model_key, seed))
            if row is None:
                todo.append((plan, seed))
                continue
            uri = resolve_uri(config.root, str(row.checkpoint_uri))
            expected, found = row.checkpoint_bytes, sizes.get(storage.basename(uri))
            failed_after = unloadable.get(Network(plan.model_key, seed))
            if (
                found is None
                or (expected is not None and not pd.isna(expected) and found != int(expected))
                or (failed_after is not None and (pd.isna(row.finished_at) or failed_after > row.finished_at))
            ):
                damaged.append(uri)
                todo.append((plan, seed))
                together[(plan.model_key, seed)] = getattr(row, "trained_together", None) is True
            else:
                done[(plan.model_key, seed)] = uri
    return TrialPlan(done, todo, damaged, together)


def _plan_imports(
    plan: ModelPlan,
    ok: dict[tuple[str, int], Any],
    unloadable: dict[Network, Any],
    done: dict[tuple[str, int], str],
    todo: list[tuple[ModelPlan, int]],
) -> None:
    """An imported network is done when its newest row says ``ok`` for the bytes the config names
    (the file was hashed when the config was read: the hash is the network) and no pair task has
    failed to load it since; its checkpoint is the file where it lies now (a renamed file is the
    same network). Otherwise it is imported (checked and evaluated) again."""
    for network in plan.imported or ():
        row = ok.get((plan.model_key, network.seed))
        failed_after = unloadable.get(Network(plan.model_key, network.seed))
        if (
            row is not None
            and getattr(row, "checkpoint_sha256", None) == network.sha256
            and (failed_after is None or (not pd.isna(row.finished_at) and failed_after <= row.finished_at))
        ):
            done[(plan.model_key, network.seed)] = network.uri
        else:
            todo.append((plan, network.seed))


def unloadable_checkpoints(root: str) -> dict[Network, Any]:
    """Network -> the latest time a pair task could not load its checkpoint (the ``unloadable_seed``
    column of failed ``pairs`` rows; files written before the column existed have none)."""
    failed = read_table(root, "pairs", columns=["model_key", "unloadable_seed", "finished_at"])
    failed = failed[failed["unloadable_seed"].notna()]
    out: dict[Network, Any] = {}
    for key, seed, when in zip(failed["model_key"], failed["unloadable_seed"], failed["finished_at"], strict=True):
        network = Network(str(key), int(seed))
        out[network] = max(out.get(network, when), when) if not pd.isna(when) else out.get(network, when)
    return out


def analysis_key(settings: PairSettings, dataset: dict[str, Any], align: str | None = None) -> str:
    """A readable, stable key of every setting that determines a pair's rows, besides the networks.

    Alphas, evaluation and statistics sample counts and batch sizes, the subset and matching
    seeds, iterations, the dataset and where the held-out samples come from; not the lists of
    aligns and corrections, since each row is about one (align, correction): adding a method keeps
    every row already computed. The settings
    of a learned matching (``ste``, ``sinkhorn``) are in the key of that align's rows only, so
    changing them recomputes those rows and no others.
    """
    method = set(METHOD_FIELDS.get(align, ())) if align is not None else set()
    every_method = {f for fields in METHOD_FIELDS.values() for f in fields}
    fields = {
        k: v
        for k, v in asdict(settings).items()
        if k not in ("aligns", "corrections") and (k not in every_method or k in method)
    }
    for name, default in LATER_FIELDS.items():  # added later: out of the key at their default
        if fields.get(name) == default:
            fields.pop(name)
    payload: dict[str, Any] = {"settings": fields, "dataset": dataset}
    if ANALYSIS_VERSION > 1:
        payload["version"] = ANALYSIS_VERSION
    # Held-out samples from the test split (no train-curve sample is left over after the statistics
    # samples): rows computed before they were held out measured on REPAIR's own samples, so these
    # keys differ from theirs; every other key stays
    sizes = split_sizes(dataset["name"], dataset.get("options"))
    if settings.held_out_split(sizes[0] if sizes is not None else None) == "test":
        payload["held_out"] = "test"
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]
    alphas = settings.alphas  # a grid once PairSettings has checked it
    return f"a{alphas if isinstance(alphas, int) else len(alphas)}-s{settings.stat_samples}-{digest}"


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


def pair_gaps(config: SweepConfig, state: PairState) -> dict[PairId, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Every pair of ``config`` that is not done, and the (aligns, corrections) it lacks (see
    :func:`method_gaps`; a pair with no rows lacks everything). A pair not listed is done."""
    settings = config.pair_settings
    gaps: dict[PairId, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for plan in config.models:
        expected = settings.methods(batchnorm=config.batchnorm[plan.model_key])
        everything = method_gaps(set(), expected, settings)
        for a, b in plan.pairs:
            have = state.complete.get((plan.model_key, a, b))
            lacking = method_gaps(have, expected, settings) if have else everything
            if lacking is not None:
                gaps[(plan.model_key, a, b)] = lacking
    return gaps


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
    """Samples the pair stage pushes through a network over all pairs (see :func:`sample_forwards`;
    ``eval.test_samples`` of the test split, twice with ``eval.test_flip``).

    None when the dataset's split sizes are known only from its files.
    """
    sizes = split_sizes(config.dataset.name, config.dataset.options)
    if sizes is None:
        return None
    n_train, n_test = sizes
    s = config.pair_settings
    train_eval = n_train if s.train_samples is None else min(n_train, s.train_samples)
    n_test = (n_test if s.test_samples is None else min(n_test, s.test_samples)) * (2 if s.test_flip else 1)
    return sum(
        len(plan.pairs)
        * sample_forwards(s, train_eval, n_test, batchnorm=config.batchnorm[plan.model_key], n_train=n_train)
        for plan in config.models
    )
