"""Planning an update: find the pieces a manifest needs in local directories, copy them.

``plan_local_reuse`` indexes the digests of every chunk of every piece not yet present, then
searches each source directory:

1. a file at the same path with the same size is hashed at the manifest's own chunk offsets
   (no re-chunking).  If it matches completely *and* it already sits at its final name in the
   output directory, it is adopted in place (no copy at all);
2. every other file is cut with the manifest's own chunker parameters (so content-defined cut
   points agree) and its chunk digests are looked up; the scan stops as soon as everything
   needed has been found.

Every chunk found is copied, including those of pieces only partly found locally: the swarm
then requests just the missing runs of chunks of such a piece (a request names a run of
chunks), so a patch downloads only the chunks that really changed.

``apply_reuse`` reads each run of chunks from its source with one ``pread``, re-verifies every
chunk (the source may have changed since the plan), writes the good ones into the staging
files, and commits the pieces they complete.  All of this happens with the store's renames
held: when the output directory is itself a source (an in-place update), every old file is
read before any new file replaces it.
"""

from __future__ import annotations

import os
from array import array
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from thetadist.errors import StoreError
from thetadist.events import ChunksCopied, Event, EventCallback, PlanReady, ignore_event
from thetadist.manifest.chunking import ScanItem, chunk_files, walk_tree
from thetadist.manifest.model import DIGEST_SIZE, Manifest
from thetadist.store.piece_store import STAGING_DIR, PieceStore, pread_exact

SCAN_BATCH_BYTES = 256 * 1024 * 1024
COPY_RUN_BYTES = 8 * 1024 * 1024
COPY_TASK_BYTES = 64 * 1024 * 1024
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@dataclass
class ReusePlan:
    """Where each needed chunk can be read locally.  ``chunk_file[c]`` is an index into
    ``source_files`` (or -1), ``chunk_offset[c]`` the offset there."""

    manifest: Manifest
    sources: list[str]
    source_files: list[str]
    source_of_file: list[int]
    chunk_file: array[int]
    chunk_offset: array[int]
    #: (manifest file index, source file index): already correct at its final output path
    adopt: list[tuple[int, int]]
    #: pieces not present when planned with at least one chunk found (or adopted)
    local_pieces: list[int]
    pieces_total: int
    pieces_present: int
    bytes_total: int
    bytes_present: int
    bytes_local: int
    bytes_missing: int
    bytes_by_source: dict[str, int] = field(default_factory=dict)


@dataclass
class ReuseResult:
    bytes_by_source: dict[str, int]
    chunks_by_source: dict[str, int]
    pieces_completed: int
    files_adopted: int
    chunks_failed: int


@dataclass
class AssembleResult:
    bytes_total: int
    bytes_present_before: int
    bytes_from_local: dict[str, int]
    bytes_missing: int
    pieces_missing: int
    complete: bool


def _digest(manifest: Manifest, chunk: int) -> bytes:
    return manifest.chunk_digests[chunk * DIGEST_SIZE : (chunk + 1) * DIGEST_SIZE]


def _hash_at_offsets(manifest: Manifest, file_index: int, disk_path: str) -> bytearray | None:
    """Which chunks of a manifest file a same-size local file holds at the same offsets."""
    entry = manifest.files[file_index]
    flags = bytearray(entry.chunk_count)
    try:
        fd = os.open(disk_path, os.O_RDONLY | _O_CLOEXEC)
    except OSError:
        return None
    try:
        run_start = 0
        chunks = list(manifest.file_chunks(file_index))
        while run_start < len(chunks):
            run_end = run_start
            run_bytes = 0
            while run_end < len(chunks) and (
                run_bytes == 0 or run_bytes + chunks[run_end][2] <= 16 << 20
            ):
                run_bytes += chunks[run_end][2]
                run_end += 1
            base = chunks[run_start][1]
            view = memoryview(pread_exact(fd, run_bytes, base, disk_path))
            for position in range(run_start, run_end):
                chunk, offset, size = chunks[position]
                if blake3.blake3(view[offset - base : offset - base + size]).digest() == _digest(
                    manifest, chunk
                ):
                    flags[position] = 1
            run_start = run_end
    except (OSError, StoreError):
        return None
    finally:
        os.close(fd)
    return flags


def _in_staging(item: ScanItem) -> bool:
    return STAGING_DIR in item.manifest_path.split("/")


def plan_local_reuse(
    manifest: Manifest,
    sources: Sequence[str | os.PathLike[str]],
    *,
    store: PieceStore | None = None,
    workers: int | None = None,
    on_event: EventCallback = ignore_event,
) -> ReusePlan:
    """Find every chunk of every piece not yet in ``store`` inside ``sources``."""
    workers = workers or os.cpu_count() or 1
    pieces = manifest.pieces
    needed = [p for p in pieces if store is None or not store.has_piece(p.index)]
    roots: list[Path] = []
    for source in sources:
        root = Path(source).resolve()
        if root not in roots:
            if not root.is_dir():
                raise StoreError(f"source {os.fspath(root)!r} is not a directory")
            roots.append(root)
    walked = [[item for item in walk_tree(root)[0] if not _in_staging(item)] for root in roots]
    want: dict[bytes, list[int]] = defaultdict(list)
    files_needing: set[int] = set()
    # The digest index costs ~250 bytes a chunk: build it only if there is a file to search
    # (a fresh download into an empty directory has none).
    if any(item.size for items in walked for item in items):
        for piece in needed:
            files_needing.add(piece.file_index)
            for chunk in range(piece.first_chunk, piece.first_chunk + piece.chunk_count):
                want[_digest(manifest, chunk)].append(chunk)
    want = dict(want)
    # Derived chunks can also be cut from a chunk of the previous version: source -> chunks.
    sources_wanted: dict[bytes, list[int]] = defaultdict(list)
    if want:
        for chunk, derived in manifest.derived.items():
            if _digest(manifest, chunk) in want:
                sources_wanted[derived.digest].append(chunk)
    sources_wanted = dict(sources_wanted)
    chunk_file = array("l", [-1]) * manifest.chunk_count
    chunk_offset = array("q", [0]) * manifest.chunk_count
    source_files: list[str] = []
    source_of_file: list[int] = []
    adopt: list[tuple[int, int]] = []
    adopted_files: set[int] = set()
    out_dir = store.out_dir if store is not None else None

    def register(disk_path: str, root_index: int) -> int:
        source_files.append(disk_path)
        source_of_file.append(root_index)
        return len(source_files) - 1

    def found(digest: bytes, file_id: int, offset: int) -> None:
        for chunk in want.pop(digest, ()):
            chunk_file[chunk] = file_id
            chunk_offset[chunk] = offset
        for chunk in sources_wanted.pop(digest, ()):
            own = _digest(manifest, chunk)
            if own in want:  # not found by its own digest meanwhile
                chunk_file[chunk] = file_id
                chunk_offset[chunk] = offset + manifest.derived[chunk].offset
                # copied like any found chunk (and re-verified against its own digest then)
                rest = [c for c in want[own] if c != chunk]
                if rest:
                    want[own] = rest
                else:
                    del want[own]

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reuse-plan") as pool:
        for root_index, root in enumerate(roots):
            if not want:  # a source matters only while its derived chunk is still wanted
                break
            items = walked[root_index]
            is_output = out_dir is not None and root == out_dir
            by_path = {item.manifest_path: item for item in items}
            candidates = [
                (file_index, by_path[manifest.files[file_index].path])
                for file_index in sorted(files_needing)
                if manifest.files[file_index].path in by_path
                and by_path[manifest.files[file_index].path].size == manifest.files[file_index].size
                and manifest.files[file_index].size > 0
            ]
            fully_matched: set[str] = set()
            results = pool.map(
                lambda pair: _hash_at_offsets(manifest, pair[0], pair[1].disk_path), candidates
            )
            for (file_index, item), flags in zip(candidates, results, strict=True):
                if flags is None or not any(flags):
                    continue
                file_id = register(item.disk_path, root_index)
                if all(flags):
                    fully_matched.add(item.disk_path)
                    if is_output and file_index not in adopted_files:
                        adopt.append((file_index, file_id))
                        adopted_files.add(file_index)
                for position, (chunk, offset, _size) in enumerate(manifest.file_chunks(file_index)):
                    if flags[position]:
                        found(_digest(manifest, chunk), file_id, offset)
            rest = [item for item in items if item.disk_path not in fully_matched and item.size]
            start = 0
            while start < len(rest) and want:
                batch: list[ScanItem] = []
                batch_bytes = 0
                while start < len(rest) and (not batch or batch_bytes < SCAN_BATCH_BYTES):
                    batch.append(rest[start])
                    batch_bytes += rest[start].size
                    start += 1
                for item, spec in zip(
                    batch, chunk_files(batch, manifest.chunker, workers=workers), strict=True
                ):
                    file_id = -1
                    offset = 0
                    digests = spec.digests
                    for position, size in enumerate(spec.sizes):
                        digest = digests[position * DIGEST_SIZE : (position + 1) * DIGEST_SIZE]
                        if digest in want or digest in sources_wanted:
                            if file_id < 0:
                                file_id = register(item.disk_path, root_index)
                            found(digest, file_id, offset)
                        offset += size

    local_pieces: list[int] = []
    bytes_local = 0
    bytes_by_source: dict[str, int] = {}
    for piece in needed:
        if piece.file_index in adopted_files:
            local_pieces.append(piece.index)
            bytes_local += piece.size
            root = roots[source_of_file[next(f for fi, f in adopt if fi == piece.file_index)]]
            bytes_by_source[os.fspath(root)] = bytes_by_source.get(os.fspath(root), 0) + piece.size
            continue
        found_chunks = [
            c
            for c in range(piece.first_chunk, piece.first_chunk + piece.chunk_count)
            if chunk_file[c] >= 0
        ]
        if found_chunks:
            local_pieces.append(piece.index)
            for c in found_chunks:
                key = os.fspath(roots[source_of_file[chunk_file[c]]])
                size = manifest.chunk_sizes[c]
                bytes_local += size
                bytes_by_source[key] = bytes_by_source.get(key, 0) + size
    bytes_total = manifest.total_size
    bytes_present = store.bytes_present if store is not None else 0
    plan = ReusePlan(
        manifest=manifest,
        sources=[os.fspath(r) for r in roots],
        source_files=source_files,
        source_of_file=source_of_file,
        chunk_file=chunk_file,
        chunk_offset=chunk_offset,
        adopt=adopt,
        local_pieces=local_pieces,
        pieces_total=len(pieces),
        pieces_present=len(pieces) - len(needed),
        bytes_total=bytes_total,
        bytes_present=bytes_present,
        bytes_local=bytes_local,
        bytes_missing=bytes_total - bytes_present - bytes_local,
        bytes_by_source=bytes_by_source,
    )
    on_event(
        PlanReady(
            plan.pieces_total,
            plan.pieces_present,
            bytes_total,
            bytes_present,
            bytes_local,
            plan.bytes_missing,
        )
    )
    return plan


@dataclass
class _Job:
    target_offset: int
    size: int
    source: int
    source_offset: int
    chunk: int


def _copy_task(
    plan: ReusePlan, store: PieceStore, file_index: int, jobs: list[_Job]
) -> tuple[dict[int, tuple[int, int]], int, list[Event]]:
    """Copy runs of chunks into one staging file; returns per-source (chunks, bytes),
    failed chunk count and the store's events."""
    stats: dict[int, tuple[int, int]] = {}
    failed = 0
    good: list[int] = []
    fds: dict[int, int] = {}
    manifest = plan.manifest
    try:
        position = 0
        while position < len(jobs):
            first = jobs[position]
            end = position + 1
            run_bytes = first.size
            while end < len(jobs):
                prev, nxt = jobs[end - 1], jobs[end]
                if (
                    nxt.source != first.source
                    or nxt.target_offset != prev.target_offset + prev.size
                    or nxt.source_offset != prev.source_offset + prev.size
                    or run_bytes + nxt.size > COPY_RUN_BYTES
                ):
                    break
                run_bytes += nxt.size
                end += 1
            run = jobs[position:end]
            position = end
            path = plan.source_files[first.source]
            try:
                fd = fds.get(first.source)
                if fd is None:
                    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
                    fds[first.source] = fd
                view = memoryview(pread_exact(fd, run_bytes, first.source_offset, path))
            except (OSError, StoreError):
                failed += len(run)
                continue
            # Write maximal spans of verified chunks.
            span_start = -1
            for number, job in enumerate([*run, None]):
                ok = False
                if job is not None:
                    rel = job.source_offset - first.source_offset
                    chunk_view = view[rel : rel + job.size]
                    start = job.chunk * DIGEST_SIZE
                    ok = (
                        blake3.blake3(chunk_view).digest()
                        == manifest.chunk_digests[start : start + DIGEST_SIZE]
                    )
                    if ok:
                        good.append(job.chunk)
                        chunks, nbytes = stats.get(first.source, (0, 0))
                        stats[first.source] = (chunks + 1, nbytes + job.size)
                        if span_start < 0:
                            span_start = number
                    else:
                        failed += 1
                if not ok and span_start >= 0:
                    a, b = run[span_start], run[number - 1]
                    rel = a.source_offset - first.source_offset
                    store._pwrite(
                        file_index,
                        a.target_offset,
                        view[rel : rel + b.target_offset + b.size - a.target_offset],
                    )
                    span_start = -1
    finally:
        for fd in fds.values():
            os.close(fd)
    source = plan.sources[plan.source_of_file[jobs[0].source]] if jobs else "local"
    events = store._commit_chunks(good, source)
    return stats, failed, events


def apply_reuse(
    plan: ReusePlan,
    store: PieceStore,
    *,
    workers: int | None = None,
    on_event: EventCallback = ignore_event,
) -> ReuseResult:
    """Copy (or adopt) every locally available piece of ``plan`` into ``store``.

    Renames are held for the duration, so old files that serve as sources are all read
    before any of them is replaced; completed files are renamed when this returns.
    """
    manifest = plan.manifest
    if store.manifest.id != manifest.id:
        raise StoreError("the reuse plan was made for another manifest")
    workers = workers or os.cpu_count() or 1
    bytes_by: dict[str, int] = {}
    chunks_by: dict[str, int] = {}
    failed = 0
    adopted = 0
    present_before = store.present_count
    events: list[Event] = []
    with store.renames_held(), ThreadPoolExecutor(workers, thread_name_prefix="reuse") as pool:
        # 1. Files already correct at their final name: verify again, keep them in place.
        adopt = [
            (file_index, file_id)
            for file_index, file_id in plan.adopt
            if not store.is_final(file_index)
            and Path(plan.source_files[file_id]) == store.out_dir / manifest.files[file_index].path
        ]
        checks = pool.map(
            lambda pair: store._verify_file_at(pair[0], plan.source_files[pair[1]]), adopt
        )
        adopted_files: set[int] = set()
        for (file_index, file_id), ok in zip(adopt, checks, strict=True):
            if not ok:
                continue
            key = plan.sources[plan.source_of_file[file_id]]
            size = manifest.files[file_index].size
            events += store.adopt_final(file_index, source=key)
            adopted_files.add(file_index)
            adopted += 1
            bytes_by[key] = bytes_by.get(key, 0) + size
            chunks_by[key] = chunks_by.get(key, 0) + manifest.files[file_index].chunk_count
        # 2. Copies, grouped per target file, in tasks of bounded size.
        tasks: list[tuple[int, list[_Job]]] = []
        current: dict[int, tuple[list[_Job], int]] = {}
        for index in plan.local_pieces:
            piece = manifest.pieces[index]
            if store.has_piece(index) or piece.file_index in adopted_files:
                continue
            jobs, size = current.get(piece.file_index, ([], 0))
            offset = piece.offset
            for chunk in range(piece.first_chunk, piece.first_chunk + piece.chunk_count):
                chunk_size = manifest.chunk_sizes[chunk]
                if plan.chunk_file[chunk] >= 0:
                    jobs.append(
                        _Job(
                            offset,
                            chunk_size,
                            plan.chunk_file[chunk],
                            plan.chunk_offset[chunk],
                            chunk,
                        )
                    )
                    size += chunk_size
                offset += chunk_size
            if size >= COPY_TASK_BYTES:
                tasks.append((piece.file_index, jobs))
                current.pop(piece.file_index, None)
            else:
                current[piece.file_index] = (jobs, size)
        tasks += [(file_index, jobs) for file_index, (jobs, _) in current.items()]
        futures = [pool.submit(_copy_task, plan, store, fi, jobs) for fi, jobs in tasks]
        for future in futures:
            stats, task_failed, task_events = future.result()
            failed += task_failed
            events += task_events
            for file_id, (chunks, nbytes) in stats.items():
                key = plan.sources[plan.source_of_file[file_id]]
                bytes_by[key] = bytes_by.get(key, 0) + nbytes
                chunks_by[key] = chunks_by.get(key, 0) + chunks
        for event in events:
            store._on_event(event)
        for key in plan.sources:
            if key in bytes_by:
                on_event(ChunksCopied(key, chunks_by[key], bytes_by[key]))
    return ReuseResult(
        bytes_by_source=bytes_by,
        chunks_by_source=chunks_by,
        pieces_completed=store.present_count - present_before,
        files_adopted=adopted,
        chunks_failed=failed,
    )


async def apply_reuse_async(
    plan: ReusePlan,
    store: PieceStore,
    *,
    workers: int | None = None,
    on_event: EventCallback = ignore_event,
) -> ReuseResult:
    """:func:`apply_reuse` in a worker thread; events are delivered on the Trio thread."""
    import trio

    collected: list[Event] = []
    store_emit = store._on_event
    store._on_event = collected.append
    try:
        result = await trio.to_thread.run_sync(
            lambda: apply_reuse(plan, store, workers=workers, on_event=collected.append)
        )
    finally:
        store._on_event = store_emit
    for event in collected:
        (on_event if isinstance(event, ChunksCopied) else store_emit)(event)
    return result


def assemble_from_local(
    manifest: Manifest,
    out_dir: str | os.PathLike[str],
    sources: Sequence[str | os.PathLike[str]],
    *,
    on_event: EventCallback = ignore_event,
    workers: int | None = None,
) -> AssembleResult:
    """Build (or resume, or update in place) ``out_dir`` from local directories only.

    The output directory itself is always searched first, so a finished or partly updated
    tree is recognised without copying.  If pieces remain missing, the staging area stays
    (resumable) and the result says how much is missing.
    """
    store = PieceStore.open(manifest, out_dir, on_event=on_event, hold_renames=True)
    try:
        before = store.bytes_present
        plan = plan_local_reuse(
            manifest, [store.out_dir, *sources], store=store, workers=workers, on_event=on_event
        )
        result = apply_reuse(plan, store, workers=workers, on_event=on_event)
        store.release_renames()
        complete = store.all_present
        pieces_missing = store.piece_count - store.present_count
        bytes_missing = store.bytes_missing
        if complete:
            store.finish()
    finally:
        store.close()
    return AssembleResult(
        bytes_total=manifest.total_size,
        bytes_present_before=before,
        bytes_from_local=result.bytes_by_source,
        bytes_missing=bytes_missing,
        pieces_missing=pieces_missing,
        complete=complete,
    )
