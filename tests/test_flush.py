"""`flush`, as docs/resuming.md promises it: the pair stage writes finished pairs every
`flush.pairs` pairs or `flush.seconds` seconds, whichever comes first, so a crash loses at most
the work in flight plus one flush interval. Asserted on the part files and their rows."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from repair_ray.io.tables import table_files
from repair_ray.sweep.config import SweepConfig, parse_config
from repair_ray.sweep.pair_stage import make_remote_pair_task, pair_task, run_pair_stage
from repair_ray.sweep.train_stage import run_train_stage

from .helpers import tiny_sweep

SEEDS = 4  # 6 pairs


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory) -> tuple[dict, Path]:
    """Networks trained once for the module: a sweep folder with checkpoints and models rows, no pairs."""
    data = tiny_sweep(
        "flush",
        str(tmp_path_factory.mktemp("trained")),
        seeds=SEEDS,
        align=["none", "weight"],
        correction=["none"],
        alphas=3,
        train={"epochs": 1, "batch_size": 64, "lr": 0.05},
    )
    config = parse_config(data)
    assert run_train_stage(config, say=lambda _: None).failed == 0
    return data, Path(config.root)


def copy_of(trained: tuple[dict, Path], storage: Path, **overrides) -> SweepConfig:
    data, root = trained
    shutil.copytree(root, storage / root.name)
    return parse_config({**data, "storage": str(storage), **overrides})


def pairs_per_part(root: str) -> list[list[tuple[int, int]]]:
    """The pairs of each part file, in the order the files were written; the curves and layers
    files of each flush (the same stem) hold the same pairs as its pairs file."""
    parts = []
    for file in table_files(root, "pairs"):
        held = {(r["seed_a"], r["seed_b"]) for r in pq.read_table(file.path, columns=["seed_a", "seed_b"]).to_pylist()}
        for table in ("curves", "layers"):
            beside = Path(root, "tables", table, file.name)
            assert {(r["seed_a"], r["seed_b"]) for r in pq.read_table(beside).to_pylist()} == held, beside
        parts.append(sorted(held))
    return parts


@pytest.mark.parametrize(
    ("flush", "sizes"),
    [
        # flush.seconds 0: every pair is due at once
        ({"pairs": 1000, "seconds": 0}, [1, 1, 1, 1, 1, 1]),
        # neither bound is reached: the first pair at once (a sign of life), the rest when the stage ends
        ({"pairs": 1000, "seconds": 3600}, [1, 5]),
        # flush.pairs 2: files of two pairs, the rest at the end
        ({"pairs": 2, "seconds": 3600}, [1, 2, 2, 1]),
    ],
    ids=["seconds-0", "neither-bound", "pairs-2"],
)
def test_part_files_hold_what_flush_pairs_and_flush_seconds_allow(trained, tmp_path, flush, sizes):
    config = copy_of(trained, tmp_path, flush=flush)
    summary = run_pair_stage(config, say=lambda _: None)
    assert summary.ran == 6 and summary.failed == 0
    parts = pairs_per_part(config.root)
    assert [len(part) for part in parts] == sizes
    every_pair = [(a, b) for a in range(SEEDS) for b in range(a + 1, SEEDS)]
    assert sorted(pair for part in parts for pair in part) == every_pair  # each once


def _wait_for_rows_then_analyse(context, job, root: str, others: list[tuple[int, int]], report: str, patience: float):
    """The pair task, after waiting (at most ``patience`` s) until the rows of the pairs ``others``
    are on storage; writes to ``report`` whether they came while this task still ran."""
    deadline = time.monotonic() + patience
    found: set[tuple[int, int]] = set()
    while time.monotonic() < deadline and not set(others) <= found:
        for file in table_files(root, "pairs"):
            found |= {(r["seed_a"], r["seed_b"]) for r in pq.read_table(file.path).to_pylist()}
        time.sleep(0.1)
    Path(report).write_text(json.dumps(sorted(found)))
    return pair_task(context, job)


def test_a_finished_pair_is_written_after_flush_seconds_while_another_pair_still_runs(trained, tmp_path):
    """Pair 0-2 waits, inside its task, for the rows of the other two pairs to reach storage. The
    first pair to finish is written at once; the second must follow after flush.seconds (0.5) even
    though nothing else finishes meanwhile. Were it held until the next pair arrives, a crash while
    a long pair runs would lose it, more than one flush interval."""
    config = copy_of(trained, tmp_path, seeds=3, flush={"pairs": 1000, "seconds": 0.5})
    report = tmp_path / "seen.json"
    root, others = config.root, [(0, 1), (1, 2)]

    def pair(context, job):
        if (job.seed_a, job.seed_b) != (0, 2):
            return pair_task(context, job)
        return _wait_for_rows_then_analyse(context, job, root, others, str(report), patience=60)

    # the production factory's remote options (reused workers), with the one pair made to wait
    summary = run_pair_stage(config, say=lambda _: None, remote_task=make_remote_pair_task(0.5, 0, 0, task=pair))
    assert summary.ran == 3 and summary.failed == 0
    assert [tuple(p) for p in json.loads(report.read_text())] == others, "the second pair waited for the third"
    parts = pairs_per_part(root)
    assert sorted(parts[:2]) == [[(0, 1)], [(1, 2)]] and parts[2] == [(0, 2)]  # a file each, as they finished
