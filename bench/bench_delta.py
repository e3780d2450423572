"""Patch efficiency: bytes a holder of version 1 must fetch to get version 2.

    python -m bench.bench_delta [--size 1GiB] [--seed 1] [--records mixed assets] [--workdir DIR]

For each archive-record profile (``mixed``: 2 KiB–512 KiB records, fine-grained edits;
``assets``: 64 KiB–8 MiB records), generates a game build and its patch with a known count of
truly new bytes (``bench.gamebuild``), then in the same run measures:

* thetadist (per-file FastCDC at several average sizes, each cut against version 1's tree
  (``aligned``, what ``manifest create --previous-dir`` does) and on its own; fixed 1 MiB
  pieces): the ``manifest diff`` figure ``bytes_to_fetch`` = unique new chunk bytes not
  derivable from version 1 + the manifest delta from version 1's manifest (or the whole new
  manifest where there is none);
* casync at its default and at a 16 KiB average: unique new chunk bytes (uncompressed) + the
  new index; the compressed size of those chunks in its store is shown too;
* a real update: ``assemble_from_local`` builds version 2 from version 1's directory, and the
  bytes it could not find must equal thetadist's prediction.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.casync_compare import casync_bytes_to_fetch
from bench.gamebuild import RECORD_PROFILES, generate
from thetadist import ChunkerParams, create_manifest, diff
from thetadist.store.plan import assemble_from_local
from thetadist.units import parse_size

AVERAGES = (16 * 1024, 32 * 1024, 64 * 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--records", nargs="+", default=["mixed", "assets"], choices=sorted(RECORD_PROFILES)
    )
    parser.add_argument("--workdir", default="bench-out/delta")
    args = parser.parse_args()
    reports = [
        run_profile(Path(args.workdir) / records, parse_size(args.size), args.seed, records)
        for records in args.records
    ]
    print(json.dumps({"bench": "delta", "profiles": reports}))


def run_profile(work: Path, size: int, seed: int, records: str) -> dict[str, Any]:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    v1, v2 = work / "v1", work / "v2"
    truth = generate(v1, v2, size=size, seed=seed, records=records)
    new = truth.new_bytes
    rows: list[dict[str, Any]] = []

    def add(tool: str, setting: str, to_fetch: int, **extra: Any) -> None:
        rows.append(
            {
                "tool": tool,
                "setting": setting,
                "bytes_to_fetch": to_fetch,
                "ratio_to_new": round(to_fetch / new, 3),
                **extra,
            }
        )

    default_manifests = None
    for average in AVERAGES:
        params = ChunkerParams.fastcdc(average)
        old = create_manifest(v1, chunker=params)
        for aligned in (True, False):
            started = time.perf_counter()
            patched = create_manifest(
                v2, chunker=params, previous=old, previous_dir=v1 if aligned else None
            )
            seconds = time.perf_counter() - started
            result = diff(old, patched)
            add(
                "thetadist",
                f"fastcdc avg {average // 1024} KiB{' aligned' if aligned else ''}",
                result.bytes_to_fetch,
                manifest_bytes=result.manifest_bytes,
                full_manifest_bytes=result.full_manifest_bytes,
                derived_chunks=len(patched.derived),
                seconds=round(seconds, 1),
            )
            if average == ChunkerParams().avg_size and aligned:
                default_manifests = (old, patched, result)
    fixed = ChunkerParams.fixed(1024 * 1024)
    fixed_diff = diff(create_manifest(v1, chunker=fixed), create_manifest(v2, chunker=fixed))
    add(
        "thetadist",
        "fixed 1 MiB",
        fixed_diff.bytes_to_fetch,
        manifest_bytes=fixed_diff.manifest_bytes,
    )
    for chunk_size, label in ((None, "default (64 KiB avg)"), ("16384", "16 KiB avg")):
        started = time.perf_counter()
        measured = casync_bytes_to_fetch(
            v1, v2, work / f"casync-{chunk_size}", chunk_size=chunk_size
        )
        add(
            "casync",
            label,
            int(str(measured["bytes_to_fetch"])),
            index_bytes=measured["v2_index_bytes"],
            new_chunks_compressed_bytes=measured["new_chunk_compressed_bytes"],
            seconds=round(time.perf_counter() - started, 1),
        )

    assert default_manifests is not None
    _, patched, predicted = default_manifests
    out = work / "installed"
    shutil.copytree(v1, out, symlinks=True)
    started = time.perf_counter()
    update = assemble_from_local(patched, out, [out])
    update_seconds = time.perf_counter() - started
    report = {
        "records": records,
        "v1_bytes": truth.v1_bytes,
        "v2_bytes": truth.v2_bytes,
        "true_new_bytes": new,
        "new_fraction": round(truth.new_fraction, 4),
        "rows": rows,
        "in_place_update": {
            "bytes_missing_after_local_reuse": update.bytes_missing,
            "predicted_data_bytes_to_fetch": predicted.data_bytes_to_fetch,
            "seconds": round(update_seconds, 1),
        },
    }
    print(
        f"[{records} records] v2 {truth.v2_bytes:,} B, truly new {new:,} B "
        f"({truth.new_fraction:.2%})",
        file=sys.stderr,
    )
    for row in rows:
        print(
            f"  {row['tool']:9} {row['setting']:22} {row['bytes_to_fetch']:>13,} B  "
            f"{row['ratio_to_new']:.3f}× new",
            file=sys.stderr,
        )
    print(
        f"  in-place update from v1: {update.bytes_missing:,} B not found locally "
        f"(predicted {predicted.data_bytes_to_fetch:,}) in {update_seconds:.1f} s",
        file=sys.stderr,
    )
    shutil.rmtree(work)
    return report


if __name__ == "__main__":
    main()
