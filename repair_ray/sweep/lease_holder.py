"""Who holds a sweep's lease (:class:`Holder`), as ``lease.json`` records it, and whether that run
still looks alive from here."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path


def utc_iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def process_space() -> str:
    """This process's kernel boot and PID namespace, ``<boot id>:<pid namespace inode>`` (Linux);
    "" where the system does not say (then a lease is judged by host name and heartbeat)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease and how fresh it is (times in seconds since the epoch; stored as UTC)."""

    host: str
    pid: int
    run_id: str
    started_at: float
    heartbeat: float
    ttl: float
    # the kernel boot and PID namespace the holder ran in (see :func:`process_space`): "" when unknown
    space: str = ""

    @property
    def expires_at(self) -> float:
        return self.heartbeat + self.ttl

    def stale(self, now: float) -> bool:
        return now > self.expires_at

    def alive(self, now: float) -> bool:
        """Whether its run looks alive: its heartbeat is fresh and, on this host, its process runs."""
        return not (self.stale(now) or self.dead_here())

    def dead_here(self) -> bool:
        """Whether the holder ran on this host, in this PID namespace, and its process is gone
        (killed, crashed). Two containers may share a host name but not their PIDs: a holder of
        another namespace (or boot) is judged by its heartbeat alone. A lease that does not say
        its namespace (written before it was recorded) is judged by the host name, as then."""
        if self.host != socket.gethostname():
            return False
        here = process_space()
        if self.space and here and self.space != here:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # someone else's process: alive
            return False
        return False

    def to_bytes(self) -> bytes:
        data = {**asdict(self), "expires_at": self.expires_at}
        for key in ("started_at", "heartbeat", "expires_at"):
            data[key] = utc_iso(data[key])
        data["ttl_s"] = data.pop("ttl")
        if not data["space"]:
            del data["space"]
        return json.dumps(data, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Holder:
        d = json.loads(data)
        return cls(
            host=str(d["host"]),
            pid=int(d["pid"]),
            run_id=str(d["run_id"]),
            started_at=_seconds(d["started_at"]),
            heartbeat=_seconds(d["heartbeat"]),
            ttl=float(d["ttl_s"]),
            space=str(d.get("space", "")),
        )

    def describe(self, now: float) -> str:
        return (
            f"host {self.host}, pid {self.pid} (run {self.run_id}), since {utc_iso(self.started_at)}, "
            f"last heartbeat {utc_iso(self.heartbeat)} ({now - self.heartbeat:.0f}s ago)"
        )
