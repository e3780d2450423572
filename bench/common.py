"""Helpers shared by the benchmarks: bounded data generation, child peak RSS, medians."""

from __future__ import annotations

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


def read_vmhwm(pid: int) -> int | None:
    """VmHWM (peak RSS of the current program image, bytes) from /proc, None if gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def run_measured(argv: list[str]) -> tuple[float, int]:
    """Run a command; return (wall seconds, its peak RSS in bytes).

    The peak is VmHWM sampled from /proc while it runs: a child's ``ru_maxrss`` starts at its
    parent's peak, which would charge the benchmark's own memory to the command."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    peak = 0
    while process.poll() is None:
        peak = max(peak, read_vmhwm(process.pid) or 0)
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed with exit code {process.returncode}")
    return elapsed, peak


def median(values: list[float]) -> float:
    return statistics.median(values)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
