"""Progress lines for long stages: done/total, failures, elapsed time and an ETA."""

from __future__ import annotations

import time
from collections.abc import Callable


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts finished items of a stage and prints one line per item."""

    def __init__(self, stage: str, total: int, say: Callable[[str], None], *, unit: str) -> None:
        self.stage, self.total, self.say, self.unit = stage, total, say, unit
        self.done = self.failed = 0
        self.started = time.monotonic()

    def advance(self, *, ok: bool, note: str = "") -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.done * (self.total - self.done)
        failed = f", {self.failed} failed" if self.failed else ""
        self.say(
            f"[{self.stage}] {self.done}/{self.total} {self.unit} done{failed} | "
            f"elapsed {_clock(elapsed)} | ETA {_clock(eta)}" + (f" | {note}" if note else "")
        )
