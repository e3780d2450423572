"""Manifest creation throughput against plain single-threaded BLAKE3, and peak RSS.

    python -m bench.bench_manifest [--size 2GiB] [--rss-size 20GiB] [--repeat 5] [--workdir DIR]

Both sides read the same page-cached files.  The anchor reads each file in 16 MiB blocks
and feeds one single-threaded BLAKE3 hasher (what ``b3sum --num-threads 1`` does); thetadist
runs ``create_manifest`` (chunk + hash, both cores).  Peak RSS is measured on the real
``thetadist manifest create`` command in a child process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import blake3

from bench.common import gib, median, run_measured, write_noise
from thetadist import create_manifest
from thetadist.units import parse_size

FILE_SIZE = 256 * 1024 * 1024


def make_dataset(root: Path, size: int) -> list[Path]:
    """A build of ``size`` bytes: 256 MiB archives plus a tail file."""
    paths = []
    index = 0
    remaining = size
    while remaining > 0:
        n = min(FILE_SIZE, remaining)
        path = root / f"archive{index:03}.pak"
        if not path.exists() or path.stat().st_size != n:
            write_noise(path, n, f"{root.name}/{index}")
        paths.append(path)
        remaining -= n
        index += 1
    return paths


def plain_blake3(paths: list[Path]) -> float:
    started = time.perf_counter()
    buffer = bytearray(16 * 1024 * 1024)
    view = memoryview(buffer)
    for path in paths:
        hasher = blake3.blake3()
        with open(path, "rb", buffering=0) as handle:
            while n := handle.readinto(buffer):
                hasher.update(view[:n])
        hasher.digest()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="2GiB")
    parser.add_argument("--rss-size", default="20GiB", help="second dataset for the RSS check")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", default="bench-out/manifest")
    args = parser.parse_args()
    size, rss_size = parse_size(args.size), parse_size(args.rss_size)
    work = Path(args.workdir)
    small = make_dataset(work / "small", size)
    total = sum(p.stat().st_size for p in small)
    plain_blake3(small)  # warm the page cache
    anchor_times, ours_times = [], []
    for _ in range(args.repeat):
        anchor_times.append(plain_blake3(small))
        started = time.perf_counter()
        create_manifest(work / "small")
        ours_times.append(time.perf_counter() - started)
    anchor, ours = median(anchor_times), median(ours_times)
    result: dict[str, object] = {
        "bench": "manifest",
        "bytes": total,
        "cores": os.cpu_count(),
        "plain_blake3_1thread_MBps": round(total / anchor / 1e6),
        "thetadist_create_MBps": round(total / ours / 1e6),
        "ratio": round(anchor / ours, 2),
        "runs": args.repeat,
    }
    print(
        f"manifest create on {gib(total)}: "
        f"plain BLAKE3 {result['plain_blake3_1thread_MBps']} MB/s, "
        f"thetadist {result['thetadist_create_MBps']} MB/s, ratio {result['ratio']}× "
        f"(median of {args.repeat})",
        file=sys.stderr,
    )
    rss: dict[str, int] = {}
    for label, dataset_size in (("small", size), ("large", rss_size)):
        make_dataset(work / label, dataset_size)
        elapsed, peak = run_measured(
            [
                sys.executable,
                "-m",
                "thetadist",
                "manifest",
                "create",
                str(work / label),
                "-o",
                str(work / f"{label}.tdm"),
                "--json",
            ]
        )
        rss[gib(dataset_size)] = peak
        print(
            f"peak RSS of `thetadist manifest create` on {gib(dataset_size)}: "
            f"{peak / 1e6:.0f} MB ({elapsed:.1f} s)",
            file=sys.stderr,
        )
    result["peak_rss_bytes"] = rss
    print(json.dumps(result))


if __name__ == "__main__":
    main()
