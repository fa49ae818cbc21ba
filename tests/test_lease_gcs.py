"""The sweep's lease on gs://: generation preconditions make every change a compare-and-swap.

Against a real Cloud Storage JSON API on loopback (fake-gcs-server, the ``gcs_bucket`` fixture: its
tests are integration tests). fake-gcs-server 1.54 honours ``ifGenerationMatch`` on uploads (create,
renew, take over) but not on deletes, so a release that meets another run's lease is not tested here.
Without the ``gcs`` extra (google-cloud-storage made unimportable), a run of a gs:// sweep stops with
exit 2 naming the extra, before it reaches storage: those tests need no emulator.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from repair_ray.cli import main
from repair_ray.errors import MissingExtraError
from repair_ray.io import storage
from repair_ray.sweep.lease import LEASE_NAME, Holder, Lease, LeaseHeld, LeaseLost, read_holder
from repair_ray.sweep.lease_gcs import GCSStore

from .helpers import tiny_sweep, write_yaml


def quiet(_: str) -> None:
    pass


def race(count: int, attempt) -> list:
    """``attempt(i)`` for i in 0..count-1, each in its own thread, all let go at once; their results
    (an exception raised is the result)."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def one(i: int) -> None:
        barrier.wait()
        try:
            results[i] = attempt(i)
        except Exception as error:  # noqa: BLE001 - the loser's LeaseHeld is a result here
            results[i] = error

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def stale_lease(uri: str, root: str, age: float = 100.0, ttl: float = 30.0) -> int:
    """A lease left by a run killed on another machine ``age`` seconds ago; its generation."""
    now = time.time()
    holder = Holder("elsewhere", 1, "dead0run", now - age - 60, now - age, ttl)
    generation = GCSStore(uri, root).create(holder.to_bytes())
    assert generation is not None
    return generation


def test_gcs_conditional_create_race_between_clients_exactly_one_wins(gcs_bucket):
    root = storage.join(gcs_bucket, "race-create")
    uri = storage.join(root, LEASE_NAME)
    stores = [GCSStore(uri, root) for _ in range(8)]  # a client each, as separate machines would have
    generations = race(len(stores), lambda i: stores[i].create(f"writer {i}".encode()))
    winners = [i for i, g in enumerate(generations) if g is not None]
    assert len(winners) == 1, generations
    data, generation = stores[0].read()
    assert data == f"writer {winners[0]}".encode() and generation == generations[winners[0]]


def test_gcs_two_runs_racing_for_one_lease_exactly_one_takes_it(gcs_bucket):
    root = storage.join(gcs_bucket, "race-runs")
    leases = [Lease(root, ttl=30, say=quiet) for _ in range(4)]
    results = race(len(leases), lambda i: leases[i].acquire())
    winners = [i for i, r in enumerate(results) if not isinstance(r, Exception)]
    assert len(winners) == 1, results
    assert all(isinstance(r, LeaseHeld) for i, r in enumerate(results) if i not in winners), results
    assert read_holder(root).run_id == leases[winners[0]].holder.run_id
    leases[winners[0]].release()
    assert read_holder(root) is None


def test_gcs_renewal_with_a_stale_generation_fails(gcs_bucket):
    root = storage.join(gcs_bucket, "renew")
    uri = storage.join(root, LEASE_NAME)
    store = GCSStore(uri, root)
    first = store.create(b"mine")
    assert store.create(b"theirs") is None  # a lease exists: creating one again is refused
    second = store.replace(b"mine, renewed", first)
    assert second is not None and second != first
    assert store.replace(b"mine, renewed from an old read", first) is None  # stale generation: lost
    assert store.read() == (b"mine, renewed", second)


def test_gcs_heartbeat_of_a_run_whose_lease_was_taken_over_stops_it(gcs_bucket):
    root = storage.join(gcs_bucket, "stolen")
    with pytest.raises(LeaseLost, match="was taken by host"), Lease(root, ttl=0.5, say=quiet):
        Lease(root, ttl=30, take_over=True, say=quiet).acquire()
        time.sleep(20)  # the heartbeat's renewal fails within a quarter of a second and interrupts this
    assert read_holder(root).ttl == 30  # the taker's lease stays


def test_gcs_a_live_lease_refuses_a_second_run_and_is_gone_when_its_run_ends(gcs_bucket):
    root = storage.join(gcs_bucket, "live")
    with Lease(root, ttl=30, say=quiet), pytest.raises(LeaseHeld, match=f"host {socket.gethostname()}"):
        Lease(root, ttl=30, say=quiet).acquire()
    assert read_holder(root) is None


def test_gcs_a_stale_lease_is_taken_over_with_a_warning(gcs_bucket):
    root = storage.join(gcs_bucket, "stale")
    stale_lease(storage.join(root, LEASE_NAME), root)
    said: list[str] = []
    with Lease(root, ttl=30, say=said.append) as lease:
        assert read_holder(root).run_id == lease.holder.run_id
    assert len(said) == 1 and "stale" in said[0] and "host elsewhere" in said[0]
    assert read_holder(root) is None


def test_gcs_take_over_race_of_a_stale_lease_exactly_one_wins(gcs_bucket):
    root = storage.join(gcs_bucket, "race-take")
    uri = storage.join(root, LEASE_NAME)
    stale = stale_lease(uri, root)
    stores = [GCSStore(uri, root) for _ in range(6)]
    generations = race(len(stores), lambda i: stores[i].replace(f"taker {i}".encode(), stale))
    winners = [i for i, g in enumerate(generations) if g is not None]
    assert len(winners) == 1, generations
    assert stores[0].read() == (f"taker {winners[0]}".encode(), generations[winners[0]])


# --------------------------------------------------------------------------------------------
# Without the gcs extra


@pytest.fixture
def without_gcs_extra(monkeypatch):
    """google-cloud-storage made unimportable in this process (``import`` raises ImportError), as
    where the extra is not installed."""
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)


def test_without_the_extra_a_gs_lease_names_the_extra(without_gcs_extra):
    with pytest.raises(MissingExtraError, match=r"pip install 'repair-ray\[gcs\]'"):
        Lease("gs://repair-ray-test/sweep", say=quiet)


def test_without_the_extra_run_of_a_gs_sweep_exits_2_before_reaching_storage(without_gcs_extra, tmp_path):
    # the bucket does not exist and nothing answers for it: reaching storage would be exit 3
    config = write_yaml(tmp_path / "sweep.yaml", tiny_sweep("gcs-sweep", "gs://repair-ray-no-such-bucket/runs"))
    result = CliRunner().invoke(main, ["run", config], env={"RAY_ADDRESS": None})
    assert result.exit_code == 2, result.output
    assert "pip install 'repair-ray[gcs]'" in result.stderr and "gs://repair-ray-no-such-bucket/runs" in result.stderr
    assert "Traceback" not in result.output
