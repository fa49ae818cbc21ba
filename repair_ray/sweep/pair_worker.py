"""What a pair task runs inside its Ray worker: one :class:`~repair_ray.sweep.messages.PairJob`.

It loads both checkpoints, calls the core's :func:`repair_ray.pair.analyse_pair` and returns the
pair's rows of the ``pairs``, ``curves`` and ``layers`` tables; the driver writes them. Any error of
the pair becomes ``failed`` rows with the reason, and a checkpoint that cannot be loaded is named
in the ``unloadable_seed`` column (the train stage retrains that network).
"""

from __future__ import annotations

import math
from typing import Any

from ..io.checkpoint import CheckpointError, load_checkpoint
from ..io.networks import NetworkFileError, load_into, load_state_dict
from ..models import ModelConfig
from ..pair import PairSettings, analyse_pair
from ..pruning import weight_sparsity
from ..training import Augmentation, TrainConfig
from .messages import PairContext, PairJob
from .rows import model_columns
from .worker import analysis_data, cached_dataset, data_path, error_text, error_trace, node_id, setup_worker, utc_now

METRIC_COLUMNS = (
    "barrier_train_loss",
    "barrier_train_error",
    "barrier_test_loss",
    "barrier_test_error",
    "midpoint_test_loss",
    "midpoint_test_acc",
)
Rows = dict[str, list[dict[str, Any]]]  # table name -> the rows of one pair


def _identity(context: PairContext, job: PairJob, align: str) -> dict[str, Any]:
    return {
        "sweep": context.sweep,
        "model_key": job.model_key,
        "analysis_key": context.analysis_keys[align],
        "seed_a": job.seed_a,
        "seed_b": job.seed_b,
    }


def _job_settings(context: PairContext, job: PairJob) -> PairSettings:
    return PairSettings(**{**context.settings, "aligns": job.aligns, "corrections": job.corrections})


def failed_rows(
    context: PairContext,
    job: PairJob,
    error: str,
    device: str = "",
    trace: str | None = None,
    unloadable_seed: int | None = None,
) -> Rows:
    """One ``failed`` pairs row per requested (align, correction), with the reason (and its traceback);
    ``unloadable_seed``: the network whose checkpoint could not be loaded (the train stage retrains it)."""
    model = context.models[job.model_key]
    now = utc_now()
    rows = [
        {
            **_identity(context, job, align),
            **model_columns(
                model,
                context.dataset,
                context.lineage.get(job.model_key),
                train_override=context.train_override.get(job.model_key),
            ),
            **_sources(job),
            "pair_design": context.pair_design,
            "align": align,
            "correction": correction,
            **{k: math.nan for k in METRIC_COLUMNS},
            "device": device,
            "status": "failed",
            "error": error,
            "error_trace": trace,
            "unloadable_seed": unloadable_seed,
            "finished_at": now,
        }
        for align, correction in _job_settings(context, job).methods(batchnorm=context.batchnorm[job.model_key])
    ]
    return {"pairs": rows, "curves": [], "layers": []}


def _sources(job: PairJob) -> dict[str, Any]:
    """The file and content hash of each imported network of the pair (null for networks the sweep trained)."""
    return {
        "source_a": job.checkpoint_a if job.sha256_a is not None else None,
        "source_b": job.checkpoint_b if job.sha256_b is not None else None,
        "sha256_a": job.sha256_a,
        "sha256_b": job.sha256_b,
    }


def pair_task(context: PairContext, job: PairJob) -> Rows:
    """Run in a Ray worker: load both checkpoints, analyse the pair, return the table rows.

    Any error of this pair (missing or corrupt checkpoint, a failure inside the analysis) becomes
    ``failed`` rows with the reason; only the death of the worker itself escapes (Ray retries it).
    """
    started_at = utc_now()
    device = setup_worker(context.threads)
    model_config = ModelConfig(**context.models[job.model_key], allow_import=context.allow_import)
    settings = _job_settings(context, job)
    workers = max(1, int(context.threads))
    try:
        dataset = analysis_data(
            context.dataset, device, workers, settings.train_samples, settings.test_samples, settings.subset_seed
        )
        path = data_path(cached_dataset(context.dataset, device, workers))
        models = []
        for seed, uri, sha256 in job.checkpoints:
            model = model_config.build(dataset.num_classes, dataset.in_shape)
            try:
                if sha256 is None:  # trained by the sweep: its own checkpoint format
                    model.load_state_dict(load_checkpoint(uri).state_dict)
                else:  # trained elsewhere: a state_dict or safetensors file, whose bytes must be the ones named
                    load_into(model, load_state_dict(uri, sha256=sha256), uri)
            except (CheckpointError, NetworkFileError) as error:  # a fact for the train stage: retrained/re-imported
                return failed_rows(context, job, error_text(error), str(device), error_trace(error), seed)
            models.append(model.to(device).eval())
        spec = model_config.permutation_spec(dataset.num_classes, dataset.in_shape)
        augmentation = None
        if settings.stat_augment:  # the statistics samples augmented as the sweep's training augmented its inputs
            train = TrainConfig(**context.train[job.model_key])
            augmentation = Augmentation.of(train, dataset.in_shape, dataset.black, f"dataset {dataset.name}")
        result = analyse_pair(
            models[0],
            models[1],
            dataset,
            settings,
            spec=spec,
            alphas_per_pass=context.alphas_per_pass,
            memory_share=context.memory_share,
            augmentation=augmentation,
        )
    except Exception as error:  # noqa: BLE001 - every failure of a pair is data for its row
        return failed_rows(context, job, error_text(error), str(device), error_trace(error))
    lineage = dict(context.lineage.get(job.model_key) or {})
    if lineage.get("imp_round") is not None and lineage.get("sparsity") is None:
        # an IMP round of a dataset whose shape only its files tell: the sparsity of network A's weights
        lineage["sparsity"] = weight_sparsity(models[0])
    override = context.train_override.get(job.model_key)
    desc = model_columns(context.models[job.model_key], context.dataset, lineage, train_override=override)
    desc |= _sources(job) | {"data_path": path, "pair_design": context.pair_design}
    when = {"started_at": started_at, "finished_at": utc_now()}
    return {
        "pairs": [
            {**_identity(context, job, row["align"]), **desc, **row, "device": str(device), "node_id": node_id()}
            | {"status": "ok", **when}
            for row in result.pairs
        ],
        "curves": [{**_identity(context, job, row["align"]), **row} for row in result.curves],
        "layers": [{**_identity(context, job, row["align"]), **row} for row in result.layers],
    }
