"""Cutting a new version's chunks where its content departs from the previous version.

Content-defined chunking alone re-sends about one average chunk of *old* bytes around every
edit: the chunk that straddles the start of an edit holds old bytes before it, the chunk where
the cut points resynchronise holds old bytes after it.  A publisher who still has the previous
tree can do better, because it can compare bytes:

1. Chunk the previous tree exactly as a fetcher holding it will (same chunker, same
   parameters) and index those chunks by digest.
2. Chunk the new tree as usual.  Runs of new chunks that the old tree lacks are the *gaps*.
3. Each gap sits between two anchors: the old position where the preceding (old) chunk ends
   and the old position where the following one starts; at a file's start or end, the start
   or end of the old file at the same path.  The gap's longest common prefix with the old bytes
   after the left anchor, and its longest common suffix with the old bytes before the right
   one, are old content.
4. That old content is re-cut along the old chunk boundaries: whole old chunks are reused by
   digest as usual; a partial old chunk becomes a **derived chunk**, listed in the manifest
   with its source (the old chunk's digest and an offset), so a fetcher copies it from its old
   file instead of downloading it.  Only the middle of the gap, the new content, is chunked
   afresh and fetched.

The old chunks referenced are the ones a fetcher's own scan of its old tree finds (see
:mod:`thetadist.store.plan`), not the previous manifest's table, so a chain of patches keeps
working.  Everything here is a hint: a fetcher checks every chunk it rebuilds against the
chunk's own digest, so a wrong hint costs a download, never a corrupt file.
"""

from __future__ import annotations

import mmap
import os
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

import blake3

from thetadist.errors import StoreError
from thetadist.manifest.chunking import Cutter, ScanItem, chunk_files, walk_tree
from thetadist.manifest.model import DIGEST_SIZE, ChunkerParams, DerivedSource, FileSpec

#: A slice of old content shorter than this is downloaded with the new bytes around it: its
#: table entry and source record (76 bytes) would cost about as much as the bytes themselves.
MIN_DERIVED_SIZE = 128
#: Bytes compared at a time when measuring how far new and old content agree.
_COMPARE_BLOCK = 4096


@dataclass
class _OldFile:
    disk_path: str
    size: int
    #: chunk start offsets, and the file size at the end
    bounds: array[int]
    digests: bytes

    def digest(self, chunk: int) -> bytes:
        return self.digests[chunk * DIGEST_SIZE : (chunk + 1) * DIGEST_SIZE]


class OldTree:
    """The previous version's files, chunked as a fetcher holding them will chunk them."""

    def __init__(self, root: Path, params: ChunkerParams, *, workers: int | None = None) -> None:
        items, _, _ = walk_tree(root)
        self.files: list[_OldFile] = []
        self.by_path: dict[str, int] = {}
        #: digest -> (old file number, chunk number), first occurrence
        self.where: dict[bytes, tuple[int, int]] = {}
        for item, spec in zip(items, chunk_files(items, params, workers=workers), strict=True):
            number = len(self.files)
            bounds = array("q", [0])
            bounds.extend(accumulate(spec.sizes))
            self.files.append(_OldFile(item.disk_path, item.size, bounds, spec.digests))
            self.by_path[item.manifest_path] = number
            for chunk in range(len(spec.sizes)):
                self.where.setdefault(self.files[number].digest(chunk), (number, chunk))


@contextmanager
def _mapped(path: str) -> Iterator[memoryview]:
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                yield memoryview(b"")
                return
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapping:
                view = memoryview(mapping)
                try:
                    yield view
                finally:
                    view.release()
    except OSError as exc:
        raise StoreError(f"cannot read {path!r}: {exc.strerror}") from None


def _common_prefix(a: memoryview, b: memoryview) -> int:
    """Length of the longest common prefix, comparing blocks in C, never byte by byte."""
    return _agreement(min(len(a), len(b)), lambda lo, hi: a[lo:hi] == b[lo:hi])


def _common_suffix(a: memoryview, b: memoryview) -> int:
    """Length of the longest common suffix."""
    a_end, b_end = len(a), len(b)
    return _agreement(
        min(a_end, b_end),
        lambda lo, hi: a[a_end - hi : a_end - lo] == b[b_end - hi : b_end - lo],
    )


def _agreement(limit: int, agree: Callable[[int, int], bool]) -> int:
    """The largest n <= ``limit`` with ``agree(0, n)``, where ``agree(lo, hi)`` says whether
    the bytes from ``lo`` to ``hi`` (counted from the end being measured) agree: block by
    block, then a binary search inside the first block that differs."""
    done = 0
    while done < limit:
        step = min(_COMPARE_BLOCK, limit - done)
        if agree(done, done + step):
            done += step
            continue
        low, high = 0, step  # [done, done + low) agrees, [done, done + high) does not
        while high - low > 1:
            middle = (low + high) // 2
            if agree(done, done + middle):
                low = middle
            else:
                high = middle
        return done + low
    return limit


class _Builder:
    """Accumulates one new file's chunks: reused, derived and fresh."""

    def __init__(self) -> None:
        self.sizes = array("I")
        self.digests = bytearray()
        self.derived: list[tuple[int, DerivedSource]] = []

    def chunk(self, data: memoryview, digest: bytes | None = None) -> None:
        self.sizes.append(len(data))
        self.digests += digest if digest is not None else blake3.blake3(data).digest()

    def old_slices(self, data: memoryview, old: _OldFile, start: int) -> None:
        """``data`` equals the old file's bytes from ``start``: cut it along the old chunks."""
        position = 0
        while position < len(data):
            chunk = bisect_right(old.bounds, start + position) - 1
            chunk_start, chunk_end = old.bounds[chunk], old.bounds[chunk + 1]
            offset = start + position - chunk_start
            length = min(chunk_end - chunk_start - offset, len(data) - position)
            piece = data[position : position + length]
            if length == chunk_end - chunk_start:
                # a whole old chunk, reused by digest; hashed anyway, as the publisher must
                # never list a digest its own tree does not match (the old tree may change)
                self.chunk(piece)
            else:
                self.derived.append((len(self.sizes), DerivedSource(old.digest(chunk), offset)))
                self.chunk(piece)
            position += length


def align_file(item: ScanItem, spec: FileSpec, old: OldTree, cutter: Cutter) -> FileSpec:
    """Re-cut one new file's chunks so that only its new content falls in fresh chunks."""
    count = len(spec.sizes)
    located = [
        old.where.get(spec.digests[i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE]) for i in range(count)
    ]
    if all(place is not None for place in located):
        return spec
    base = old.by_path.get(item.manifest_path)
    if base is None:
        votes = Counter(place[0] for place in located if place is not None)
        base = votes.most_common(1)[0][0] if votes else None
    bounds = [0, *accumulate(spec.sizes)]
    built = _Builder()
    with _mapped(item.disk_path) as new:
        if len(new) != spec.size:
            raise StoreError(f"{item.disk_path!r} changed size while it was being read")
        index = 0
        while index < count:
            place = located[index]
            if place is not None:
                reused = old.files[place[0]].digest(place[1])
                built.chunk(new[bounds[index] : bounds[index + 1]], reused)
                index += 1
                continue
            end = index
            while end < count and located[end] is None:
                end += 1
            left = _left_anchor(located, index, base, old)
            right = _right_anchor(located, end, count, base, old)
            _fill_gap(built, new[bounds[index] : bounds[end]], left, right, old, cutter)
            index = end
    return FileSpec(
        spec.path, spec.size, spec.executable, bytes(built.digests), built.sizes, built.derived
    )


def _left_anchor(
    located: Sequence[tuple[int, int] | None], index: int, base: int | None, old: OldTree
) -> tuple[int, int] | None:
    """(old file, offset) where the old content before the gap ends."""
    if index > 0:
        before = located[index - 1]
        assert before is not None
        return before[0], old.files[before[0]].bounds[before[1] + 1]
    return (base, 0) if base is not None else None


def _right_anchor(
    located: Sequence[tuple[int, int] | None],
    end: int,
    count: int,
    base: int | None,
    old: OldTree,
) -> tuple[int, int] | None:
    """(old file, offset) where the old content after the gap starts."""
    if end < count:
        after = located[end]
        assert after is not None
        return after[0], old.files[after[0]].bounds[after[1]]
    return (base, old.files[base].size) if base is not None else None


def _fill_gap(
    built: _Builder,
    gap: memoryview,
    left: tuple[int, int] | None,
    right: tuple[int, int] | None,
    old: OldTree,
    cutter: Cutter,
) -> None:
    prefix = suffix = 0
    if left is not None:
        left_file = old.files[left[0]]
        with _mapped(left_file.disk_path) as data:
            # only as far as the old file was chunked (it may have grown since)
            prefix = _common_prefix(gap, data[left[1] : left_file.size])
        prefix -= _short_partial(left_file, left[1] + prefix, at_end=True)
        if prefix < MIN_DERIVED_SIZE:
            prefix = 0
        built.old_slices(gap[:prefix], left_file, left[1])
    rest = gap[prefix:]
    if right is not None:
        right_file = old.files[right[0]]
        with _mapped(right_file.disk_path) as data:
            # only as far as the old file was chunked (it may have shrunk since)
            suffix = _common_suffix(rest, data[: right[1]]) if len(data) >= right[1] else 0
        suffix -= _short_partial(right_file, right[1] - suffix, at_end=False)
        if suffix < MIN_DERIVED_SIZE:
            suffix = 0
    fresh = rest[: len(rest) - suffix]
    offset = 0
    for length in cutter.lengths(fresh):
        built.chunk(fresh[offset : offset + length])
        offset += length
    if suffix:
        assert right is not None
        built.old_slices(rest[len(rest) - suffix :], old.files[right[0]], right[1] - suffix)


def _short_partial(old: _OldFile, position: int, *, at_end: bool) -> int:
    """The length of the partial old chunk a run of old content ends (``at_end``) or starts
    at ``position``, if it is shorter than MIN_DERIVED_SIZE (it is then left to the new
    bytes around it: a derived chunk that small costs more manifest than it saves); else 0."""
    chunk = bisect_right(old.bounds, position) - 1
    if chunk >= len(old.bounds) - 1 or old.bounds[chunk] == position:
        return 0  # on a chunk boundary (or the end of the file): no partial chunk
    partial = position - old.bounds[chunk] if at_end else old.bounds[chunk + 1] - position
    return partial if partial < MIN_DERIVED_SIZE else 0


def align_files(
    items: Sequence[ScanItem],
    specs: Sequence[FileSpec],
    previous_root: Path,
    params: ChunkerParams,
    *,
    workers: int | None = None,
) -> list[FileSpec]:
    """Re-cut every new file against the previous tree at ``previous_root``."""
    old = OldTree(previous_root, params, workers=workers)
    cutter = Cutter(params)
    return [align_file(item, spec, old, cutter) for item, spec in zip(items, specs, strict=True)]
