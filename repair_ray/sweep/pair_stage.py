"""Pair stage: one Ray task per pair of trained seeds, rows batched into part files.

The driver knows which trials are trained (from the ``models`` table, and as the train stage
finishes them: the stages are pipelined, so a pair starts as soon as both its networks are
there). For every pair of the current config it asks the tables which (align, correction) are
not complete under the current analysis key, and keeps a bounded number of tasks in flight over
a lazy queue. Each task (:mod:`.pair_worker`) loads both checkpoints and calls the core's
:func:`repair_ray.pair.analyse_pair`; the driver buffers the rows it returns and flushes them
every ``flush.pairs`` pairs or ``flush.seconds`` seconds as one part file per table (``curves``
and ``layers`` first, ``pairs`` last, each atomic), so a crash loses at most the work in flight
plus one flush interval, and a re-run recomputes exactly what the tables lack or cannot read.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ..io.tables import table_file, write_rows
from .cluster import cluster_shape, named, resolve_resources, tasks_in_flight
from .config import SweepConfig
from .layout import pair_stem, part_stem
from .messages import PairContext, PairJob, TrialEnded
from .pair_worker import METRIC_COLUMNS, Rows, failed_rows, pair_task
from .planning import PairState, analysis_keys, forward_flops, pair_gaps, plan_trials, read_pair_state
from .progress import Progress
from .schema import FLUSH_PAIRS, FLUSH_SECONDS
from .worker import error_text, error_trace

# The pair task lives in pair_worker; its public names still import from here too.
__all__ = [
    "METRIC_COLUMNS",
    "PairQueue",
    "PairStageSummary",
    "PartWriter",
    "failed_rows",
    "make_remote_pair_task",
    "pair_task",
    "run_pair_stage",
    "stage_context",
]


def stage_context(config: SweepConfig, threads: float, gpu: float = 0.0) -> PairContext:
    """What every pair task of the stage shares, sent to the object store once (not once per task).

    ``gpu``: the share of a GPU each task gets (its α per pass are sized to that share of the memory)."""
    return PairContext(
        sweep=config.name,
        dataset=config.dataset.as_dict(),
        settings=asdict(config.pair_settings),
        alphas_per_pass=config.alphas_per_pass,
        memory_share=min(gpu, 1.0) or 1.0,
        analysis_keys=analysis_keys(config.pair_settings, config.dataset.as_dict()),
        threads=threads,
        models={plan.model_key: plan.fields() for plan in config.models},
        batchnorm=dict(config.batchnorm),
        allow_import=tuple(config.allow_import),
        lineage={plan.model_key: plan.lineage() for plan in config.models},
        train={plan.model_key: asdict(plan.recipe(config.train)) for plan in config.models if not plan.is_imported},
        train_override={plan.model_key: plan.train_override for plan in config.models if plan.train_override},
        pair_design=config.pair_design,
    )


@dataclass
class PartWriter:
    """Buffers finished pairs' rows and writes them as one part file per table, atomically.

    ``curves`` and ``layers`` are written before ``pairs``: a pair whose ``pairs`` rows are on
    storage has the rest too, unless a file was damaged later (then the re-run recomputes it).
    """

    root: str
    max_pairs: int = FLUSH_PAIRS
    max_seconds: float = FLUSH_SECONDS
    buffered: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"curves": [], "layers": [], "pairs": []})
    pairs: int = 0
    since: float = field(default_factory=time.monotonic)
    files: int = 0

    def add(self, rows: Rows) -> None:
        if not self.pairs:
            self.since = time.monotonic()
        for table, table_rows in rows.items():
            self.buffered[table].extend(table_rows)
        self.pairs += 1
        if self.pairs >= self.max_pairs or time.monotonic() - self.since >= self.max_seconds:
            self.flush()

    def due_in(self) -> float | None:
        """Seconds until the buffered pairs are due to be written; None when nothing is buffered."""
        if not self.pairs:
            return None
        return max(0.0, self.since + self.max_seconds - time.monotonic())

    def flush_if_due(self) -> None:
        """Flush when the oldest buffered pair has waited ``max_seconds`` (called while nothing arrives)."""
        if self.pairs and time.monotonic() - self.since >= self.max_seconds:
            self.flush()

    def flush(self) -> None:
        if not self.pairs:
            return
        stem = part_stem()
        for table in ("curves", "layers", "pairs"):
            if self.buffered[table]:
                write_rows(table_file(self.root, table, stem), table, self.buffered[table])
                self.files += 1
        self.buffered = {"curves": [], "layers": [], "pairs": []}
        self.pairs = 0


@dataclass
class PairStageSummary:
    total: int
    already_done: int
    ran: int
    failed: int
    left_out: int
    seconds: float
    first_row_seconds: float | None = None  # from the stage's start to the first pair written


class PairQueue:
    """The pairs still to analyse, released as their networks become trained (lazily, in a deque).

    It holds one small tuple per ready pair and looks a pair up only when one of its seeds is
    reported trained, so a 100,000-pair sweep plans in seconds and a few MB.
    """

    def __init__(self, config: SweepConfig, state: PairState) -> None:
        self.config = config
        self.ready: collections.deque[PairJob] = collections.deque()
        self.trained: dict[tuple[str, int], str] = {}
        # each seed's pairs: computed once, looked up per seed
        self.partners: dict[str, dict[int, list[tuple[int, int]]]] = {}
        for plan in config.models:
            partners: dict[int, list[tuple[int, int]]] = {seed: [] for seed in plan.seeds}
            for a, b in plan.pairs:
                partners[a].append((a, b))
                partners[b].append((a, b))
            self.partners[plan.model_key] = partners
        # the content hash of every imported network: its pair task checks the bytes it reads against it
        self.hashes = {(p.model_key, n.seed): n.sha256 for p in config.models for n in p.imported or ()}
        self.gaps = pair_gaps(config, state)  # what each incomplete pair lacks, worked out once
        # pairs with rows already (a grown sweep: new aligns or corrections): they compute only their gaps
        self.partial = {pair: gaps for pair, gaps in self.gaps.items() if state.complete.get(pair)}
        self.todo = len(self.gaps)
        self.done = config.n_pairs - self.todo
        self.released: set[tuple[str, int, int]] = set()

    def add_trained(self, trained: dict[tuple[str, int], str]) -> None:
        """Networks that are trained (model_key, seed) -> checkpoint URI; releases their ready pairs."""
        fresh = [key for key in trained if key not in self.trained]
        self.trained.update(trained)
        for model_key, seed in fresh:
            if model_key in self.partners:
                self.ready.extend(self._jobs(model_key, seed))

    def _jobs(self, model_key: str, seed: int) -> Iterator[PairJob]:
        """The pairs of ``seed`` whose other network is trained too, each released once, if incomplete."""
        for a, b in self.partners[model_key].get(seed, ()):
            other = b if a == seed else a
            if (model_key, other) not in self.trained or (model_key, a, b) in self.released:
                continue
            self.released.add((model_key, a, b))
            gaps = self.gaps.get((model_key, a, b))
            if gaps is not None:
                aligns, corrections = gaps
                trained, hashes = self.trained, self.hashes
                yield PairJob(
                    model_key,
                    a,
                    b,
                    trained[(model_key, a)],
                    trained[(model_key, b)],
                    aligns,
                    corrections,
                    hashes.get((model_key, a)),
                    hashes.get((model_key, b)),
                )

    def left_out(self) -> list[str]:
        """Pairs that can never run: a network of theirs failed or was never trained."""
        out = []
        for plan in self.config.models:
            for a, b in plan.pairs:
                if (plan.model_key, a) in self.trained and (plan.model_key, b) in self.trained:
                    continue
                if (plan.model_key, a, b) in self.gaps:
                    out.append(pair_stem(plan.model_key, a, b))
        return out


def _partial_note(pairs: PairQueue) -> str:
    """What is new for the pairs that have rows already: ``; 6 of them have rows and compute only
    align weight x correction none, repair``, or nothing when no pair has rows."""
    if not pairs.partial:
        return ""
    aligns = sorted({a for gaps in pairs.partial.values() for a in gaps[0]})
    corrections = sorted({c for gaps in pairs.partial.values() for c in gaps[1]})
    return (
        f"; {len(pairs.partial)} of them have rows and compute only align {', '.join(aligns)} "
        f"x correction {', '.join(corrections)}"
    )


def make_remote_pair_task(cpu: float, gpu: float, retries: int, task: Callable[..., Any] | None = None) -> Any:
    """The pair task as a Ray remote function: reused workers, retried when a worker dies. ``task``
    replaces :func:`pair_task` (tests wrap it, with the same remote options)."""
    import ray

    # max_calls=0: a GPU task would otherwise get a fresh worker (torch import, CUDA init) per call
    return ray.remote(num_cpus=cpu, num_gpus=gpu, max_calls=0, max_retries=retries)(task or pair_task)


def run_pair_stage(
    config: SweepConfig,
    *,
    trained: dict[tuple[str, int], str] | None = None,
    events: queue.Queue[TrialEnded | None] | None = None,
    stop: threading.Event | None = None,
    say: Callable[[str], None] = print,
    remote_task: Any = None,
    workers_wanted: threading.Event | None = None,
    state: PairState | None = None,
) -> PairStageSummary:
    """Analyse every pair of the sweep that the tables lack; returns counts.

    ``trained`` maps (model_key, seed) to checkpoint URIs of the networks ready now (default: read
    from the ``models`` table). With ``events``, the train stage is still running: it puts a
    :class:`~.messages.TrialEnded` for each network that ends and ``None`` when it is done.
    ``stop`` (set when the driver is interrupted) ends the stage after the tasks in flight, whose
    rows are written. While ``workers_wanted`` is set (a trial of several workers waits for all of
    them), no new pair task starts: what the running ones release goes to those workers.
    ``remote_task`` replaces the Ray remote function (tests inject failures with it). ``state`` is
    what the tables hold (:func:`~.planning.read_pair_state` of the sweep's analysis keys), when the
    caller read it already; the stage is the only writer of pair rows, so it is still true.
    """
    import ray

    started = time.time()
    if trained is None:
        trained = plan_trials(config).done
    shape = cluster_shape(say)
    cpu, gpu = resolve_resources(config.resources.pair, "resources.pair", say, shape)
    context = stage_context(config, cpu, gpu)
    if state is None:
        state = read_pair_state(config.root, context.analysis_keys)
    pairs = PairQueue(config, state)
    # longest first among the pairs ready now: the end of the stage is not one big pair alone
    cost = {p.model_key: forward_flops(p.model, config.dataset.name, config.dataset.options) for p in config.models}
    pairs.add_trained(dict(sorted(trained.items(), key=lambda item: -cost.get(item[0][0], 0.0))))
    say(f"[pairs] {pairs.done} of {config.n_pairs} pairs already done; {pairs.todo} to run{_partial_note(pairs)}")
    task = remote_task or make_remote_pair_task(cpu, gpu, config.pair_retries)
    context_ref = ray.put(context)
    limit = tasks_in_flight(config.max_pairs_in_flight, cpu, gpu, shape, per_slot=2)
    progress = Progress("pairs", pairs.todo, say, unit="pairs")
    writer = PartWriter(config.root, config.flush_pairs, config.flush_seconds)
    pending: dict[Any, PairJob] = {}
    ran = failed = 0
    first_row: float | None = None
    training = events is not None
    try:
        while pairs.ready or pending or training:
            if stop is not None and stop.is_set():
                pairs.ready.clear()  # start nothing new; the tasks in flight finish and are written
                training = False
            while training and events is not None:  # take every network that has ended since the last look
                try:
                    event = events.get(timeout=0.2 if not (pairs.ready or pending) else 0)
                except queue.Empty:
                    break
                if event is None:
                    training = False
                elif event.checkpoint is not None:  # a failed trial releases nothing; its pairs are left out
                    pairs.add_trained({event.network: event.checkpoint})
            held = workers_wanted is not None and workers_wanted.is_set()
            while pairs.ready and len(pending) < limit and not held:
                job = pairs.ready.popleft()
                name = f"pair {job.model_key} {job.seed_a}-{job.seed_b}"
                pending[named(task, name).remote(context_ref, job)] = job
            writer.flush_if_due()
            if not pending:
                if held:
                    time.sleep(0.2)
                continue
            # wake for the next network to train and for the buffered rows' flush: a long pair in
            # flight must not hold finished ones back for longer than flush.seconds
            wakes = [t for t in (0.5 if training else None, writer.due_in()) if t is not None]
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=min(wakes) if wakes else None)
            for ref in ready:
                job = pending.pop(ref)
                try:
                    rows = ray.get(ref)
                except Exception as error:  # noqa: BLE001 - the worker died more often than retries allow
                    rows = failed_rows(context, job, f"worker failed: {error_text(error)}", trace=error_trace(error))
                writer.add(rows)
                if first_row is None:
                    writer.flush()  # the first result reaches storage at once: a sign of life
                    first_row = time.time() - started
                ok = all(r["status"] == "ok" for r in rows["pairs"])
                ran += 1
                failed += 0 if ok else 1
                note = job.stem
                if not ok:
                    note += f" FAILED: {rows['pairs'][0]['error']}"
                progress.advance(ok=ok, note=note)
    finally:
        writer.flush()
    # stopped (interrupted, or the lease lost), the pairs not reached are the next run's, not left out
    left_out = [] if stop is not None and stop.is_set() else pairs.left_out()
    for stem in left_out:
        say(f"[pairs] left out {stem}: a model of the pair did not train")
    seconds = time.time() - started
    if ran:
        say(f"[pairs] done in {seconds:.0f}s: {ran - failed} ok, {failed} failed")
    return PairStageSummary(config.n_pairs, pairs.done, ran, failed, len(left_out), seconds, first_row)
