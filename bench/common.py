"""Helpers shared by the benchmarks: bounded data generation, child RSS, medians."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

import blake3

BLOCK = 64 * 1024 * 1024


def write_noise(path: Path, size: int, label: str) -> None:
    """Write ``size`` incompressible bytes in 64 MiB blocks (bounded memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        written = 0
        block = 0
        while written < size:
            n = min(BLOCK, size - written)
            handle.write(blake3.blake3(f"{label}/{block}".encode()).digest(length=n))
            written += n
            block += 1


def run_measured(
    argv: list[str], **kwargs: object
) -> tuple[float, int, subprocess.CompletedProcess[bytes] | None]:
    """Run a command; return (wall seconds, peak RSS in bytes of that child, None)."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed with exit code {process.returncode}")
    return elapsed, usage.ru_maxrss * 1024, None


def median(values: list[float]) -> float:
    return statistics.median(values)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
