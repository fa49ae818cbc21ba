"""Checkpoints: a state dict, JSON metadata and optional training state in one file at any URI.

A checkpoint is written to bytes first and then atomically (see :mod:`repair_ray.io.storage`), so a
crash never leaves half a file. It is always read with ``torch.load(weights_only=True)``: a file
can hold tensors, numbers, strings and containers of them, never code.
"""

from __future__ import annotations

import io
import json
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import storage

FORMAT = "repair_ray.checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or not a repair_ray checkpoint."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns."""

    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]
    training_state: dict[str, Any] | None


def versions() -> dict[str, str]:
    """Versions of torch, repair_ray and Python, recorded in every checkpoint."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        repair_ray_version = version("repair-ray")
    except PackageNotFoundError:
        repair_ray_version = "unknown"
    return {"torch": torch.__version__, "repair_ray": repair_ray_version, "python": platform.python_version()}


def save_checkpoint(
    uri: str | os.PathLike[str],
    state_dict_or_model: Mapping[str, torch.Tensor] | nn.Module,
    meta: Mapping[str, Any],
    *,
    training_state: Mapping[str, Any] | None = None,
) -> None:
    """Write a checkpoint of the weights (moved to CPU), ``meta`` and optional ``training_state``.

    ``meta`` must be JSON-serialisable; a ``versions`` entry is added to it. ``training_state``
    may hold tensors, numbers, strings, None and lists/tuples/dicts of them.
    """
    if isinstance(state_dict_or_model, nn.Module):
        state_dict_or_model = state_dict_or_model.state_dict()
    state_dict = {name: tensor.detach().cpu() for name, tensor in state_dict_or_model.items()}
    try:
        meta_json = json.dumps({**meta, "versions": versions()})
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint meta must be JSON-serialisable: {error}") from error
    if training_state is not None:
        training_state = _to_cpu(dict(training_state))
    buffer = io.BytesIO()
    torch.save(
        {"format": FORMAT, "state_dict": state_dict, "meta": meta_json, "training_state": training_state},
        buffer,
    )
    storage.write_bytes_atomic(uri, buffer.getvalue())


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return value


def load_checkpoint(uri: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; raises CheckpointError if it can't."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError as error:
        raise CheckpointError(f"checkpoint not found: {uri}") from error

    def corrupt(reason: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {uri} is corrupt or not a repair_ray checkpoint: {reason}")

    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as error:
        raise corrupt(f"{type(error).__name__}: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise corrupt(f"format tag is {found!r}, expected {FORMAT!r}")
    state_dict, meta_json, training_state = (payload.get(k) for k in ("state_dict", "meta", "training_state"))
    if not isinstance(state_dict, dict) or not all(isinstance(t, torch.Tensor) for t in state_dict.values()):
        raise corrupt("state_dict is not a dict of tensors")
    if not isinstance(meta_json, (str, bytes, bytearray)):
        raise corrupt(f"meta is not JSON: it is {type(meta_json).__name__}")
    try:
        meta = json.loads(meta_json)
    except ValueError as error:
        raise corrupt(f"meta is not JSON: {error}") from error
    if not isinstance(meta, dict):
        raise corrupt("meta is not a JSON object")
    if training_state is not None and not isinstance(training_state, dict):
        raise corrupt("training_state is not a dict")
    return Checkpoint(state_dict, meta, training_state)
