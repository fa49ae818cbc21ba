"""One writer per sweep: a lease object, ``<sweep>/lease.json``, that ``run`` holds while it lives.

``run`` takes the lease before it writes anything, a heartbeat thread renews it every quarter of
its time to live, and the run deletes it when it ends, however it ends. A second ``run`` of the
same sweep meets a live lease and stops with a message naming the holder; a lease whose heartbeat
is older than its time to live (its run was killed) is taken over with a warning, and so is one
whose process is gone on this very host. ``submit`` asks the same question before it sends a job
(:func:`refuse_if_held`), so a live run refuses a second job at once. Readers (``status``,
``report``) never need it.

Every change of the lease is a compare-and-swap, so two runs racing for it cannot both win:

- local disks: under an exclusive ``flock`` of ``.lease.lock`` beside it, and a new lease appears by
  ``link(2)`` of a complete temporary file (fails if one exists), a renewal by ``rename(2)``;
- S3: conditional writes, ``PutObject`` with ``If-None-Match: *`` to create, ``If-Match: <ETag>`` to
  renew or take over, ``DeleteObject`` with ``If-Match`` to release (through boto3);
- Cloud Storage (``gs://``): generation preconditions, ``ifGenerationMatch=0`` to create, ``=<generation
  read>`` to renew, take over or release (:mod:`.lease_gcs`, through google-cloud-storage: the ``gcs``
  extra; without it a run of a gs:// sweep stops naming the extra, while readers read the lease through
  pyarrow).

Staleness compares the holder's heartbeat (UTC) with this machine's clock: clocks more than a few
seconds apart need a longer ``REPAIR_RAY_LEASE_TTL``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from ..io import storage
from . import lease_gcs
from .layout import LEASE_NAME as LEASE_NAME  # the lease file's name, importable from here too
from .layout import lease_uri
from .lease_holder import Holder, process_space, utc_iso

TTL_ENV = "REPAIR_RAY_LEASE_TTL"
DEFAULT_TTL = 120.0
HEARTBEATS_PER_TTL = 4


class LeaseHeld(RuntimeError):
    """Another run holds the sweep's lease; the message names it and what to do."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over (or could not be renewed); the run stopped."""


def default_ttl() -> float:
    """Seconds a lease lives without a heartbeat: ``$REPAIR_RAY_LEASE_TTL`` or 120."""
    value = os.environ.get(TTL_ENV)
    if not value:
        return DEFAULT_TTL
    try:
        ttl = float(value)
    except ValueError:
        raise ValueError(f"{TTL_ENV} must be a number of seconds, got {value!r}") from None
    if ttl <= 0:
        raise ValueError(f"{TTL_ENV} must be positive, got {value!r}")
    return ttl


def read_holder(root: str) -> Holder | None:
    """The holder of the sweep's lease, or None when nobody holds it (or the lease is unreadable)."""
    uri = lease_uri(root)
    found = _plain_read(uri) if uri.startswith("gs://") and not lease_gcs.installed() else _store(uri, root).read()
    if found is None:
        return None
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return Holder.from_bytes(found[0])
    return None


def held_message(root: str, holder: Holder, now: float) -> str:
    """What a command that would write the sweep at ``root`` says when ``holder``'s run is alive."""
    return (
        f"sweep {root} is being run by another `repair-ray run`: {holder.describe(now)}; its lease "
        f"expires at {utc_iso(holder.expires_at)} unless renewed.\n"
        "Two runs of one sweep would do the same work twice and overwrite each other's sweep.yaml and "
        f"current_keys.json, so this one stops. Wait for it to finish (`repair-ray status {root}` shows "
        "its progress), stop it (Ctrl+C, or `repair-ray stop JOB` for a Ray Job), or, if it is dead, wait "
        "until its lease expires or run again with --take-over."
    )


def refuse_if_held(root: str) -> None:
    """Raise :class:`LeaseHeld`, with the message a second ``run`` gives, when a live run holds the
    lease of the sweep at ``root``; takes nothing (``submit`` asks before its job's run takes it)."""
    root = storage.normalize(root)
    holder = read_holder(root)
    now = time.time()
    if holder is not None and holder.alive(now):
        raise LeaseHeld(held_message(root, holder, now))


# --------------------------------------------------------------------------------------------
# Compare-and-swap stores: create / replace / delete succeed only against the version last seen


class _Store(Protocol):
    def read(self) -> tuple[bytes, Any] | None:
        """``(content, version)`` of the lease, None when there is none."""

    def create(self, data: bytes) -> Any | None:
        """Write a new lease; its version, or None when a lease exists already."""

    def replace(self, data: bytes, version: Any) -> Any | None:
        """Overwrite the lease if it is still at ``version``; the new version, or None."""

    def delete(self, version: Any) -> bool:
        """Delete the lease if it is still at ``version``."""


class _LocalStore:
    """A file; every change under an exclusive ``flock`` of ``.lease.lock`` in the same folder."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock_path = os.path.join(os.path.dirname(path), ".lease.lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _temp(self, data: bytes) -> str:
        temp = f"{self.path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        with open(temp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        return temp

    def read(self) -> tuple[bytes, Any] | None:
        try:
            with open(self.path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            return None
        return data, data

    def create(self, data: bytes) -> Any | None:
        with self._locked():
            temp = self._temp(data)
            try:
                os.link(temp, self.path)  # atomic, and fails if a lease exists: no half-written lease is seen
            except FileExistsError:
                return None
            finally:
                os.remove(temp)
        return data

    def replace(self, data: bytes, version: Any) -> Any | None:
        with self._locked():
            current = self.read()
            if current is None or current[1] != version:
                return None
            os.replace(self._temp(data), self.path)
        return data

    def delete(self, version: Any) -> bool:
        with self._locked():
            current = self.read()
            if current is None or current[1] != version:
                return False
            os.remove(self.path)
        return True


class _S3Store:
    """An S3 object, changed with conditional requests (``If-None-Match: *``, ``If-Match: <ETag>``)."""

    _LOST = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404", "412", "409"}

    def __init__(self, uri: str) -> None:
        import boto3  # endpoint, region and credentials from the standard AWS environment

        parts = uri.split("://", 1)[1]
        self.bucket, self.key = parts.split("/", 1)
        self.client = boto3.client("s3")

    def _code(self, error: Exception) -> str:
        response = getattr(error, "response", None) or {}
        return str(response.get("Error", {}).get("Code", ""))

    def read(self) -> tuple[bytes, Any] | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.client.exceptions.ClientError as error:
            if self._code(error) in ("NoSuchKey", "404"):
                return None
            raise
        return response["Body"].read(), response["ETag"]

    def _put(self, data: bytes, **condition: str) -> Any | None:
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, **condition)["ETag"]
        except self.client.exceptions.ClientError as error:
            if self._code(error) in self._LOST:
                return None
            raise

    def create(self, data: bytes) -> Any | None:
        return self._put(data, IfNoneMatch="*")

    def replace(self, data: bytes, version: Any) -> Any | None:
        return self._put(data, IfMatch=version)

    def delete(self, version: Any) -> bool:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=version)
        except self.client.exceptions.ClientError as error:
            if self._code(error) in self._LOST:
                return False
            if self._code(error) != "NotImplemented":
                raise
            # an S3-compatible store without conditional deletes: compare, then delete
            current = self.read()
            if current is None or current[1] != version:
                return False
            self.client.delete_object(Bucket=self.bucket, Key=self.key)
        return True


def _plain_read(uri: str) -> tuple[bytes, Any] | None:
    """The lease read through pyarrow (what readers do on gs:// without the ``gcs`` extra)."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        return None
    return data, data


def _store(uri: str, root: str) -> _Store:
    if storage.is_local(uri):
        return _LocalStore(storage.resolve(uri)[1])
    if uri.startswith("s3://"):
        return _S3Store(uri)
    if uri.startswith("gs://"):
        return lease_gcs.GCSStore(uri, root)
    raise ValueError(f"no lease on {storage.redact(uri)}: use a local path, s3:// or gs://")


def check_supported(root: str) -> None:
    """Raise :class:`~repair_ray.errors.MissingExtraError` when this installation cannot take the lease of
    the sweep at ``root`` (gs:// without the ``gcs`` extra); commands ask before they reach storage."""
    root = storage.normalize(root)
    if lease_uri(root).startswith("gs://"):
        lease_gcs.require(root)


# --------------------------------------------------------------------------------------------


class Lease:
    """The lease of the sweep at ``root``; use as a context manager around everything a run writes.

    ``take_over`` takes even a live lease (its holder is known to be dead). ``on_lost`` is called
    (from the heartbeat thread) when the lease is lost; then the thread that took the lease is
    interrupted if it is the main thread (KeyboardInterrupt), and leaving the ``with`` raises
    :class:`LeaseLost`.
    """

    def __init__(
        self,
        root: str,
        *,
        ttl: float | None = None,
        take_over: bool = False,
        say: Callable[[str], None] = print,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.root = storage.normalize(root)
        self.uri = lease_uri(self.root)
        self.ttl = default_ttl() if ttl is None else ttl
        self.take_over = take_over
        self.say = say
        self.on_lost = on_lost
        self.lost = threading.Event()
        self.lost_reason = ""
        self.holder: Holder | None = None
        self._store = _store(self.uri, self.root)
        self._version: Any = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._owner_thread = threading.get_ident()

    def _record(self, now: float) -> Holder:
        assert self.holder is not None
        return dataclasses.replace(self.holder, heartbeat=now, ttl=self.ttl)

    def acquire(self) -> None:
        """Take the lease, or raise :class:`LeaseHeld` naming the live holder."""
        now = time.time()
        self.holder = Holder(
            socket.gethostname(), os.getpid(), secrets.token_hex(6), now, now, self.ttl, process_space()
        )
        for _ in range(5):  # each pass loses only to a writer that changed the lease in between
            found = self._store.read()
            if found is None:
                self._version = self._store.create(self.holder.to_bytes())
                if self._version is not None:
                    return
                continue
            data, version = found
            if self._is_mine(data):  # our create (or take-over) landed, its answer lost and retried
                self._version = version
                return
            now = time.time()
            try:
                other: Holder | None = Holder.from_bytes(data)
            except (ValueError, KeyError, TypeError):
                other = None
            if other is not None and not self.take_over and other.alive(now):
                raise LeaseHeld(held_message(self.root, other, now))
            why = (
                "unreadable"
                if other is None
                else "taken over with --take-over"
                if self.take_over
                else "stale: its heartbeat is older than its ttl"
                if other.stale(now)
                else "left by a process that no longer runs on this host"
            )
            who = "" if other is None else f" of {other.describe(now)}"
            self.holder = self._record(now)
            self._version = self._store.replace(self.holder.to_bytes(), version)
            if self._version is not None:
                self.say(f"warning: took over the lease of {self.root}{who} ({why})")
                return
        raise LeaseHeld(f"could not take the lease of {self.root}: other runs keep changing it; try again")

    def _heartbeat(self) -> None:
        last_renewed = time.time()
        interval = max(self.ttl / HEARTBEATS_PER_TTL, 0.05)
        while not self._stopping.wait(interval):
            now = time.time()
            try:
                version = self._store.replace(self._record(now).to_bytes(), self._version)
                if version is None:
                    found = self._store.read()  # our own renewal may have landed with its answer lost
                    mine = found if found is not None and self._is_mine(found[0]) else None
                    if mine is None:
                        other = None if found is None else Holder.from_bytes(found[0])
                        taken = "deleted" if other is None else f"taken by {other.describe(now)}"
                        self._lose(f"the lease of {self.root} was {taken}")
                        return
                    version = mine[1]
            except Exception as error:  # noqa: BLE001 - a network blip: retry until the ttl runs out
                if now - last_renewed > self.ttl:
                    self._lose(f"could not renew the lease of {self.root} for {now - last_renewed:.0f}s: {error}")
                    return
                continue
            self._version, last_renewed = version, now

    def _is_mine(self, data: bytes) -> bool:
        """Whether the lease record ``data`` is this run's."""
        try:
            return self.holder is not None and Holder.from_bytes(data).run_id == self.holder.run_id
        except (ValueError, KeyError, TypeError):  # unreadable: nobody's
            return False

    def _lose(self, reason: str) -> None:
        self.lost_reason = (
            f"{reason}; this run stopped (another run now writes the sweep). What this run finished is on "
            "storage; run again when the other run has ended to resume."
        )
        self.lost.set()
        if self.on_lost is not None:
            self.on_lost()
        if self._owner_thread == threading.main_thread().ident and not self._stopping.is_set():
            signal.pthread_kill(self._owner_thread, signal.SIGINT)  # wakes the main thread even in a blocking wait

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still this run's."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost.is_set() or self._version is None:
            return
        if not self._store.delete(self._version):
            self.say(f"warning: the lease of {self.root} was no longer this run's; left it as it is")
        self._version = None

    def __enter__(self) -> Lease:
        self._owner_thread = threading.get_ident()
        self.acquire()
        self._thread = threading.Thread(target=self._heartbeat, name="sweep-lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.release()
        if self.lost.is_set():
            raise LeaseLost(self.lost_reason) from error
