"""The whole sweep: train stage, then pair stage, then a short summary; and a sweep's status."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import yaml

from ..io import storage
from ..io.tables import read_table
from .cluster import connect
from .config import SweepConfig, parse_config
from .pair_stage import PairStageSummary, run_pair_stage
from .planning import model_outcomes, pair_outcomes
from .train_stage import TrainStageSummary, run_train_stage

CONFIG_NAME = "sweep.yaml"


@dataclass
class SweepResult:
    root: str
    train: TrainStageSummary
    pairs: PairStageSummary
    seconds: float


def save_config(config: SweepConfig) -> None:
    """Keep the config with the results: ``sweep.yaml`` (latest) and ``configs/<time>.yaml`` (every run)."""
    text = yaml.safe_dump({**config.raw, "storage": config.storage}, sort_keys=False).encode()
    storage.makedirs(config.root)
    storage.write_bytes_atomic(storage.join(config.root, CONFIG_NAME), text)
    storage.write_bytes_atomic(storage.join(config.root, "configs", f"{time.strftime('%Y%m%d-%H%M%S')}.yaml"), text)


def run_sweep(
    config: SweepConfig,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    say: Callable[[str], None] = print,
) -> SweepResult:
    """Run (or resume) a sweep on the Ray cluster at ``address`` (a local one when None)."""
    import ray

    started = time.time()
    save_config(config)
    owns_ray = not ray.is_initialized()
    connect(address, num_cpus=num_cpus)
    say(f"[sweep] {config.name}: {config.n_trials} trials, {config.n_pairs} pairs -> {config.root}")
    try:
        train = run_train_stage(config, say=say)
        pairs = run_pair_stage(config, say=say)
    finally:
        if owns_ray:
            ray.shutdown()
    return SweepResult(config.root, train, pairs, time.time() - started)


def load_sweep_config(root: str) -> SweepConfig:
    """The config a sweep was last run with (its ``sweep.yaml``), pointed at ``root``."""
    root = storage.normalize(root)
    uri = storage.join(root, CONFIG_NAME)
    if not storage.exists(uri):
        raise FileNotFoundError(f"no sweep at {root}: {CONFIG_NAME} is missing")
    data = yaml.safe_load(storage.read_bytes(uri))
    config = parse_config(data, source=uri, storage_override=storage.parent(root))
    if config.name != storage.basename(root):
        raise ValueError(f"{uri} names the sweep {config.name!r} but lies in {root}: was the folder renamed?")
    return config


@dataclass
class SweepStatus:
    models_expected: int
    models_ok: int
    models_failed: int
    pairs_expected: int
    pairs_ok: int
    pairs_failed: int

    @property
    def models_missing(self) -> int:
        return self.models_expected - self.models_ok - self.models_failed

    @property
    def pairs_missing(self) -> int:
        return self.pairs_expected - self.pairs_ok - self.pairs_failed


def sweep_status(root: str) -> SweepStatus:
    """Counts of trained / failed / missing models and done / failed / missing pairs."""
    config = load_sweep_config(root)
    expected_models = {(p.model_key, s) for p in config.models for s in p.seeds}
    expected_pairs = {(p.model_key, a, b) for p in config.models for a, b in p.pairs}
    model_status = model_outcomes(read_table(config.root, "models"))
    pair_status = pair_outcomes(read_table(config.root, "pairs"))
    return SweepStatus(
        models_expected=len(expected_models),
        models_ok=sum(model_status.get(m) == "ok" for m in expected_models),
        models_failed=sum(model_status.get(m) == "failed" for m in expected_models),
        pairs_expected=len(expected_pairs),
        pairs_ok=sum(pair_status.get(p) is True for p in expected_pairs),
        pairs_failed=sum(pair_status.get(p) is False for p in expected_pairs),
    )
