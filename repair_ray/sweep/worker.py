"""What runs inside Ray workers, shared by both stages: device, threads, and a dataset cache."""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
import traceback
from typing import Any

import torch

from ..datasets import Dataset, in_memory, load_dataset

_DATASETS: dict[tuple[str, str], Dataset] = {}
_SUBSETS: dict[tuple[str, str, int | None, int | None, int], Dataset] = {}


def setup_worker(threads: float) -> torch.device:
    """Limit torch's threads to the CPUs Ray gave this task and pick its device.

    Parallel trials or tasks that each used every core would oversubscribe the machine.
    """
    n = max(1, int(threads))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    import ray

    gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
    if gpu_ids and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def cached_dataset(spec: dict[str, Any], device: torch.device, workers: int | None = None) -> Dataset:
    """The dataset of ``spec`` on ``device``, loaded once per worker process (workers are reused).

    A dataset streamed from disk decodes its images in ``workers`` DataLoader processes (the CPUs
    Ray gave the task; None: the machine's, at most 8)."""
    key = (json.dumps(spec, sort_keys=True), str(device))
    if key not in _DATASETS:
        _DATASETS.clear()  # one dataset per worker at a time: memory, not speed, is the limit here
        _SUBSETS.clear()
        _DATASETS[key] = load_dataset(spec["name"], device=device, workers=workers, **spec.get("options", {}))
    return _DATASETS[key]


def analysis_data(
    spec: dict[str, Any],
    device: torch.device,
    workers: int | None,
    train_samples: int | None,
    test_samples: int | None,
    seed: int,
) -> Dataset:
    """The data a pair's analysis reads: the dataset itself when it is in memory; for one streamed
    from disk, only the samples the analysis asks for (``eval.train_samples`` and
    ``eval.test_samples``, drawn with ``seed`` as :func:`repair_ray.analyse_pair` draws them),
    decoded once per worker process and held in memory for every pair it analyses."""
    dataset = cached_dataset(spec, device, workers)
    if not dataset.streamed:
        return dataset
    key = (json.dumps(spec, sort_keys=True), str(device), train_samples, test_samples, seed)
    if key not in _SUBSETS:
        _SUBSETS.clear()
        train = in_memory(dataset.train.subset(train_samples, seed=seed))
        test = in_memory(dataset.test.subset(test_samples, seed=seed))
        _SUBSETS[key] = dataclasses.replace(dataset, train=train, test=test)
    return _SUBSETS[key]


def data_path(dataset: Dataset) -> str:
    """``stream`` for a dataset read lazily from disk, ``memory`` for one held in memory (rows say which)."""
    return "stream" if dataset.streamed else "memory"


def utc_now() -> datetime.datetime:
    """The current time in UTC (rows record when their work started and finished)."""
    return datetime.datetime.now(datetime.UTC)


def node_id() -> str:
    """The Ray node this code runs on (where a trial or pair task ran), or '' outside Ray."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def root_cause(error: BaseException) -> BaseException:
    """The exception raised in the worker that a Ray task or trial error wraps (its ``cause``, however
    deep), or ``error`` itself."""
    while isinstance(cause := getattr(error, "cause", None), BaseException):
        error = cause
    return error


def error_text(error: BaseException) -> str:
    """A one-line, readable reason for a table's ``error`` column.

    A Ray task or trial error wraps the exception raised in the worker (its ``cause``), whose
    message is what a user needs; Ray's own text is mostly the remote traceback.
    """
    error = root_cause(error)
    text = f"{type(error).__name__}: {error}".strip()
    return " ".join(text.split())[:2000]


def error_trace(error: BaseException) -> str:
    """The whole traceback of ``error``, for a table's ``error_trace`` column (``error`` keeps one line).

    For a Ray task's error it is the worker's traceback (Ray's text of it, without its colours),
    which says where the work failed; the driver's own frames (``ray.get``) would say nothing.
    """
    from ray.exceptions import RayTaskError

    if isinstance(error, RayTaskError):
        header, _, frames = _ANSI.sub("", str(error)).partition("\n")
        return f"Traceback (most recent call last), in the Ray task {header}:\n{frames.rstrip()}\n"
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
