"""The whole sweep: train and pair stages pipelined, then compaction; and a sweep's status."""

from __future__ import annotations

import dataclasses
import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import yaml

from ..io import storage
from ..io.tables import compact_tables, read_table, write_current_keys
from .cluster import cluster_shape, connect, resolve_resources
from .config import SweepConfig, parse_config
from .lease import Lease
from .pair_stage import PairQueue, PairStageSummary, run_pair_stage
from .planning import analysis_keys, model_outcomes, read_pair_state
from .train_stage import TrainStageSummary, checkpoint_uri, plan_trials, run_train_stage

CONFIG_NAME = "sweep.yaml"
# what the networks of the current config are, as far as readers of the folder need it without
# building them (a network named by a module is never imported to read a sweep): {"batchnorm": {key: bool}}
NETWORKS_NAME = "networks.json"


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
    take_over: bool = False,
) -> SweepResult:
    """Run (or resume) a sweep on the Ray cluster at ``address`` (a local one when None).

    The sweep's lease is taken first, before anything is written, and held until the run ends:
    :class:`~repair_ray.sweep.lease.LeaseHeld` when another run holds it (``take_over`` takes it
    anyway), :class:`~repair_ray.sweep.lease.LeaseLost` when another run took it over meanwhile.
    """
    stop = threading.Event()
    with Lease(config.root, take_over=take_over, say=say, on_lost=stop.set):
        return _run_sweep(config, address, num_cpus, say, stop)


def _run_sweep(
    config: SweepConfig, address: str | None, num_cpus: int | None, say: Callable[[str], None], stop: threading.Event
) -> SweepResult:
    import ray

    started = time.time()
    save_config(config)
    owns_ray = not ray.is_initialized()
    say(f"[sweep] {connect(address, num_cpus=num_cpus)}")
    say(f"[sweep] {config.name}: {config.n_trials} trials, {config.n_pairs} pairs -> {config.root}")
    keys = analysis_keys(config.pair_settings, config.dataset.as_dict())
    write_current_keys(config.root, [p.model_key for p in config.models], sorted(set(keys.values())))
    networks = {"batchnorm": dict(sorted(config.batchnorm.items()))}
    storage.write_bytes_atomic(storage.join(config.root, NETWORKS_NAME), json.dumps(networks, indent=1).encode())
    try:
        check_resources(config)
        train, pairs = _run_stages(config, say, stop)
        compacted = compact_tables(config.root)
        if compacted:
            say(f"[sweep] compacted {compacted} table files")
    finally:
        if owns_ray:
            ray.shutdown()
    return SweepResult(config.root, train, pairs, time.time() - started)


def check_resources(config: SweepConfig) -> None:
    """Raise the ConfigError of a resource request that no node of the cluster can ever hold, before
    either stage starts (the pair stage runs in a thread and would report it only at the end)."""
    shape = cluster_shape()
    for key, spec in (("resources.train", config.resources.train), ("resources.pair", config.resources.pair)):
        resolve_resources(spec, key, lambda _: None, shape)


def _run_stages(
    config: SweepConfig, say: Callable[[str], None], stop: threading.Event | None = None
) -> tuple[TrainStageSummary, PairStageSummary]:
    """Both stages at once: the pair stage (a driver thread) starts each pair when its two networks exist.

    Setting ``stop`` (the lease was lost) makes the pair stage finish what is in flight and start nothing new.
    """
    trials = plan_trials(config)
    events: queue.Queue = queue.Queue()
    stop = threading.Event() if stop is None else stop
    outcome: dict[str, object] = {}

    def pair_stage() -> None:
        try:
            outcome["pairs"] = run_pair_stage(config, trained=dict(trials.done), events=events, stop=stop, say=say)
        except BaseException as error:  # noqa: BLE001 - re-raised in the main thread below
            outcome["error"] = error

    thread = threading.Thread(target=pair_stage, name="pair-stage", daemon=True)
    thread.start()
    try:
        train = run_train_stage(
            config,
            trials,
            say=say,
            on_trial_done=lambda key, seed, ok: events.put(
                (key, seed, checkpoint_uri(config.root, key, seed) if ok else None)
            ),
        )
    except BaseException:
        stop.set()  # interrupted: the pair stage writes what is in flight and starts nothing new
        raise
    finally:
        events.put(None)  # no more trials: the pair stage finishes what it can and returns
        thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return train, outcome["pairs"]  # type: ignore[return-value]


def load_sweep_config(root: str) -> SweepConfig:
    """The config a sweep was last run with (its ``sweep.yaml``), pointed at ``root``.

    Whoever can write to the folder writes this config, so it imports nothing: a network named by
    a module is kept as data, and whether it has BatchNorm is what the run recorded
    (``networks.json``; without the record, that it has none).
    """
    root = storage.normalize(root)
    uri = storage.join(root, CONFIG_NAME)
    if not storage.exists(uri):
        raise FileNotFoundError(f"no sweep at {root}: {CONFIG_NAME} is missing")
    data = yaml.safe_load(storage.read_bytes(uri))
    config = parse_config(data, source=uri, storage_override=storage.parent(root), stored=True)
    if config.name != storage.basename(root):
        raise ValueError(f"{uri} names the sweep {config.name!r} but lies in {root}: was the folder renamed?")
    recorded = _recorded_batchnorm(root)
    batchnorm = {
        p.model_key: config.batchnorm.get(p.model_key, recorded.get(p.model_key, False)) for p in config.models
    }
    return dataclasses.replace(config, batchnorm=batchnorm)


def _recorded_batchnorm(root: str) -> dict[str, bool]:
    try:
        recorded = json.loads(storage.read_bytes(storage.join(root, NETWORKS_NAME))).get("batchnorm", {})
    except (FileNotFoundError, ValueError, AttributeError):
        return {}
    return {str(k): v for k, v in recorded.items() if isinstance(v, bool)} if isinstance(recorded, dict) else {}


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
    """Counts of trained / failed / missing models and done / failed / missing pairs of the current config.

    A pair is done when every (align, correction) of the current config has its rows under the
    current analysis key; failed when one of them failed. Unreadable table files are skipped
    (with a warning naming each), so their rows count as missing.
    """
    config = load_sweep_config(root)
    expected_models = {(p.model_key, s) for p in config.models for s in p.seeds}
    model_status = model_outcomes(read_table(config.root, "models"))
    state = read_pair_state(config.root, analysis_keys(config.pair_settings, config.dataset.as_dict()))
    lacking = PairQueue(config, state).gaps  # the pair stage's own rule of what is not done
    failed = sum(1 for pair in lacking if pair in state.failed)
    return SweepStatus(
        models_expected=len(expected_models),
        models_ok=sum(model_status.get(m) == "ok" for m in expected_models),
        models_failed=sum(model_status.get(m) == "failed" for m in expected_models),
        pairs_expected=config.n_pairs,
        pairs_ok=config.n_pairs - len(lacking),
        pairs_failed=failed,
    )
