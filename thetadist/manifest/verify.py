"""Checking a directory against a manifest: which files are missing, which pieces corrupt."""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from thetadist.events import ChunkCorrupt, EventCallback, FileMissing, ignore_event
from thetadist.manifest.chunking import SEGMENT_SIZE
from thetadist.manifest.model import Manifest


@dataclass
class FileProblem:
    path: str
    missing: bool = False
    size_on_disk: int | None = None
    corrupt_pieces: list[int] = field(default_factory=list)
    corrupt_bytes: int = 0
    executable_mismatch: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "missing": self.missing,
            "size_on_disk": self.size_on_disk,
            "corrupt_pieces": self.corrupt_pieces,
            "corrupt_bytes": self.corrupt_bytes,
            "executable_mismatch": self.executable_mismatch,
        }


@dataclass
class VerifyReport:
    files_checked: int = 0
    bytes_checked: int = 0
    problems: list[FileProblem] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems

    @property
    def missing_pieces(self) -> int:
        return sum(len(p.corrupt_pieces) for p in self.problems)


def _runs(manifest: Manifest, file_index: int) -> Iterator[list[tuple[int, int, int]]]:
    """Group a file's chunks into reads of about one segment."""
    run: list[tuple[int, int, int]] = []
    run_bytes = 0
    for chunk in manifest.file_chunks(file_index):
        run.append(chunk)
        run_bytes += chunk[2]
        if run_bytes >= SEGMENT_SIZE:
            yield run
            run, run_bytes = [], 0
    if run:
        yield run


def _bad_chunks(manifest: Manifest, disk_path: str, run: list[tuple[int, int, int]]) -> list[int]:
    """Indices (into ``run``) of chunks whose bytes on disk do not hash to the manifest."""
    start = run[0][1]
    length = run[-1][1] + run[-1][2] - start
    try:
        fd = os.open(disk_path, os.O_RDONLY)
    except OSError:
        return list(range(len(run)))
    try:
        data = os.pread(fd, length, start)
    finally:
        os.close(fd)
    view = memoryview(data)
    bad = []
    for position, (chunk_index, offset, size) in enumerate(run):
        piece = view[offset - start : offset - start + size]
        if len(piece) != size or blake3.blake3(piece).digest() != manifest.chunk_digest(
            chunk_index
        ):
            bad.append(position)
    return bad


def verify_tree(
    manifest: Manifest,
    root: str | os.PathLike[str],
    *,
    workers: int | None = None,
    on_event: EventCallback = ignore_event,
) -> VerifyReport:
    """Hash every chunk of every file under ``root`` at the manifest's offsets."""
    root_path = Path(root)
    report = VerifyReport()
    chunk_to_piece = array("I", bytes(4 * manifest.chunk_count))
    for piece in manifest.pieces:
        for chunk in range(piece.first_chunk, piece.first_chunk + piece.chunk_count):
            chunk_to_piece[chunk] = piece.index
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        jobs: list[tuple[FileProblem, list[tuple[int, int, int]], Future[list[int]] | None]] = []
        for file_index, entry in enumerate(manifest.files):
            disk_path = root_path / entry.path
            report.files_checked += 1
            try:
                info = disk_path.lstat()
            except OSError:
                info = None
            if info is None or not disk_path.is_file() or disk_path.is_symlink():
                problem = FileProblem(entry.path, missing=True)
                problem.corrupt_pieces = sorted(
                    {chunk_to_piece[c] for c, _, _ in manifest.file_chunks(file_index)}
                )
                problem.corrupt_bytes = entry.size
                report.problems.append(problem)
                on_event(FileMissing(entry.path, entry.size))
                continue
            problem = FileProblem(entry.path)
            if info.st_size != entry.size:
                problem.size_on_disk = info.st_size
            if bool(info.st_mode & 0o111) != entry.executable:
                problem.executable_mismatch = True
            for run in _runs(manifest, file_index):
                jobs.append((problem, run, pool.submit(_bad_chunks, manifest, str(disk_path), run)))
            report.bytes_checked += entry.size
            jobs.append((problem, [], None))
        for problem, run, future in jobs:
            if future is None:
                if (
                    problem.corrupt_pieces
                    or problem.size_on_disk is not None
                    or (problem.executable_mismatch)
                ):
                    problem.corrupt_pieces = sorted(set(problem.corrupt_pieces))
                    report.problems.append(problem)
                continue
            for position in future.result():
                chunk_index, offset, size = run[position]
                problem.corrupt_pieces.append(chunk_to_piece[chunk_index])
                problem.corrupt_bytes += size
                on_event(ChunkCorrupt(problem.path, chunk_index, offset, size))
    for directory in manifest.directories:
        if not (root_path / directory).is_dir():
            report.problems.append(FileProblem(directory + "/", missing=True))
    return report
