"""What runs inside Ray workers, shared by both stages: device, threads, and a dataset cache."""

from __future__ import annotations

import datetime
import json
import re
import traceback
from typing import Any

import torch

from ..datasets import Dataset, load_dataset

_DATASETS: dict[tuple[str, str], Dataset] = {}


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


def cached_dataset(spec: dict[str, Any], device: torch.device) -> Dataset:
    """The dataset of ``spec`` on ``device``, loaded once per worker process (workers are reused)."""
    key = (json.dumps(spec, sort_keys=True), str(device))
    if key not in _DATASETS:
        _DATASETS.clear()  # one dataset per worker at a time: memory, not speed, is the limit here
        _DATASETS[key] = load_dataset(spec["name"], device=device, **spec.get("options", {}))
    return _DATASETS[key]


def utc_now() -> datetime.datetime:
    """The current time in UTC (rows record when their work started and finished)."""
    return datetime.datetime.now(datetime.UTC)


def node_id() -> str:
    """The Ray node this code runs on (where a trial or pair task ran), or '' outside Ray."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def error_text(error: BaseException) -> str:
    """A one-line, readable reason for a table's ``error`` column.

    A Ray task or trial error wraps the exception raised in the worker (its ``cause``), whose
    message is what a user needs; Ray's own text is mostly the remote traceback.
    """
    while isinstance(cause := getattr(error, "cause", None), BaseException):
        error = cause
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
