"""The resume journal: an append-only record of which pieces are on disk.

Layout (all integers little-endian)::

    header  64 bytes: magic "TDJOURNL", u32 format, u32 record size (8), 32-byte manifest id,
                      u32 piece count, u32 file count, 8-byte BLAKE3 of the preceding 56 bytes
    record   8 bytes: u8 kind, u32 index, 3-byte check

The check is CRC-32 over (manifest id[:8], kind, index), truncated to 3 bytes, so a torn,
zero-filled or foreign record is recognised.  Replay stops at the first record that fails
its check or names an index out of range: that record and everything after it is dropped
(never trusted) and the file is truncated there.

Kinds:

``PIECE``       a verified piece was pwritten into its staging file.  Appended with a plain
                ``write`` right after ``pwrite`` returned, without fsync: the page cache
                survives SIGKILL, so a killed process loses at most the pieces in flight.
``FILE_FINAL``  a file was fsynced and renamed to its final name (and its directory fsynced).
``SESSION``     a process opened the journal; the index is a 32-bit tag of the kernel boot id.
``SYNCED``      every staging file written so far and the journal were fsynced.

Power loss (unlike SIGKILL) can lose page-cache data whose journal record did reach the disk.
So after a reboot the ``PIECE`` records written after the last ``SYNCED`` of an older boot are
*suspect*: the store re-hashes exactly those pieces (bounded by the sync interval) instead of
trusting them.  In the boot that wrote them they are trusted as they are.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from thetadist.errors import StoreError

MAGIC = b"TDJOURNL"
FORMAT = 1
HEADER = struct.Struct("<8sII32sII")
HEADER_SIZE = HEADER.size + 8  # 64
RECORD = struct.Struct("<BI3s")
RECORD_SIZE = RECORD.size  # 8
_KIND_INDEX = struct.Struct("<BI")

PIECE = 1
FILE_FINAL = 2
SESSION = 3
SYNCED = 4

_READ_BLOCK = 1 << 20


def boot_tag() -> int:
    """A 32-bit tag of the running kernel's boot; 0 when unknown (then nothing is trusted
    across sessions without a ``SYNCED`` record)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as handle:
            raw = handle.read().strip()
    except OSError:
        return 0
    return zlib.crc32(raw) or 1


def _header(manifest_id: bytes, pieces: int, files: int) -> bytes:
    body = HEADER.pack(MAGIC, FORMAT, RECORD_SIZE, manifest_id, pieces, files)
    return body + blake3.blake3(body).digest()[:8]


@dataclass
class Replay:
    """What a journal says, after the bad tail was dropped."""

    present: bytearray
    final: bytearray
    #: pieces recorded after the last SYNCED by a session of an earlier boot: re-verify
    suspect: list[int] = field(default_factory=list)
    #: pieces recorded after the last SYNCED in this boot: trusted, but not yet fsynced
    unsynced: list[int] = field(default_factory=list)
    records: int = 0
    dropped_bytes: int = 0
    fresh: bool = False


class Journal:
    """An open journal file.  Not thread-safe: the store serialises appends under its lock."""

    def __init__(self, path: Path, fd: int, manifest_id: bytes, pieces: int, files: int) -> None:
        self.path = path
        self._fd = fd
        self._salt = manifest_id[:8]
        self._manifest_id = manifest_id
        self._pieces = pieces
        self._files = files
        self.size = os.fstat(fd).st_size

    # ----------------------------------------------------------------- encoding

    def record(self, kind: int, index: int) -> bytes:
        packed = _KIND_INDEX.pack(kind, index)
        check = zlib.crc32(packed, zlib.crc32(self._salt)).to_bytes(4, "little")[:3]
        return packed + check

    # ----------------------------------------------------------------- open / replay

    @classmethod
    def open(
        cls, path: Path, manifest_id: bytes, pieces: int, files: int
    ) -> tuple[Journal, Replay]:
        """Open (or create) the journal, replay it and append a ``SESSION`` record.

        A journal of another manifest, or with a damaged header, is replaced by a fresh one.
        """
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open journal {os.fspath(path)!r}: {exc.strerror}") from None
        try:
            journal = cls(path, fd, manifest_id, pieces, files)
            replay = journal._replay(boot_tag())
            journal.append([journal.record(SESSION, boot_tag())])
        except BaseException:
            os.close(fd)
            raise
        return journal, replay

    def _replay(self, tag_now: int) -> Replay:
        replay = Replay(bytearray(self._pieces), bytearray(self._files))
        header = _header(self._manifest_id, self._pieces, self._files)
        existing = os.pread(self._fd, HEADER_SIZE, 0)
        if existing != header:
            self._reset(header)
            replay.fresh = True
            return replay
        pending: dict[int, int] = {}
        session_tag = 0
        position = HEADER_SIZE
        end = self.size
        good_end = HEADER_SIZE
        present, final = replay.present, replay.final
        record = self.record
        while position < end:
            block = os.pread(self._fd, min(_READ_BLOCK, end - position), position)
            if not block:
                break
            usable = len(block) - len(block) % RECORD_SIZE
            bad = False
            for offset in range(0, usable, RECORD_SIZE):
                raw = block[offset : offset + RECORD_SIZE]
                kind, index, _check = RECORD.unpack(raw)
                if record(kind, index) != raw:
                    bad = True
                    break
                if kind == PIECE and index < self._pieces:
                    present[index] = 1
                    pending[index] = session_tag
                elif kind == FILE_FINAL and index < self._files:
                    final[index] = 1
                elif kind == SESSION:
                    session_tag = index
                elif kind == SYNCED:
                    pending.clear()
                else:
                    bad = True
                    break
                good_end += RECORD_SIZE
                replay.records += 1
            if bad or usable < len(block):
                break  # a bad record, or a torn final record
            position += usable
        if good_end != end:
            replay.dropped_bytes = end - good_end
            try:
                os.ftruncate(self._fd, good_end)
            except OSError as exc:
                raise StoreError(
                    f"cannot repair journal {os.fspath(self.path)!r}: {exc.strerror}"
                ) from None
            self.size = good_end
        for index, tag in pending.items():
            if tag == tag_now and tag != 0:
                replay.unsynced.append(index)
            else:
                replay.suspect.append(index)
        return replay

    def _reset(self, header: bytes) -> None:
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, header, 0)
            os.fsync(self._fd)
        except OSError as exc:
            raise StoreError(
                f"cannot write journal {os.fspath(self.path)!r}: {exc.strerror}"
            ) from None
        self.size = HEADER_SIZE

    # ----------------------------------------------------------------- writing

    def append(self, records: list[bytes]) -> None:
        """Append whole records with one ``write`` at the journal's end (no fsync)."""
        if not records:
            return
        data = b"".join(records)
        try:
            written = os.pwrite(self._fd, data, self.size)
        except OSError as exc:
            raise StoreError(
                f"cannot write journal {os.fspath(self.path)!r}: {exc.strerror}"
            ) from None
        if written != len(data):
            # Keep the file a whole number of records; the short tail is dropped at replay.
            self.size += written - written % RECORD_SIZE
            raise StoreError(f"cannot write journal {os.fspath(self.path)!r}: short write")
        self.size += written

    def sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise StoreError(
                f"cannot sync journal {os.fspath(self.path)!r}: {exc.strerror}"
            ) from None

    def rewrite(self, records: list[bytes]) -> None:
        """Atomically replace the journal with a header and ``records`` (compaction)."""
        temporary = self.path.with_name(self.path.name + ".new")
        header = _header(self._manifest_id, self._pieces, self._files)
        try:
            fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                data = header + b"".join(records)
                view = memoryview(data)
                done = 0
                while done < len(data):
                    done += os.pwrite(fd, view[done:], done)
                os.fsync(fd)
                os.replace(temporary, self.path)
                dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            except BaseException:
                os.close(fd)
                raise
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise StoreError(
                f"cannot rewrite journal {os.fspath(self.path)!r}: {exc.strerror}"
            ) from None
        os.close(self._fd)
        self._fd = fd
        self.size = len(data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def fd(self) -> int:
        return self._fd
