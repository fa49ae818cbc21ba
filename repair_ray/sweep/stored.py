"""What a sweep folder records of its run, read back without Ray and without importing any network.

:func:`load_sweep_config` is the config a sweep last ran with; analysis scripts, ``status`` and
``report`` use it to know what the tables should hold. :func:`save_config` and
:func:`save_networks` are their writers (the runner calls them before anything else is written).
"""

from __future__ import annotations

import dataclasses
import json

import yaml

from ..io import storage
from .config import SweepConfig, parse_config
from .imports import networks_record, recorded_networks
from .layout import CONFIG_NAME, config_history_uri, config_uri, networks_uri


def save_config(config: SweepConfig) -> None:
    """Keep the config with the results: ``sweep.yaml`` (latest) and ``configs/<time>.yaml`` (every run)."""
    text = yaml.safe_dump({**config.raw, "storage": config.storage}, sort_keys=False).encode()
    storage.makedirs(config.root)
    storage.write_bytes_atomic(config_uri(config.root), text)
    storage.write_bytes_atomic(config_history_uri(config.root), text)


def save_networks(config: SweepConfig) -> None:
    """Record what readers need of the networks without building them or reading their files:
    ``{"batchnorm": {key: bool}, "imported": {key: [network, ...]}}`` (the imported networks'
    files, hashes and sizes: :mod:`.imports`)."""
    imported = {plan.model_key: plan.imported for plan in config.models if plan.imported is not None}
    networks: dict[str, object] = {"batchnorm": dict(sorted(config.batchnorm.items()))}
    if imported:
        networks["imported"] = networks_record(imported)
    storage.write_bytes_atomic(networks_uri(config.root), json.dumps(networks, indent=1).encode())


def load_sweep_config(root: str) -> SweepConfig:
    """The config a sweep was last run with (its ``sweep.yaml``), pointed at ``root``.

    Whoever can write to the folder writes this config, so it imports nothing: a network named by
    a module is kept as data, and whether it has BatchNorm is what the run recorded
    (``networks.json``; without the record, that it has none); so are the imported networks (their
    files are not read).
    """
    root = storage.normalize(root)
    uri = config_uri(root)
    if not storage.exists(uri):
        raise FileNotFoundError(f"no sweep at {root}: {CONFIG_NAME} is missing")
    data = yaml.safe_load(storage.read_bytes(uri))
    config = parse_config(
        data, source=uri, storage_override=storage.parent(root), stored=True, imported=recorded_networks(root)
    )
    if config.name != storage.basename(root):
        raise ValueError(f"{uri} names the sweep {config.name!r} but lies in {root}: was the folder renamed?")
    recorded = _recorded_batchnorm(root)
    batchnorm = {
        p.model_key: config.batchnorm.get(p.model_key, recorded.get(p.model_key, False)) for p in config.models
    }
    return dataclasses.replace(config, batchnorm=batchnorm)


def _recorded_batchnorm(root: str) -> dict[str, bool]:
    try:
        recorded = json.loads(storage.read_bytes(networks_uri(root))).get("batchnorm", {})
    except (FileNotFoundError, ValueError, AttributeError):
        return {}
    return {str(k): v for k, v in recorded.items() if isinstance(v, bool)} if isinstance(recorded, dict) else {}
