"""The whole sweep: the lease, then the train and pair stages pipelined, then compaction.

A sweep's status (:mod:`.status`) and the config it last ran with (:mod:`.stored`) are read
without Ray; their names are importable from here too.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..io.tables import compact_tables, write_current_keys
from .cluster import check_worker_group, cluster_shape, connect, resolve_resources
from .config import SweepConfig
from .layout import CONFIG_NAME, NETWORKS_NAME
from .lease import Lease
from .messages import Network, TrialEnded
from .pair_stage import PairStageSummary, run_pair_stage
from .planning import PairState, TrialPlan, analysis_keys, pair_gaps, plan_trials, read_pair_state
from .status import SweepStatus, sweep_status
from .stored import load_sweep_config, save_config, save_networks
from .train_stage import TrainStageSummary, run_train_stage

__all__ = [
    "CONFIG_NAME",
    "NETWORKS_NAME",
    "SweepResult",
    "SweepStatus",
    "check_resources",
    "load_sweep_config",
    "run_sweep",
    "save_config",
    "sweep_status",
]


@dataclass
class SweepResult:
    root: str
    train: TrainStageSummary
    pairs: PairStageSummary
    seconds: float


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
    keys = analysis_keys(config.pair_settings, config.dataset.as_dict())
    imported = {p.model_key: p.seeds for p in config.models if p.is_imported}
    write_current_keys(config.root, [p.model_key for p in config.models], sorted(set(keys.values())), imported)
    save_networks(config)
    trials, state = plan_trials(config), read_pair_state(config.root, keys)  # read once: the stages get them
    if not trials.todo and not pair_gaps(config, state):
        # a re-run with nothing to do starts no Ray: it says so and returns in the time the tables take to read
        say(
            f"[sweep] {config.name}: nothing to do: all {config.n_trials} trials and {config.n_pairs} pairs "
            f"are done ({config.root})"
        )
        return SweepResult(
            config.root,
            TrainStageSummary(config.n_trials, config.n_trials, 0, 0, 0.0),
            PairStageSummary(config.n_pairs, config.n_pairs, 0, 0, 0, 0.0),
            time.time() - started,
        )
    owns_ray = not ray.is_initialized()
    if not (address or os.environ.get("RAY_ADDRESS")):
        fetch_dataset(config, say)  # a local cluster reads this disk: the data is here, or an error before Ray
    say(f"[sweep] {connect(address, num_cpus=num_cpus)}")
    say(f"[sweep] {config.name}: {config.n_trials} trials, {config.n_pairs} pairs -> {config.root}")
    try:
        check_resources(config, say)
        train, pairs = _run_stages(config, say, stop, trials, state)
        compacted = compact_tables(config.root)
        if compacted:
            say(f"[sweep] compacted {compacted} table files")
    finally:
        if owns_ray:
            ray.shutdown()
    return SweepResult(config.root, train, pairs, time.time() - started)


def fetch_dataset(config: SweepConfig, say: Callable[[str], None]) -> None:
    """Download the sweep's dataset here, before Ray starts, when it is missing and its loader
    downloads (torchvision's); a :class:`~repair_ray.datasets.DatasetNotFoundError` (a usage error:
    exit 2) when that fails. Nothing to do when the files are there."""
    from ..datasets import dataset_files, load_dataset

    missing, downloads = dataset_files(config.dataset.name, config.dataset.options)
    if missing is None or not downloads:
        return
    say(f"[sweep] {missing}: downloading it before the workers start")
    load_dataset(config.dataset.name, **config.dataset.options)


def check_resources(config: SweepConfig, say: Callable[[str], None] = print) -> None:
    """Raise the ConfigError of a resource request that no node of the cluster can ever hold, or a
    trial of several workers that the whole cluster can never hold at once, before either stage
    starts (the pair stage runs in a thread and would report it only at the end). ``say`` gets the
    line of a private Ray API that has changed (what the check then cannot judge)."""
    shape = cluster_shape(say)
    for key, spec in (("resources.train", config.resources.train), ("resources.pair", config.resources.pair)):
        cpu, gpu = resolve_resources(spec, key, lambda _: None, shape)
        if key == "resources.train":
            check_worker_group(config.workers_per_trial, cpu, gpu, shape)


def _run_stages(
    config: SweepConfig,
    say: Callable[[str], None],
    stop: threading.Event | None = None,
    trials: TrialPlan | None = None,
    state: PairState | None = None,
) -> tuple[TrainStageSummary, PairStageSummary]:
    """Both stages at once: the pair stage (a driver thread) starts each pair when its two networks exist.

    Setting ``stop`` (the lease was lost) makes both stages finish what is in flight and start nothing new.
    """
    trials = trials or plan_trials(config)
    events: queue.Queue[TrialEnded | None] = queue.Queue()
    stop = threading.Event() if stop is None else stop
    workers_wanted = threading.Event()  # a trial of several workers waits for them: pairs start nothing new
    summaries: list[PairStageSummary] = []
    errors: list[BaseException] = []

    def pair_stage() -> None:
        try:
            summaries.append(
                run_pair_stage(
                    config,
                    trained=dict(trials.done),
                    state=state,
                    events=events,
                    stop=stop,
                    say=say,
                    workers_wanted=workers_wanted,
                )
            )
        except BaseException as error:  # noqa: BLE001 - re-raised in the main thread below
            errors.append(error)

    plans = {plan.model_key: plan for plan in config.models}
    thread = threading.Thread(target=pair_stage, name="pair-stage", daemon=True)
    thread.start()
    try:
        train = run_train_stage(
            config,
            trials,
            say=say,
            workers_wanted=workers_wanted,
            stop=stop,
            on_trial_done=lambda key, seed, ok: events.put(
                TrialEnded(Network(key, seed), plans[key].checkpoint(config.root, seed) if ok else None)
            ),
        )
    except BaseException:
        stop.set()  # interrupted: the pair stage writes what is in flight and starts nothing new
        raise
    finally:
        events.put(None)  # no more trials: the pair stage finishes what it can and returns
        thread.join()
    if errors:
        raise errors[0]
    return train, summaries[0]
