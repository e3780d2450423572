"""What a peer serves from: a complete directory (seeding) or a PieceStore (fetching).

A seeder never uploads a corrupt piece: a piece is hashed against the manifest the first time
it is read, in a worker thread, and again whenever its file changed since (inode, size or
mtime); a piece that fails is withdrawn (REJECTed from then on) instead of being sent.  A
piece already verified and unchanged is read on the event loop when the page cache holds it
(:mod:`thetadist.store.cached_read`), else in a worker thread.
By default nothing is hashed up front, so seeding a 60 GB build starts at once, and a piece
served to many peers is hashed once; :meth:`DirectorySource.check_all` (``seed --check``)
instead hashes everything on every core before serving, as BitTorrent clients check their
data on start, so that serving never hashes.  A fetcher serves from its own store, whose
pieces were verified before they were written.
"""

from __future__ import annotations

import os
import stat
import threading
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import trio

from thetadist.errors import IntegrityError, StoreError
from thetadist.manifest.model import Manifest, Piece
from thetadist.store import PieceStore
from thetadist.store.cached_read import pread_cached
from thetadist.wire import Bitfield, PayloadPool

#: Bytes of one file one up-front check task reads (tasks of a big file run in parallel).
CHECK_TASK_BYTES = 64 * 1024 * 1024


class PieceSource(Protocol):
    def has_piece(self, index: int) -> bool: ...

    def bitfield(self) -> bytes: ...

    async def read_piece(self, index: int, buffers: PayloadPool | None = None) -> bytes | bytearray:
        """The piece's bytes, verified against the manifest; raises IntegrityError/StoreError.
        A ``bytearray`` may come from ``buffers`` (the caller gives it back once sent)."""
        ...


class StoreSource:
    """Serve the pieces a fetch already has (each was verified before it was stored)."""

    def __init__(self, store: PieceStore) -> None:
        self._store = store

    def has_piece(self, index: int) -> bool:
        return self._store.has_piece(index)

    def bitfield(self) -> bytes:
        return self._store.bitfield()

    async def read_piece(self, index: int, buffers: PayloadPool | None = None) -> bytes | bytearray:
        if buffers is None:
            return await self._store.read_piece(index)
        buffer = buffers.take(self._store.manifest.pieces[index].size)
        data = await self._store.read_piece(index, buffer=buffer)
        if data is not buffer:
            buffers.give_back(buffer)  # not in the page cache: read into a buffer of its own
        return data


class DirectorySource:
    """Serve a directory that holds a build described by ``manifest``."""

    def __init__(self, manifest: Manifest, root: str | os.PathLike[str], *, threads: int = 4):
        self.manifest = manifest
        self.root = Path(root)
        self._present = bytearray(len(manifest.pieces))
        #: piece -> its file's (inode, size, mtime) when the piece's bytes were hashed
        self._verified_as: dict[int, tuple[int, int, int]] = {}
        self._limiter = trio.CapacityLimiter(threads)
        available = set()
        for file_index, entry in enumerate(manifest.files):
            try:
                info = os.lstat(self.root / entry.path)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode) and info.st_size == entry.size:
                available.add(file_index)
        for piece in manifest.pieces:
            if piece.file_index in available:
                self._present[piece.index] = 1

    @property
    def pieces_available(self) -> int:
        return sum(self._present)

    def has_piece(self, index: int) -> bool:
        return bool(self._present[index])

    def bitfield(self) -> bytes:
        present = self._present
        return Bitfield.from_pieces(
            len(present), (i for i in range(len(present)) if present[i])
        ).bits

    def withdraw(self, index: int) -> None:
        self._present[index] = 0

    def check_all(
        self, *, workers: int | None = None, stop: threading.Event | None = None
    ) -> tuple[int, int]:
        """Hash every available piece now, on ``workers`` threads (default: every core), and
        withdraw those that fail; returns (pieces checked, pieces withdrawn).  Call it before
        serving: afterwards a piece is hashed again only if its file changes.  Setting
        ``stop`` ends the check after the pieces being hashed (the rest stay unchecked and
        are hashed as they are served)."""
        stop = stop or threading.Event()
        by_file: dict[int, list[Piece]] = defaultdict(list)
        for piece in self.manifest.pieces:
            if self._present[piece.index]:
                by_file[piece.file_index].append(piece)
        tasks: list[list[Piece]] = []
        for pieces in by_file.values():
            task: list[Piece] = []
            task_bytes = 0
            for piece in pieces:
                if task and task_bytes + piece.size > CHECK_TASK_BYTES:
                    tasks.append(task)
                    task, task_bytes = [], 0
                task.append(piece)
                task_bytes += piece.size
            tasks.append(task)
        checked = withdrawn = 0
        with ThreadPoolExecutor(workers or os.cpu_count() or 1, "seed-check") as pool:
            for outcome in pool.map(lambda task: self._check_pieces(task, stop), tasks):
                for index, identity in outcome:
                    checked += 1
                    if identity is None:
                        self.withdraw(index)
                        withdrawn += 1
                    else:
                        self._verified_as[index] = identity
        return checked, withdrawn

    def _check_pieces(
        self, pieces: Sequence[Piece], stop: threading.Event
    ) -> list[tuple[int, tuple[int, int, int] | None]]:
        """Each piece with its file's identity if it checks out, None if not; a file that
        changes meanwhile is left to be checked as it is served."""
        path = self.root / self.manifest.files[pieces[0].file_index].path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return [(piece.index, None) for piece in pieces]
        try:
            before = os.fstat(fd)
            identity = (before.st_ino, before.st_size, before.st_mtime_ns)
            outcome: list[tuple[int, tuple[int, int, int] | None]] = []
            for piece in pieces:
                if stop.is_set():
                    break
                try:
                    self.manifest.check_piece(piece, os.pread(fd, piece.size, piece.offset))
                    outcome.append((piece.index, identity))
                except (IntegrityError, OSError):
                    outcome.append((piece.index, None))
            after = os.fstat(fd)
        finally:
            os.close(fd)
        if (after.st_ino, after.st_size, after.st_mtime_ns) != identity:
            return []
        return outcome

    async def read_piece(self, index: int, buffers: PayloadPool | None = None) -> bytes | bytearray:
        cached = self._read_cached(index, buffers)
        if cached is None:
            return await trio.to_thread.run_sync(self._read, index, limiter=self._limiter)
        await trio.lowlevel.checkpoint()
        return cached

    def _read_cached(self, index: int, buffers: PayloadPool | None) -> bytearray | None:
        """A piece already verified, unchanged since and all in the page cache, or None."""
        verified = self._verified_as.get(index)
        if verified is None:
            return None
        piece = self.manifest.pieces[index]
        path = self.root / self.manifest.files[piece.file_index].path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if (info.st_ino, info.st_size, info.st_mtime_ns) != verified:
                return None
            if buffers is None:
                return pread_cached(fd, piece.size, piece.offset)
            buffer = buffers.take(piece.size)
            cached = pread_cached(fd, piece.size, piece.offset, buffer)
            if cached is None:
                buffers.give_back(buffer)  # not in the page cache: read into one of its own
            return cached
        except OSError:
            return None  # the worker thread's read reports it properly
        finally:
            os.close(fd)

    def _read(self, index: int) -> bytes:
        piece = self.manifest.pieces[index]
        path = self.root / self.manifest.files[piece.file_index].path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                info = os.fstat(fd)
                data = os.pread(fd, piece.size, piece.offset)
            finally:
                os.close(fd)
        except OSError as exc:
            self.withdraw(index)
            raise StoreError(f"cannot read {os.fspath(path)!r}: {exc.strerror}") from None
        identity = (info.st_ino, info.st_size, info.st_mtime_ns)
        if self._verified_as.get(index) != identity:
            try:
                self.manifest.check_piece(piece, data)
            except IntegrityError:
                self.withdraw(index)
                raise
            self._verified_as[index] = identity
        return data
