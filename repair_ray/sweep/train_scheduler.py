"""Which trials of the train stage can start: a trial waits for the networks it needs.

A child of a branch waits for its trunk, an IMP round for the network it prunes; it starts when
that ends well. When that fails, the trial's seeds get ``failed`` rows naming it (and what waits
for them fails in turn). Pure bookkeeping in the driver: no Ray, no torch.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Literal

from .messages import Trial
from .rows import write_failed_rows

# what a trial provides or needs: a trunk's snapshots or a trained network, of (model key, seed)
Need = tuple[Literal["trunk", "model"], str, int]


class TrialScheduler:
    """The trials ready to start (``ready``, trunks first), released as the ones they wait for end.

    ``seed_done(trial, seed, error)`` is called once for every seed of every trial as it ends
    (``error`` None: it trained).
    """

    def __init__(self, trials: list[Trial], seed_done: Callable[[Trial, int, str | None], None]) -> None:
        self.seed_done = seed_done
        self.waiting: dict[Need, list[Trial]] = {}
        self.missing: dict[int, int] = {}  # id(trial) -> how many of its needs have not ended yet
        pending = {need for trial in trials for need in provides(trial)}
        ready = []
        for trial in trials:
            needs = [n for n in needs_of(trial) if n in pending]  # a network trained before is there already
            for need in needs:
                self.waiting.setdefault(need, []).append(trial)
            self.missing[id(trial)] = len(needs)
            if not needs:
                ready.append(trial)
        self.ready: collections.deque[Trial] = collections.deque(sorted(ready, key=lambda t: not t.is_trunk))

    def finished(self, trial: Trial, errors: dict[int, str | None]) -> None:
        """``trial`` ended: each seed's error (None: trained); what waits for it goes on."""
        for need, seed in zip(provides(trial), trial.seeds, strict=True):
            error = errors.get(seed, "the trial ended without its outcome")
            self.seed_done(trial, seed, error)
            if error is not None:
                what = "its trunk (seed" if need[0] == "trunk" else f"the network it prunes ({need[1]} seed"
                error = f"{what} {seed}) failed: {error}"
            self._resolve(need, error)

    def failed(self, trial: Trial, error: str, trace: str | None = None) -> None:
        """``trial`` raised more often than retries allow: its seeds fail with the reason."""
        if not trial.is_trunk:  # a trunk has no row; its children fail naming it
            write_failed_rows(trial, error, trace=trace)
        self.finished(trial, dict.fromkeys(trial.seeds, error))

    def _resolve(self, need: Need, error: str | None) -> None:
        for trial in self.waiting.pop(need, []):
            if id(trial) not in self.missing:
                continue  # failed already, through another of its needs
            if error is not None:
                del self.missing[id(trial)]
                write_failed_rows(trial, error)
                self.finished(trial, dict.fromkeys(trial.seeds, error))
                continue
            self.missing[id(trial)] -= 1
            if self.missing[id(trial)] == 0:
                del self.missing[id(trial)]
                self.ready.appendleft(trial) if trial.is_trunk else self.ready.append(trial)


def provides(trial: Trial) -> list[Need]:
    """What the trial's end makes available: a trunk's snapshots, or trained networks."""
    kind: Literal["trunk", "model"] = "trunk" if trial.is_trunk else "model"
    return [(kind, trial.model_key, seed) for seed in trial.seeds]


def needs_of(trial: Trial) -> list[Need]:
    """What the trial waits for: its trunk, and the network whose weights its mask prunes."""
    needs: list[Need] = []
    if trial.trunk is not None:
        needs.append(("trunk", trial.trunk.model_key, trial.trunk.seed))
    if trial.prune_key is not None:
        needs.append(("model", trial.prune_key.model_key, trial.prune_key.seed))
    return needs
