"""Baseline: how many bytes would real ``casync`` make a v1 holder fetch to get v2?

Runs ``casync make --store=STORE [--chunk-size=...] --with=permissions --with=symlinks
INDEX.caidx DIR`` for both trees and compares the chunk tables of the two archive
indexes (.caidx).

Feature set: passing any ``--with=`` *replaces* casync's default feature set, so
``--with=permissions --with=symlinks`` stores file names, contents, full mode bits
(exec bits) and symlinks, but no timestamps, uids/gids, user names, xattrs, ACLs,
file attributes... — so metadata that legitimately differs between two checkouts (mtimes,
owners) creates no spurious chunk differences. (``--without=all`` also works but drops
the mode bits.)

Index format (casync ``src/caformat.h``; all integers u64 little-endian), verified here:

* ``CaFormatIndex`` (48 bytes): size=48, type=CA_FORMAT_INDEX, feature_flags,
  chunk_size_min, chunk_size_avg, chunk_size_max;
* ``CaFormatTable`` header (16 bytes): size=UINT64_MAX, type=CA_FORMAT_TABLE;
* items (40 bytes each): end offset of the chunk in the archive stream, 32-byte chunk id
  (sha512-256 by default) — chunk *i* spans ``[end[i-1], end[i])``;
* tail (40 bytes): 0, 0, index_offset (=48), table_size (=16 + 40·n + 40),
  CA_FORMAT_TABLE_TAIL_MARKER.

Chunks are stored zstd-compressed as ``STORE/<first 4 hex>/<hex id>.cacnk``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CA_FORMAT_INDEX = 0x96824D9C7B129FF9
CA_FORMAT_TABLE = 0xE75B9E112F17417D
CA_FORMAT_TABLE_TAIL_MARKER = 0x4B4F050E5549ECD1
_U64_MAX = (1 << 64) - 1

_HEADER = struct.Struct("<6Q")
_TABLE_HDR = struct.Struct("<2Q")
_ITEM = struct.Struct("<Q32s")
_TAIL = struct.Struct("<5Q")

DEFAULT_FEATURES: tuple[str, ...] = ("--with=permissions", "--with=symlinks")


class CasyncError(RuntimeError):
    pass


@dataclass(frozen=True)
class CaIndex:
    """A parsed .caidx/.caibx file."""

    feature_flags: int
    chunk_size_min: int
    chunk_size_avg: int
    chunk_size_max: int
    ends: list[int]  # end offset of each chunk in the archive stream
    ids: list[bytes]  # 32-byte chunk id of each chunk
    file_size: int  # size of the index file itself

    @property
    def stream_size(self) -> int:
        """Size of the (uncompressed) archive stream = sum of all chunk sizes."""
        return self.ends[-1] if self.ends else 0

    def chunk_sizes(self) -> list[int]:
        prev = 0
        out = []
        for e in self.ends:
            out.append(e - prev)
            prev = e
        return out


def parse_caidx(path: Path) -> CaIndex:
    """Parse and validate a casync index; raises ``ValueError`` on any inconsistency.

    Checks: magic numbers, header/tail sizes, tail index_offset/table_size, strictly
    increasing end offsets, and every chunk within [min, max] (the last may be < min).
    """
    data = Path(path).read_bytes()
    if len(data) < _HEADER.size + _TABLE_HDR.size + _TAIL.size:
        raise ValueError(f"{path}: too short for a casync index")
    size, typ, flags, cmin, cavg, cmax = _HEADER.unpack_from(data, 0)
    if size != _HEADER.size or typ != CA_FORMAT_INDEX:
        raise ValueError(f"{path}: not a casync index (size={size}, type={typ:#x})")
    tsize, ttype = _TABLE_HDR.unpack_from(data, _HEADER.size)
    if tsize != _U64_MAX or ttype != CA_FORMAT_TABLE:
        raise ValueError(f"{path}: bad table header")
    z1, z2, index_offset, table_size, marker = _TAIL.unpack_from(data, len(data) - _TAIL.size)
    if (z1, z2, marker) != (0, 0, CA_FORMAT_TABLE_TAIL_MARKER):
        raise ValueError(f"{path}: bad table tail")
    items_len = len(data) - _HEADER.size - _TABLE_HDR.size - _TAIL.size
    if items_len % _ITEM.size:
        raise ValueError(f"{path}: table length {items_len} not a multiple of {_ITEM.size}")
    n = items_len // _ITEM.size
    if index_offset != _HEADER.size or table_size != _TABLE_HDR.size + n * _ITEM.size + _TAIL.size:
        raise ValueError(f"{path}: tail offsets disagree with file size")
    ends: list[int] = []
    ids: list[bytes] = []
    prev = 0
    start = _HEADER.size + _TABLE_HDR.size
    for i, (end, cid) in enumerate(_ITEM.iter_unpack(data[start : start + items_len])):
        sz = end - prev
        if sz <= 0 or sz > cmax or (sz < cmin and i != n - 1):
            raise ValueError(f"{path}: chunk {i} has size {sz} outside [{cmin}, {cmax}]")
        ends.append(end)
        ids.append(cid)
        prev = end
    return CaIndex(flags, cmin, cavg, cmax, ends, ids, len(data))


def _casync() -> str:
    exe = shutil.which("casync")
    if exe is None:
        raise CasyncError("casync not found on PATH (Debian/Ubuntu: apt-get install casync)")
    return exe


def _run(args: list[str]) -> float:
    t = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise CasyncError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return time.monotonic() - t


def casync_stream_size(tree: Path, *, features: tuple[str, ...] = DEFAULT_FEATURES) -> int:
    """Byte length of the .catar stream casync produces for ``tree`` (piped, not stored)."""
    proc = subprocess.Popen(
        [_casync(), "make", *features, "-", str(tree)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    total = 0
    while block := proc.stdout.read(1 << 20):
        total += len(block)
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise CasyncError(f"casync make - {tree} failed: {err.strip()}")
    return total


def chunk_path(store: Path, cid: bytes) -> Path:
    h = cid.hex()
    return store / h[:4] / f"{h}.cacnk"


def casync_bytes_to_fetch(
    v1: Path,
    v2: Path,
    workdir: Path,
    *,
    chunk_size: str | None,
    features: tuple[str, ...] = DEFAULT_FEATURES,
    verify_stream: bool = False,
) -> dict[str, object]:
    """Index both trees with casync and count what a v1 holder must fetch for v2.

    ``chunk_size`` is passed as ``--chunk-size=`` (``AVG`` or ``MIN:AVG:MAX``, e.g.
    ``"16384"``); ``None`` uses casync's default (16 KiB:64 KiB:256 KiB). Writes
    ``workdir/store`` (shared chunk store) and ``workdir/v{1,2}-<tag>.caidx``.

    Returned numbers (bytes unless noted):

    * ``v1_index_bytes`` / ``v2_index_bytes``: size of the .caidx files;
    * ``v1_stream_bytes`` / ``v2_stream_bytes``: uncompressed .catar stream size
      (= sum of the chunk sizes in the index);
    * ``v1_chunks`` / ``v2_chunks``: chunk references in each index;
      ``v2_distinct_chunks``: distinct chunk ids in v2;
    * ``new_chunks``: distinct chunk ids referenced by v2's index that are not in
      v1's index; ``new_chunk_bytes``: their total **uncompressed** size (each distinct
      chunk counted once: it is fetched once);
    * ``new_chunk_compressed_bytes``: total size of those chunks' .cacnk files
      (zstd-compressed, as casync would transfer them);
    * ``bytes_to_fetch`` = ``new_chunk_bytes + v2_index_bytes`` (the headline number,
      uncompressed, comparable to a generator's ``new_bytes``);
      ``bytes_to_fetch_compressed`` = ``new_chunk_compressed_bytes + v2_index_bytes``;
    * ``chunk_size_min/avg/max``: actual parameters read back from v2's index;
    * ``make_seconds_v1`` / ``make_seconds_v2``: wall time of each ``casync make``;
    * with ``verify_stream``: ``stream_verified`` — the stream sizes were checked
      against a separately produced .catar stream (raises on mismatch).
    """
    exe = _casync()
    workdir = Path(workdir)
    store = workdir / "store"
    workdir.mkdir(parents=True, exist_ok=True)
    tag = "default" if chunk_size is None else chunk_size.replace(":", "-")
    opts = [f"--store={store}", *features]
    if chunk_size is not None:
        opts.append(f"--chunk-size={chunk_size}")
    idx: dict[str, CaIndex] = {}
    secs: dict[str, float] = {}
    for name, tree in (("v1", v1), ("v2", v2)):
        if not Path(tree).is_dir():
            raise NotADirectoryError(tree)
        out = workdir / f"{name}-{tag}.caidx"
        out.unlink(missing_ok=True)
        secs[name] = _run([exe, "make", *opts, str(out), str(tree)])
        idx[name] = parse_caidx(out)
    i1, i2 = idx["v1"], idx["v2"]
    if verify_stream:
        for name, tree in (("v1", v1), ("v2", v2)):
            got = casync_stream_size(Path(tree), features=features)
            if got != idx[name].stream_size:
                raise CasyncError(
                    f"{name}: index sums to {idx[name].stream_size} bytes, stream is {got}"
                )

    old = set(i1.ids)
    new: dict[bytes, int] = {}
    for cid, size in zip(i2.ids, i2.chunk_sizes(), strict=True):
        if cid not in old:
            new[cid] = size
    compressed = 0
    for cid in new:
        p = chunk_path(store, cid)
        if not p.is_file():
            raise CasyncError(f"chunk {cid.hex()} missing from store {store}")
        compressed += p.stat().st_size
    new_bytes = sum(new.values())
    return {
        "chunk_size_requested": chunk_size,
        "chunk_size_min": i2.chunk_size_min,
        "chunk_size_avg": i2.chunk_size_avg,
        "chunk_size_max": i2.chunk_size_max,
        "features": list(features),
        "v1_index_bytes": i1.file_size,
        "v2_index_bytes": i2.file_size,
        "v1_stream_bytes": i1.stream_size,
        "v2_stream_bytes": i2.stream_size,
        "v1_chunks": len(i1.ids),
        "v2_chunks": len(i2.ids),
        "v2_distinct_chunks": len(set(i2.ids)),
        "new_chunks": len(new),
        "new_chunk_bytes": new_bytes,
        "new_chunk_compressed_bytes": compressed,
        "bytes_to_fetch": new_bytes + i2.file_size,
        "bytes_to_fetch_compressed": compressed + i2.file_size,
        "make_seconds_v1": round(secs["v1"], 3),
        "make_seconds_v2": round(secs["v2"], 3),
        "stream_verified": verify_stream,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.casync_compare", description="casync bytes-to-fetch baseline"
    )
    ap.add_argument("v1", type=Path)
    ap.add_argument("v2", type=Path)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--chunk-size", default=None, help="casync --chunk-size (AVG or MIN:AVG:MAX)")
    ap.add_argument("--verify-stream", action="store_true")
    args = ap.parse_args(argv)
    res = casync_bytes_to_fetch(
        args.v1,
        args.v2,
        args.workdir,
        chunk_size=args.chunk_size,
        verify_stream=args.verify_stream,
    )
    sys.stdout.write(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
