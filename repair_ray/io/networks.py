"""Networks trained elsewhere: state_dict files (``.pt``/``.pth``) and safetensors, found, hashed, checked, loaded.

A researcher's own networks enter a study as files: a glob or a list of local paths, ``file://``,
``s3://`` or ``gs://`` URIs. Each file is identified by its content (:func:`content_hash`), never
by its name, so renaming or moving a file changes nothing and rewriting its bytes makes another
network.

Nothing here runs code from a file: ``.pt``/``.pth`` files are read with
``torch.load(weights_only=True)`` only (tensors, numbers, strings and containers of them; a
pickled ``nn.Module`` is refused), safetensors hold tensors by construction. Checking a file
against a network reads its header (safetensors' JSON header; a ``.pt`` file loaded onto the meta
device, which reads its pickle and none of its tensor data) rather than every tensor.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import io
import json
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from pyarrow import fs as pafs

from . import storage

NETWORK_SUFFIXES = (".pt", ".pth", ".safetensors")
# a dict holding a state_dict under one of these keys (training scripts' checkpoints) is unwrapped
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
_CHUNK = 8 << 20  # bytes read at a time when hashing
_GLOB_CHARS = "*?["
Shapes = dict[str, tuple[int, ...]]


class NetworkFileError(ValueError):
    """A network file that cannot be used as it is; the message names the file."""


@dataclass(frozen=True)
class NetworkFile:
    """One network file: where it is, the SHA-256 of its bytes, its size and modification time."""

    uri: str
    sha256: str
    bytes: int
    mtime: float | None = None

    @property
    def content_id(self) -> int:
        """A non-negative 52-bit integer from the content hash: the network's number in the tables
        (its ``seed`` column), the same wherever the file lies and whatever it is called."""
        return content_id(self.sha256)


def content_id(sha256: str) -> int:
    """The 52-bit integer of a content hash (its first 13 hex digits). 52 bits, not 63: a nullable
    integer column comes back from Parquet to pandas as float64, which holds every integer below 2**53
    exactly, so a network's number survives every reader; two of 1,000 files share one with a
    probability below 1e-9 (and the config refuses it when they do)."""
    return int(sha256[:13], 16)


def is_glob(pattern: str) -> bool:
    return any(char in pattern for char in _GLOB_CHARS)


def expand(sources: str | Iterable[str]) -> list[str]:
    """The files a ``checkpoints`` value names, as normalised URIs, in a stable order.

    A string may be a glob (``*``, ``?``, ``[...]``; ``**`` spans folders), on this machine or in a
    bucket; a list names files one by one (each may be a glob too). Files whose name does not end in
    one of :data:`NETWORK_SUFFIXES` are left out of a glob's matches.

    Raises:
        NetworkFileError: a glob that matches nothing, or a named file that is not there.
    """
    items = [sources] if isinstance(sources, str) else list(sources)
    found: list[str] = []
    for item in items:
        uri = storage.normalize(item)
        if is_glob(uri):
            matches = [m for m in _glob(uri) if m.lower().endswith(NETWORK_SUFFIXES)]
            if not matches:
                raise NetworkFileError(f"{storage.redact(item)}: no file matches ({', '.join(NETWORK_SUFFIXES)})")
            found += matches
        else:
            filesystem, path = storage.resolve(uri)
            kind = filesystem.get_file_info(path).type
            if kind != pafs.FileType.File:
                what = "is a folder, not a file" if kind == pafs.FileType.Directory else "not found"
                raise NetworkFileError(f"{storage.redact(item)}: {what}")
            found.append(uri)
    return list(dict.fromkeys(found))


def _glob(pattern: str) -> list[str]:
    """The files matching ``pattern`` (a normalised URI or absolute path), sorted."""
    if storage.is_local(pattern) and "://" not in pattern:
        return sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    scheme, _, rest = pattern.partition("://")
    parts = rest.split("/")
    fixed = next(i for i, part in enumerate(parts) if is_glob(part))
    if fixed == 0:
        raise NetworkFileError(f"{storage.redact(pattern)}: a glob needs a bucket name before its first wildcard")
    filesystem, base = storage.resolve(f"{scheme}://{'/'.join(parts[:fixed])}")
    base = base.rstrip("/")
    recursive = "**" in parts[fixed:] or len(parts) - fixed > 1
    infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=recursive, allow_not_found=True))
    wanted = parts[fixed:]
    return sorted(
        f"{scheme}://{info.path}"
        for info in infos
        if info.type == pafs.FileType.File and _match(info.path[len(base) :].strip("/").split("/"), wanted)
    )


def _match(segments: list[str], pattern: list[str]) -> bool:
    """Whether path ``segments`` match glob ``pattern`` segments (``**``: any number of segments)."""
    if not pattern:
        return not segments
    if pattern[0] == "**":
        return any(_match(segments[i:], pattern[1:]) for i in range(len(segments) + 1))
    return bool(segments) and fnmatch.fnmatchcase(segments[0], pattern[0]) and _match(segments[1:], pattern[1:])


def stat(uri: str) -> tuple[int, float | None]:
    """(bytes, modification time in seconds or None) of the file at ``uri``."""
    filesystem, path = storage.resolve(uri)
    info = filesystem.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise NetworkFileError(f"{storage.redact(uri)}: not found")
    mtime = info.mtime.timestamp() if info.mtime is not None else None
    return int(info.size), mtime


def content_hash(uri: str) -> NetworkFile:
    """The :class:`NetworkFile` of ``uri``: its bytes read once, in chunks, through SHA-256."""
    size, mtime = stat(uri)
    digest = hashlib.sha256()
    filesystem, path = storage.resolve(uri)
    with filesystem.open_input_stream(path) as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return NetworkFile(storage.normalize(uri), digest.hexdigest(), size, mtime)


def is_safetensors(uri: str) -> bool:
    return uri.lower().endswith(".safetensors")


def read_shapes(uri: str) -> Shapes:
    """Every tensor's name and shape in the network file at ``uri``, from its header, not its data.

    Raises:
        NetworkFileError: naming the file, when it is truncated, not a checkpoint, a pickled
            object other than tensors (an ``nn.Module`` saved whole), or holds no state_dict.
    """
    filesystem, path = storage.resolve(uri)
    with filesystem.open_input_file(path) as file:
        if is_safetensors(uri):
            return _safetensors_shapes(uri, file, filesystem.get_file_info(path).size)
        loaded = _torch_load(uri, file, map_location="meta")
    return {name: tuple(tensor.shape) for name, tensor in unwrap_state_dict(uri, loaded).items()}


def _safetensors_shapes(uri: str, file: Any, size: int) -> Shapes:
    """Shapes from a safetensors header (8-byte length, then JSON), its data span checked against the size."""
    shown = storage.redact(uri)
    head = file.read(8)
    if len(head) < 8:
        raise NetworkFileError(f"{shown}: truncated or not a safetensors file ({size} bytes)")
    (length,) = struct.unpack("<Q", head)
    if length > size - 8:
        raise NetworkFileError(f"{shown}: truncated or not a safetensors file (its header says {length} bytes)")
    try:
        header = json.loads(file.read(length))
        entries = {k: v for k, v in header.items() if k != "__metadata__"}
        end = max((int(v["data_offsets"][1]) for v in entries.values()), default=0)
        shapes = {name: tuple(int(d) for d in entry["shape"]) for name, entry in entries.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise NetworkFileError(f"{shown}: not a safetensors file ({type(error).__name__}: {error})") from None
    if 8 + length + end != size:
        raise NetworkFileError(
            f"{shown}: truncated: its header describes {8 + length + end} bytes, the file has {size}"
        )
    return strip_module_prefix(shapes)


def _torch_load(uri: str, file: Any, map_location: str | torch.device) -> Any:
    """``torch.load(weights_only=True)`` of an open file, its errors named by the file."""
    shown = storage.redact(uri)
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds; each means "cannot use this file"
        text = " ".join(str(error).split())
        if type(error).__name__ == "UnpicklingError" or "Weights only load failed" in text:
            raise NetworkFileError(
                f"{shown}: holds pickled objects other than tensors (e.g. a whole nn.Module saved with "
                "torch.save(model)); save model.state_dict() instead: repair_ray reads .pt files only with "
                "torch.load(weights_only=True) and never runs code from a file"
            ) from None
        raise NetworkFileError(
            f"{shown}: truncated or not a PyTorch checkpoint ({type(error).__name__}: {text[:300]})"
        ) from None


def unwrap_state_dict(uri: str, loaded: Any) -> dict[str, Any]:
    """The state_dict in what a file holds: the mapping of tensors itself, or the one under a key of
    :data:`STATE_DICT_KEYS` (a training script's checkpoint); a ``module.`` prefix on every key (a
    network saved inside DistributedDataParallel) is removed.

    Raises NetworkFileError naming the file when it holds no such mapping.
    """
    shown = storage.redact(uri)
    if not isinstance(loaded, Mapping):
        raise NetworkFileError(f"{shown}: holds a {type(loaded).__name__}, not a state_dict (a mapping of tensors)")

    def tensors(value: Any) -> bool:
        return isinstance(value, Mapping) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())

    state = loaded
    if not tensors(state):
        inner = next((loaded[k] for k in STATE_DICT_KEYS if k in loaded and tensors(loaded[k])), None)
        if inner is None:
            keys = ", ".join(repr(k) for k in list(loaded)[:8])
            raise NetworkFileError(
                f"{shown}: holds no state_dict: a mapping with keys {keys} (expected tensors, or one of "
                f"{', '.join(repr(k) for k in STATE_DICT_KEYS)} holding them)"
            )
        state = inner
    return strip_module_prefix(state)


def strip_module_prefix(state: Mapping[Any, Any]) -> dict[str, Any]:
    """``state`` with the ``module.`` prefix removed when every key has it (a network saved inside
    DistributedDataParallel), keys as strings."""
    names = [str(name) for name in state]
    if names and all(name.startswith("module.") for name in names):
        return {str(name)[len("module.") :]: value for name, value in state.items()}
    return {str(name): value for name, value in state.items()}


def fit_problem(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> str | None:
    """What keeps a file's tensors (``found``: name -> shape) from loading into a network whose
    state_dict has ``expected``; None when they fit. Names the first mismatching key.

    BatchNorm's ``num_batches_tracked`` counters may be missing (older checkpoints lack them); the
    network keeps its own.
    """
    for name, shape in expected.items():
        if name not in found:
            if name.endswith("num_batches_tracked"):
                continue
            return f"the key {name!r} of the network is missing from the file"
        if tuple(found[name]) != tuple(shape):
            return f"the key {name!r} has shape {tuple(found[name])} in the file but {tuple(shape)} in the network"
    extra = [name for name in found if name not in expected]
    if extra:
        return f"the file has the key {extra[0]!r}, which the network does not have"
    return None


def network_shapes(model: torch.nn.Module) -> Shapes:
    """name -> shape of every entry of a network's state_dict (a meta-device network will do)."""
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def load_state_dict(
    uri: str, *, sha256: str | None = None, map_location: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """The state_dict of the network file at ``uri`` (floating tensors as float32).

    With ``sha256``, the bytes read must have that hash: a file rewritten since it was named is a
    different network, and is refused rather than analysed under the old one's name.

    Raises:
        NetworkFileError: naming the file (changed, truncated, pickled objects, no state_dict).
    """
    data = storage.read_bytes(uri)
    shown = storage.redact(uri)
    if sha256 is not None and (found := hashlib.sha256(data).hexdigest()) != sha256:
        raise NetworkFileError(
            f"{shown}: its content changed since the sweep named it (SHA-256 {found[:12]}..., expected "
            f"{sha256[:12]}...): run the sweep again to analyse it as the new network it is"
        )
    if is_safetensors(uri):
        from safetensors import SafetensorError
        from safetensors.torch import load as load_safetensors

        try:
            loaded: Any = load_safetensors(data)
        except (SafetensorError, ValueError) as error:
            raise NetworkFileError(f"{shown}: truncated or not a safetensors file ({error})") from None
    else:
        loaded = _torch_load(uri, io.BytesIO(data), map_location="cpu")
    state = unwrap_state_dict(uri, loaded)
    return {
        name: (t.float() if t.is_floating_point() else t).to(map_location)
        for name, t in state.items()
        if isinstance(t, torch.Tensor)
    }


def load_into(model: torch.nn.Module, state: Mapping[str, torch.Tensor], uri: str) -> torch.nn.Module:
    """Load ``state`` into ``model`` (BatchNorm running statistics as stored; a missing
    ``num_batches_tracked`` keeps the network's own); raises NetworkFileError naming the file and the
    first key that does not fit."""
    problem = fit_problem({k: tuple(v.shape) for k, v in state.items()}, network_shapes(model))
    if problem is not None:
        raise NetworkFileError(f"{storage.redact(uri)}: does not fit the network: {problem}")
    model.load_state_dict(state, strict=False)
    return model
