"""S3 requests per pair of a tiny sweep on moto's S3 server: the code of a base
revision (a filesystem built per call) against this checkout's (one per bucket and environment).

    python benchmarks/s3_requests.py [--baseline REV] [--seeds N]

One moto server on loopback serves both runs, each in a bucket of its own. Requests are counted from
moto's log (werkzeug writes one line per request: method, path, status); S3 clients built, by
wrapping ``storage.resolve`` in the driver and in every Ray worker. Each run is a process of its own
(its driver and its local 2-CPU Ray's workers import repair_ray from the code measured: ``git
archive REV repair_ray`` for the base, this checkout for the other), running ``tests/helpers.py``'s
``tiny_sweep`` (3 seeds: 3 trials, 3 pairs x 6 methods) on ``s3://``.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
KEY = "benchmarks/s3_requests.py: s3_requests"  # the markers of its section in BENCHMARKS.md (benchmarks/sections.py)

try:
    from .common import median_time, start_moto, table
except ImportError:
    from common import median_time, start_moto, table
# werkzeug's access line: 127.0.0.1 - - [date] "GET /bucket/key?query HTTP/1.1" 200 -
_REQUEST = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) (/[^ ?"]*)[^"]* HTTP/[\d.]+" (\d{3})')
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # werkzeug colours a line by its status


def count_resolves() -> None:
    """Make every ``storage.resolve`` of this process append a line to $S3_REQUESTS_RESOLVES: its pid
    and whether the filesystem it returned is one this process had not seen (a client built). Run in
    the driver and, as Ray's worker_process_setup_hook, in every worker."""
    from repair_ray.io import storage

    resolve, seen = storage.resolve, {}  # seen keeps each filesystem alive, so no id is reused

    def counted(uri):
        filesystem, path = resolve(uri)
        built = id(filesystem) not in seen
        seen[id(filesystem)] = filesystem
        if not storage.is_local(uri):
            with open(os.environ["S3_REQUESTS_RESOLVES"], "a") as out:
                out.write(f"{os.getpid()} {int(built)}\n")
        return filesystem, path

    storage.resolve = counted


def measure_here(bucket: str, seeds: int) -> dict[str, Any]:
    """(In the child process.) The tiny sweep on ``s3://bucket``; its pairs and trials, and where
    the driver and a Ray worker found repair_ray."""
    import ray

    # tests.helpers from this checkout, after the code measured (PYTHONPATH) and before the venv's own
    sys.path.insert(sys.path.index(os.environ["PYTHONPATH"]) + 1, str(REPO))
    import repair_ray
    from repair_ray.sweep.config import parse_config
    from repair_ray.sweep.runner import run_sweep
    from tests.helpers import tiny_sweep

    resolve = repair_ray.io.storage.resolve  # before count_resolves wraps it
    count_resolves()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"worker_process_setup_hook": count_resolves},
    )
    try:

        @ray.remote
        def where() -> str:
            import repair_ray

            return repair_ray.__file__

        config = parse_config(tiny_sweep("requests", f"s3://{bucket}/runs", seeds=seeds))
        started = time.perf_counter()
        result = run_sweep(config, say=lambda m: None)
        seconds = time.perf_counter() - started
        worker = ray.get(where.remote())
    finally:
        ray.shutdown()
    time.sleep(1)  # moto's last lines written
    sweep_lines = len(Path(os.environ["S3_REQUESTS_LOG"]).read_text().splitlines())
    written = repair_ray.io.storage.join(config.root, "sweep.yaml")
    resolve_ms = 1000 * median_time(lambda: resolve(written), 200)[0]  # no request: the client alone
    pairs = result.pairs.ran
    return {
        "trials": result.train.ran,
        "pairs": pairs,
        "seconds": seconds,
        "resolve_ms": resolve_ms,
        "log_lines": sweep_lines,
        "driver_code": repair_ray.__file__,
        "worker_code": worker,
    }


def _shape(method: str, path: str, bucket: str) -> str:
    """A request with the sweep's folder left out and numbers and hashes generalised:
    ``PUT checkpoints/mlp-wN-dN-none-H/seed-N.pt``."""
    within = path.removeprefix(bucket).strip("/")
    if within.startswith("runs/requests"):
        within = within.removeprefix("runs/requests").strip("/") or "(the sweep's folder)"
    return f"{method} " + (re.sub(r"\d+", "N", re.sub(r"[0-9a-f]{8,}", "H", within)) or "(the bucket)")


def _requests(
    log: Path, start: int, end: int, bucket: str
) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """The requests in lines ``start:end`` of moto's log: by method, and by :func:`_shape`."""
    methods: collections.Counter[str] = collections.Counter()
    shapes: collections.Counter[str] = collections.Counter()
    for line in log.read_text().splitlines()[start:end]:
        if found := _REQUEST.search(_COLOUR.sub("", line)):
            method, path = found.group(1), found.group(2).strip("/")
            ours = path.split("/")[0] == bucket  # else pyarrow's probe of the server (HEAD /$extremelyunlikely...)
            methods[f"{method} bucket" if path == bucket else method if ours else f"{method} elsewhere"] += 1
            shapes[_shape(method, path, bucket) if ours else f"{method} /{path}"] += 1
    return methods, shapes


def run_version(label: str, code: Path, bucket: str, seeds: int, log: Path) -> dict[str, Any]:
    """One sweep in a process that imports repair_ray from ``code``; its requests and the S3 clients it built."""
    import boto3

    boto3.client("s3").create_bucket(Bucket=bucket)
    lines_before = len(log.read_text().splitlines())
    resolves = log.with_name(f"resolves-{bucket}.txt")
    resolves.touch()
    env = {**os.environ, "PYTHONPATH": str(code), "S3_REQUESTS_RESOLVES": str(resolves), "S3_REQUESTS_LOG": str(log)}
    out = subprocess.run(
        [sys.executable, __file__, "--measure", bucket, "--seeds", str(seeds)],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{label}: the sweep failed:\n{out.stderr[-4000:]}")
    run = json.loads(out.stdout.strip().splitlines()[-1])
    for where in ("driver_code", "worker_code"):
        if not run[where].startswith(str(code)):
            raise RuntimeError(f"{label}: repair_ray came from {run[where]}, not {code}")
    counts, shapes = _requests(log, lines_before, run["log_lines"], bucket)
    total = sum(counts.values())
    calls = [line.split() for line in resolves.read_text().splitlines()]
    built = sum(int(new) for _, new in calls)
    return {
        "code": label,
        "trials": run["trials"],
        "pairs": run["pairs"],
        "requests": total,
        "requests_per_pair": total / run["pairs"],
        "requests_per_trial": total / run["trials"],
        "head_bucket": counts.get("HEAD bucket", 0),
        "resolves_per_pair": len(calls) / run["pairs"],
        "filesystems_per_pair": built / run["pairs"],
        "processes": len({pid for pid, _ in calls}),
        "by_method": dict(sorted(counts.items())),
        "by_shape": dict(shapes.most_common()),
        "seconds": run["seconds"],
        "resolve_ms": run["resolve_ms"],
    }


def measure(baseline: str, seeds: int) -> list[dict[str, Any]]:
    """The sweep once with ``baseline``'s repair_ray and once with this checkout's, on one moto server."""
    with tempfile.TemporaryDirectory() as work:
        old = Path(work, "baseline")
        old.mkdir()
        archive = subprocess.run(["git", "archive", baseline, "repair_ray"], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        log = Path(work, "moto.log")
        server, port = start_moto(log)
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true",
                "RAY_USAGE_STATS_ENABLED": "0",
            }
        )
        try:
            return [
                run_version(f"{baseline} (a filesystem per call)", old, "bench-old", seeds, log),
                run_version("this checkout (one per bucket)", REPO, "bench-new", seeds, log),
            ]
        finally:
            server.terminate()
            server.wait(timeout=10)


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    shown = [{**r, "methods": ", ".join(f"{k} {v}" for k, v in r["by_method"].items())} for r in rows]
    columns = [
        ("code", "code"),
        ("trials", "trials"),
        ("pairs", "pairs"),
        ("requests", "S3 requests"),
        ("requests_per_pair", "requests / pair"),
        ("requests_per_trial", "requests / trial"),
        ("head_bucket", "HeadBucket"),
        ("resolves_per_pair", "resolve() / pair"),
        ("filesystems_per_pair", "S3 clients built / pair"),
        ("processes", "processes"),
        ("resolve_ms", "resolve() ms"),
        ("methods", "requests by method"),
    ]
    shapes = [{"request": k, "count": v} for k, v in list(rows[-1]["by_shape"].items())[:12]]
    return (
        f"Command: `{command}`\n\n"
        + table(shown, columns)
        + "\n\nThe most frequent requests with this checkout's code (paths under the sweep's folder; "
        "N a number, H a hash):\n\n"
        + table(shapes, [("request", "request"), ("count", "count")])
        + "\n\nThe whole sweep's requests (train stage, pair stage, tables, lease) divided by its pairs and by "
        "its trials (a pair row covers 6 methods); requests from moto's log, one line each. resolve() / pair: "
        "the storage.resolve calls on s3:// of the driver and the workers; S3 clients built: the distinct "
        "filesystems they returned. resolve() ms: the median of 200 storage.resolve of one object's URI in "
        "the driver after the sweep, which sends no request: the cost of building a client. The one "
        "HeadBucket is create_dir's check of the bucket; pyarrow "
        "resolves a bucket's region (another HeadBucket) only without an endpoint in AWS_ENDPOINT_URL, and then "
        "once per bucket and process in both versions (its resolver caches regions). A new client per call "
        "cost no extra request here; it costs a new connection per request (on AWS a TLS handshake; moto's "
        "server closes every connection after its answer, so reuse cannot show here) and a new credentials "
        "chain (an instance role's credentials fetched again). The writes' POSTs are multipart uploads: "
        "CreateMultipartUpload, UploadPart, CompleteMultipartUpload for each small file, one PutObject now."
        f"\n\n_(run {datetime.datetime.now():%Y-%m-%d %H:%M})_"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="main", help="the revision measured as the old code (default main)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--measure", metavar="BUCKET", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--write", action="store_true", help="put the section into BENCHMARKS.md")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_here(args.measure, args.seeds)))
        return
    rows = measure(args.baseline, args.seeds)
    command = "python benchmarks/s3_requests.py" + (f" --baseline {args.baseline}" if args.baseline != "main" else "")
    text = markdown(rows, command)
    print(text)
    if args.write:  # its own section of BENCHMARKS.md replaced, every other byte kept
        sys.path.insert(0, str(REPO))
        from benchmarks.sections import put

        target = Path(REPO, "BENCHMARKS.md")
        target.write_text(put(target.read_text(), KEY, text))
    Path(REPO, ".bench").mkdir(exist_ok=True)
    Path(REPO, ".bench", "s3_requests.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
