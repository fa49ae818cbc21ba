"""``models[i].checkpoints``: networks trained elsewhere, found, named by their content and checked before Ray starts.

A model config that names files instead of training networks gets one network per file. Each is
numbered by its content hash (:func:`repair_ray.io.networks.content_id`), so renaming or moving a
file computes nothing new, rewriting its bytes makes a new network, and adding files adds only
the new pairs. Every file is checked here, before any Ray work: it must exist, be whole, hold a
state_dict (never a pickled object) and fit the network's keys and shapes (read from its header on
the meta device). A run records what it found in ``networks.json``, so ``status`` and ``report``
read the sweep without looking at the files, and the next run hashes only files whose size or
modification time changed. This module imports no Ray.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from typing import Any, Literal

from ..datasets import dataset_in_shape, dataset_num_classes
from ..io import storage
from ..io.networks import NetworkFileError, content_hash, content_id, expand, fit_problem, network_shapes, read_shapes
from ..io.networks import stat as file_stat
from ..models import ModelConfig
from .layout import networks_uri
from .messages import ImportedNetwork
from .plans import DatasetSpec
from .schema import SweepSection

# "check": every file (validate, run); "remote": only s3:// and gs:// files, local paths being the
# cluster's (submit); "skip": none (a stored config reads what its run recorded)
Checking = Literal["check", "remote", "skip"]
HASH_THREADS = 8  # files hashed at once (object stores: one stream each)


def find_networks(
    sources: str | Sequence[str], known: Mapping[str, ImportedNetwork] | None = None
) -> list[ImportedNetwork]:
    """Every network file ``sources`` names, hashed (a file whose size and modification time are the
    ones ``known`` recorded keeps its recorded hash), sorted by content (their seeds).

    Raises NetworkFileError for a glob that matches nothing or a named file that is not there.
    """
    known = known or {}
    uris = expand(sources)

    def one(uri: str) -> ImportedNetwork:
        before = known.get(uri)
        if before is not None and before.mtime is not None:
            size, mtime = file_stat(uri)
            if size == before.bytes and mtime == before.mtime:
                return replace(before, seed=content_id(before.sha256))
        found = content_hash(uri)
        return ImportedNetwork(content_id(found.sha256), found.uri, found.sha256, found.bytes, found.mtime)

    with ThreadPoolExecutor(max_workers=min(HASH_THREADS, max(len(uris), 1))) as pool:
        networks = list(pool.map(one, uris))
    return sorted(networks, key=lambda n: (n.seed, n.sha256, n.uri))


def check_networks(
    key: str,
    networks: Sequence[ImportedNetwork],
    model: ModelConfig,
    dataset: DatasetSpec,
    problems: list[str],
    *,
    complete: bool = True,
) -> None:
    """Add a problem under ``key`` for each file that cannot be a network of ``model``: unreadable,
    truncated, pickled objects, no state_dict, keys or shapes that do not fit (the first mismatching
    key named), two files with the same content, and (when ``networks`` are all of them,
    ``complete``) fewer than two networks."""
    by_sha: dict[str, str] = {}
    by_number: dict[int, str] = {}
    for network in networks:
        if network.sha256 in by_sha:
            problems.append(
                f"{key}: {storage.redact(by_sha[network.sha256])} and {storage.redact(network.uri)} hold the same "
                "network (identical bytes); name each network once"
            )
        elif network.seed in by_number:  # two contents, one number: never seen, but never silently merged
            problems.append(
                f"{key}: {storage.redact(by_number[network.seed])} and {storage.redact(network.uri)} differ but would "
                f"both be network {network.seed} (their SHA-256 share the first 13 hex digits, which name a "
                "network); this should never happen: please report it"
            )
        by_sha.setdefault(network.sha256, network.uri)
        by_number.setdefault(network.seed, network.uri)
    in_shape = dataset_in_shape(dataset.name, dataset.options)
    num_classes = dataset_num_classes(dataset.name, dataset.options)
    expected = None
    if in_shape is not None and num_classes is not None and model.importable:
        try:
            expected = network_shapes(model.skeleton(num_classes, in_shape))
        except (TypeError, ValueError, RuntimeError) as error:
            problems.append(f"{key}: cannot build {model.arch} to check the files against: {error}")
            return
    for network in networks:
        try:
            shapes = read_shapes(network.uri)
        except NetworkFileError as error:
            problems.append(f"{key}: {error}")
            continue
        if expected is not None and (problem := fit_problem(shapes, expected)) is not None:
            problems.append(
                f"{key}: {storage.redact(network.uri)} does not fit {model.label} "
                f"({num_classes} classes, input {tuple(in_shape or ())}): {problem}"
            )
    if complete and len(networks) < 2:
        problems.append(f"{key}: names {len(networks)} network file(s); a pair needs at least 2")


def imported_networks(
    index: int,
    sources: str | list[str],
    model: ModelConfig,
    dataset: DatasetSpec,
    problems: list[str],
    *,
    checking: Checking,
    known: Mapping[str, ImportedNetwork] | None = None,
) -> tuple[ImportedNetwork, ...]:
    """The checked networks of ``models[index].checkpoints`` (problems added under that key).

    With ``checking`` ``remote``, files on this machine are the cluster's to check (they are not
    looked for here) and are left out of the result, which then only serves validation.
    """
    key = f"models[{index}].checkpoints"
    items = [sources] if isinstance(sources, str) else list(sources)
    if checking == "skip":
        return ()
    if checking == "remote":
        items = [item for item in items if not storage.is_local(item)]
        if not items:
            return ()
    try:
        networks = find_networks(items, known)
    except (NetworkFileError, ValueError) as error:
        problems.append(f"{key}: {error}")
        return ()
    except OSError as error:
        problems.append(f"{key}: cannot read the files: {str(error).splitlines()[0] if str(error) else error}")
        return ()
    check_networks(key, networks, model, dataset, problems, complete=checking == "check")
    return tuple(networks)


def recorded_networks(root: str) -> dict[str, tuple[ImportedNetwork, ...]]:
    """What the sweep's last run recorded of its imported networks: model key -> networks (empty
    when nothing is recorded or the record cannot be read)."""
    try:
        record = json.loads(storage.read_bytes(networks_uri(root))).get("imported", {})
        return {str(key): tuple(ImportedNetwork(**network) for network in networks) for key, networks in record.items()}
    except (FileNotFoundError, ValueError, AttributeError, TypeError):
        return {}


def known_files(recorded: Mapping[str, Iterable[ImportedNetwork]]) -> dict[str, ImportedNetwork]:
    """uri -> network, over every recorded model config (whose hashes a run may reuse)."""
    return {network.uri: network for networks in recorded.values() for network in networks}


def networks_record(imported: Mapping[str, Iterable[ImportedNetwork]]) -> dict[str, list[dict[str, Any]]]:
    """The ``imported`` entry of ``networks.json``: model key -> its networks as plain data."""
    return {key: [asdict(network) for network in networks] for key, networks in sorted(imported.items())}


# keys of a sweep that only networks it trains use (an imported network was trained elsewhere)
TRAINING_KEYS = ("train", "seeds")
DESIGN_KEYS = ("branch", "imp")


def training_only_keys(
    section: SweepSection, raw: Mapping[str, Any], imports: Mapping[int, Any], problems: list[str]
) -> None:
    """A problem for each training-only key that cannot apply to imported networks: a study design
    (``branch``, ``imp``) beside any imported model config, and ``train`` or ``seeds`` when every
    model config imports its networks."""
    if not imports:
        return
    first = f"models[{min(imports)}]"
    for key in DESIGN_KEYS:
        if getattr(section, key) is not None:
            problems.append(
                f"{key}: a study design of networks the sweep trains, but {first} imports its networks "
                f"(checkpoints); run imported networks in a sweep without {key}"
            )
    if len(imports) == len(section.models):
        for key in TRAINING_KEYS:
            if key in raw:
                problems.append(
                    f"{key}: applies to networks the sweep trains, and every model config of this sweep imports "
                    "its networks (models[i].checkpoints); remove it"
                )
