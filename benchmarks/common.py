"""Shared helpers of the benchmarks: medians, the machine's description, Markdown tables."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    """Median wall time of ``repeats`` calls of ``fn`` (and all the times)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


def machine() -> str:
    """One line: CPU model, cores, memory, torch and the accelerator, if any."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        names = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    except OSError:
        pass
    try:
        mem = int(subprocess.run(["free", "-g"], capture_output=True, text=True).stdout.split()[7])
        memory = f", {mem} GiB"
    except Exception:  # noqa: BLE001 - only a description
        memory = ""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores{memory}, {gpu}; Python {platform.python_version()}, torch {torch.__version__}"
    )


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with (key, header) ``columns``; floats get 3 significant digits."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def start_moto(log: Path) -> tuple[subprocess.Popen, int]:
    """moto's S3 server on a port the OS picks (``-p 0``): (its process, the port it says it listens on);
    its log in ``log``, one line per request."""
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-u", "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"], stdout=out, stderr=out
        )
    deadline = time.time() + 60
    while not (found := re.search(r"Running on http://127\.0\.0\.1:(\d+)", log.read_text())):
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            raise RuntimeError(f"moto's server did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return server, int(found.group(1))
