"""The one home of a sweep folder's layout: every path and file name under ``<storage>/<sweep>/``.

::

    <storage>/<sweep>/
      sweep.yaml                      the config the sweep last ran with (CONFIG_NAME)
      configs/<time>.yaml             every config it ever ran with
      networks.json                   what readers need of the networks without building them or reading
                                      their files: BatchNorm, the imported networks (NETWORKS_NAME)
      lease.json                      who runs the sweep now (LEASE_NAME)
      current_keys.json               the model and analysis keys of the current config (repair_ray.io.tables)
      checkpoints/<model_key>/seed-<seed>.pt                    a trained network
      checkpoints/<trunk_key>/trunk-<seed>/epoch-<epoch>.pt     a trunk's snapshot, where its children branch
      tables/<table>/<stem>.parquet   the result tables (repair_ray.io.tables): one file per
                                      trial's row (``<time>-<model_key>__seed-<seed>-<random>``)
                                      or per flush of the pair stage (``<time>-part-<random>``)

Paths stored in rows are relative to the sweep root, so a sweep folder can be copied or synced to
S3 and resumed there. This module imports neither Ray nor torch.
"""

from __future__ import annotations

import time

from ..io import storage
from ..io.tables import new_stem, table_file

CONFIG_NAME = "sweep.yaml"
CONFIGS_DIR = "configs"
# what the networks of the current config are, as far as readers of the folder need it without
# building them (a network named by a module is never imported to read a sweep) or reading their files:
# {"batchnorm": {key: bool}, "imported": {key: [network, ...]}} (the second only for imported networks)
NETWORKS_NAME = "networks.json"
LEASE_NAME = "lease.json"
CHECKPOINTS_DIR = "checkpoints"


def config_uri(root: str) -> str:
    """The config the sweep last ran with."""
    return storage.join(root, CONFIG_NAME)


def config_history_uri(root: str, at: float | None = None) -> str:
    """Where a run keeps its config among every config the sweep ran with (named by local time)."""
    return storage.join(root, CONFIGS_DIR, f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(at))}.yaml")


def networks_uri(root: str) -> str:
    return storage.join(root, NETWORKS_NAME)


def lease_uri(root: str) -> str:
    return storage.join(root, LEASE_NAME)


def checkpoint_path(model_key: str, seed: int) -> str:
    """Where a trial's checkpoint lives, relative to the sweep root (rows store this, so a sweep can move)."""
    return f"{CHECKPOINTS_DIR}/{model_key}/seed-{seed}.pt"


def checkpoint_uri(root: str, model_key: str, seed: int) -> str:
    """The full URI of a trial's checkpoint."""
    return storage.join(root, checkpoint_path(model_key, seed))


def checkpoints_dir(root: str, model_key: str) -> str:
    """The folder of every checkpoint of one model config."""
    return storage.join(root, CHECKPOINTS_DIR, model_key)


def trunk_snapshot_uri(root: str, trunk_key: str, trunk_seed: int, epoch: int) -> str:
    """Where a trunk's snapshot at ``epoch`` lives (its children at that epoch start from it)."""
    return storage.join(root, CHECKPOINTS_DIR, trunk_key, f"trunk-{trunk_seed}", f"epoch-{epoch}.pt")


def resolve_uri(root: str, uri: str) -> str:
    """A URI stored in a table: relative to the sweep root (absolute ones, from older versions, as they are)."""
    return uri if not storage.is_relative(uri) else storage.join(root, uri)


def models_row_uri(root: str, model_key: str, seed: int) -> str:
    """A new file for one trial's row of the ``models`` table; the newest row of a trial wins."""
    return table_file(root, "models", new_stem(f"{model_key}__seed-{seed}"))


def part_stem() -> str:
    """The stem of a new part file of the pair stage (one per table, written together)."""
    return new_stem("part")


def pair_stem(model_key: str, seed_a: int, seed_b: int) -> str:
    """The name of a pair in messages and logs: ``<model_key>__<seed_a>-<seed_b>``."""
    return f"{model_key}__{seed_a}-{seed_b}"
