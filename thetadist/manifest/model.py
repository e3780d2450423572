"""The manifest: a canonical, bencoded description of a tree of files cut into chunks.

Chunks (content-defined by default) are the unit of deduplication and verification; pieces,
runs of consecutive chunks of one file up to ``piece_size`` bytes, are the unit of
availability, transfer and payment.  Pieces are derived from the chunk table, never stored,
so they cannot contradict it.  The format is specified in docs/manifest.md.
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import blake3

from thetadist.errors import IntegrityError, ManifestError
from thetadist.manifest import bencoding
from thetadist.manifest.paths import check_no_prefix_conflicts, validate_path

FORMAT_VERSION = 1
DIGEST_SIZE = 32
HASH_ALGORITHM = b"blake3"
MIN_PIECE_SIZE = 64 * 1024
MAX_PIECE_SIZE = 64 * 1024 * 1024
DEFAULT_PIECE_SIZE = 1024 * 1024
MAX_LABEL_BYTES = 256
ChunkerAlgorithm = Literal["fastcdc", "fixed"]


@dataclass(frozen=True)
class ChunkerParams:
    """How files were cut.  ``fixed`` uses ``avg_size`` for every chunk but a file's last."""

    algorithm: ChunkerAlgorithm = "fastcdc"
    avg_size: int = 16 * 1024
    min_size: int = 4 * 1024
    max_size: int = 64 * 1024

    @classmethod
    def fastcdc(cls, avg_size: int = 16 * 1024) -> ChunkerParams:
        return cls("fastcdc", avg_size, avg_size // 4, avg_size * 4)

    @classmethod
    def fixed(cls, size: int = 1024 * 1024) -> ChunkerParams:
        return cls("fixed", size, size, size)

    def validate(self) -> None:
        if self.algorithm == "fastcdc":
            # The bounds pyfastcdc accepts.
            ok = (
                256 <= self.avg_size <= 4 << 20
                and 64 <= self.min_size <= 1 << 20
                and 1024 <= self.max_size <= 16 << 20
                and self.min_size <= self.avg_size <= self.max_size
            )
        elif self.algorithm == "fixed":
            ok = (
                4096 <= self.avg_size <= 16 << 20
                and self.min_size == self.max_size == self.avg_size
            )
        else:
            raise ManifestError(f"unknown chunker {self.algorithm!r}")
        if not ok:
            raise ManifestError(
                f"chunker sizes out of bounds: {self.algorithm} min={self.min_size} "
                f"avg={self.avg_size} max={self.max_size}"
            )


@dataclass(frozen=True)
class ManifestLimits:
    """Bounds applied to untrusted manifests; raise them deliberately for huge trees."""

    max_bytes: int = 512 * 1024 * 1024
    max_files: int = 2_000_000
    max_directories: int = 1_000_000
    max_chunks: int = 12_000_000


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    executable: bool
    first_chunk: int
    chunk_count: int


@dataclass(frozen=True)
class Piece:
    index: int
    file_index: int
    first_chunk: int
    chunk_count: int
    offset: int
    size: int


@dataclass(frozen=True)
class FileSpec:
    """A file as the chunker produced it, before it has a place in the chunk table."""

    path: str
    size: int
    executable: bool
    digests: bytes
    sizes: Sequence[int] = field(repr=False)
    #: Chunks that are a slice of a previous version's chunk: (position in this file, source).
    derived: Sequence[tuple[int, DerivedSource]] = ()


@dataclass(frozen=True)
class DerivedSource:
    """Where a chunk can be rebuilt from a previous version: bytes ``[offset, offset + size)``
    of the chunk whose BLAKE3 is ``digest`` (``size`` is the derived chunk's own size).  A
    hint only: whatever is rebuilt is checked against the derived chunk's own digest."""

    digest: bytes
    offset: int


#: One packed record of the ``derived chunks`` table: chunk index, source digest, offset.
_DERIVED_RECORD = struct.Struct(">I32sI")


def pack_u32s(values: array[int]) -> bytes:
    """``values`` (array ``"I"``) as packed unsigned 32-bit big-endian integers, in C."""
    if sys.byteorder == "little":
        swapped = array("I", values)
        swapped.byteswap()
        return swapped.tobytes()
    return values.tobytes()


def unpack_u32s(raw: bytes) -> array[int]:
    sizes = array("I")
    sizes.frombytes(raw)
    if sys.byteorder == "little":
        sizes.byteswap()
    return sizes


class Manifest:
    """An immutable, validated manifest.  Build one with :func:`thetadist.create_manifest`
    or :meth:`Manifest.from_files`; read one with :meth:`Manifest.load` / :meth:`decode`."""

    def __init__(
        self,
        *,
        name: str,
        version: str,
        chunker: ChunkerParams,
        files: Sequence[FileEntry],
        chunk_digests: bytes,
        chunk_sizes: array[int],
        directories: Sequence[str] = (),
        piece_size: int = DEFAULT_PIECE_SIZE,
        previous: bytes | None = None,
        signatures: Mapping[bytes, bytes] | None = None,
        derived: Mapping[int, DerivedSource] | None = None,
        limits: ManifestLimits = ManifestLimits(),
    ) -> None:
        self.name = name
        self.version = version
        self.chunker = chunker
        self.files: tuple[FileEntry, ...] = tuple(files)
        self.directories: tuple[str, ...] = tuple(directories)
        self.chunk_digests = bytes(chunk_digests)
        self.chunk_sizes = array("I", chunk_sizes)
        self.piece_size = piece_size
        self.previous = previous
        self.signatures: dict[bytes, bytes] = dict(signatures or {})
        self.derived: dict[int, DerivedSource] = dict(sorted((derived or {}).items()))
        self._validate(limits)

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_files(
        cls,
        specs: Sequence[FileSpec],
        *,
        name: str,
        version: str,
        chunker: ChunkerParams,
        directories: Sequence[str] = (),
        piece_size: int = DEFAULT_PIECE_SIZE,
        previous: bytes | None = None,
    ) -> Manifest:
        ordered = sorted(specs, key=lambda spec: spec.path.encode("utf-8"))
        entries: list[FileEntry] = []
        sizes = array("I")
        derived: dict[int, DerivedSource] = {}
        for spec in ordered:
            entries.append(
                FileEntry(spec.path, spec.size, spec.executable, len(sizes), len(spec.sizes))
            )
            derived.update((len(sizes) + position, source) for position, source in spec.derived)
            sizes.extend(spec.sizes)
        # One join, no intermediate buffer: the table is the bulk of a big manifest's memory.
        digests = b"".join(spec.digests for spec in ordered)
        return cls(
            name=name,
            version=version,
            chunker=chunker,
            files=entries,
            chunk_digests=digests,
            chunk_sizes=sizes,
            directories=sorted(directories, key=lambda p: p.encode("utf-8")),
            piece_size=piece_size,
            previous=previous,
            derived=derived,
        )

    def with_signatures(self, signatures: Mapping[bytes, bytes]) -> Manifest:
        return Manifest(
            name=self.name,
            version=self.version,
            chunker=self.chunker,
            files=self.files,
            chunk_digests=self.chunk_digests,
            chunk_sizes=self.chunk_sizes,
            directories=self.directories,
            piece_size=self.piece_size,
            previous=self.previous,
            signatures={**self.signatures, **signatures},
            derived=self.derived,
        )

    # ----------------------------------------------------------------- validation

    def _validate(self, limits: ManifestLimits) -> None:
        for label, text in (("name", self.name), ("version", self.version)):
            if len(text.encode("utf-8")) > MAX_LABEL_BYTES or any(ord(c) < 0x20 for c in text):
                raise ManifestError(f"{label} is too long or contains control characters")
        self.chunker.validate()
        if not MIN_PIECE_SIZE <= self.piece_size <= MAX_PIECE_SIZE:
            raise ManifestError(f"piece size {self.piece_size} out of bounds")
        if self.previous is not None and len(self.previous) != DIGEST_SIZE:
            raise ManifestError("previous manifest id must be 32 bytes")
        if len(self.files) > limits.max_files:
            raise ManifestError(f"more than {limits.max_files} files")
        if len(self.directories) > limits.max_directories:
            raise ManifestError(f"more than {limits.max_directories} empty directories")
        chunk_count = len(self.chunk_sizes)
        if chunk_count > limits.max_chunks:
            raise ManifestError(f"more than {limits.max_chunks} chunks")
        if len(self.chunk_digests) != chunk_count * DIGEST_SIZE:
            raise ManifestError("chunk digest table and chunk size table differ in length")
        for key, signature in self.signatures.items():
            if len(key) != 32 or len(signature) != 64:
                raise ManifestError("signature entries must be a 32-byte key and 64-byte signature")
        self._validate_files(chunk_count)
        self._validate_chunk_sizes()
        for index, source in self.derived.items():
            if not 0 <= index < chunk_count:
                raise ManifestError(f"derived chunk {index} is not in the chunk table")
            if len(source.digest) != DIGEST_SIZE or not (
                0 <= source.offset <= 0xFFFFFFFF - self.chunk_sizes[index]
            ):
                raise ManifestError(f"derived chunk {index} has a malformed source")

    def _validate_files(self, chunk_count: int) -> None:
        previous_path: bytes | None = None
        next_chunk = 0
        sizes = self.chunk_sizes
        for entry in self.files:
            validate_path(entry.path.encode("utf-8"))
            encoded = entry.path.encode("utf-8")
            if previous_path is not None and encoded <= previous_path:
                raise ManifestError("files are not sorted by path, or a path is duplicated")
            previous_path = encoded
            if entry.size < 0 or entry.chunk_count < 0:
                raise ManifestError(f"negative size or chunk count for {entry.path!r}")
            if entry.first_chunk != next_chunk:
                raise ManifestError("file chunk ranges are not consecutive")
            end = next_chunk + entry.chunk_count
            if end > chunk_count:
                raise ManifestError(f"file {entry.path!r} names more chunks than the table holds")
            if sum(sizes[next_chunk:end]) != entry.size:
                raise ManifestError(f"chunk sizes of {entry.path!r} do not add up to its size")
            if (entry.size == 0) != (entry.chunk_count == 0):
                raise ManifestError(f"empty file {entry.path!r} must have no chunks")
            next_chunk = end
        if next_chunk != chunk_count:
            raise ManifestError("chunk table has chunks that belong to no file")
        previous_dir: bytes | None = None
        for directory in self.directories:
            encoded = directory.encode("utf-8")
            validate_path(encoded)
            if previous_dir is not None and encoded <= previous_dir:
                raise ManifestError("directories are not sorted, or one is duplicated")
            previous_dir = encoded
        check_no_prefix_conflicts([e.path for e in self.files], list(self.directories))

    def _validate_chunk_sizes(self) -> None:
        sizes = self.chunk_sizes
        if not sizes:
            return
        # No minimum: a patch cuts its chunks where the new content starts and ends (see
        # docs/manifest.md), and the chunk count limit already bounds the table.
        if min(sizes) < 1 or max(sizes) > self.chunker.max_size:
            raise ManifestError("a chunk is empty or larger than the chunker's maximum")

    # ----------------------------------------------------------------- derived data

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.files)

    @property
    def chunk_count(self) -> int:
        return len(self.chunk_sizes)

    def chunk_digest(self, index: int) -> bytes:
        start = index * DIGEST_SIZE
        return self.chunk_digests[start : start + DIGEST_SIZE]

    def file_chunks(self, file_index: int) -> Iterator[tuple[int, int, int]]:
        """Yield ``(chunk_index, offset_in_file, size)`` for every chunk of a file."""
        entry = self.files[file_index]
        offset = 0
        sizes = self.chunk_sizes
        for index in range(entry.first_chunk, entry.first_chunk + entry.chunk_count):
            size = sizes[index]
            yield index, offset, size
            offset += size

    @cached_property
    def pieces(self) -> tuple[Piece, ...]:
        """Greedy runs of consecutive chunks of one file, each at most ``piece_size`` bytes
        (or one chunk, if a single chunk is larger)."""
        pieces: list[Piece] = []
        sizes = self.chunk_sizes
        limit = self.piece_size
        for file_index, entry in enumerate(self.files):
            first = entry.first_chunk
            start_offset = 0
            run_size = 0
            run_first = first
            offset = 0
            for index in range(first, first + entry.chunk_count):
                size = sizes[index]
                if run_size and run_size + size > limit:
                    pieces.append(
                        Piece(
                            len(pieces),
                            file_index,
                            run_first,
                            index - run_first,
                            start_offset,
                            run_size,
                        )
                    )
                    run_first, start_offset, run_size = index, offset, 0
                run_size += size
                offset += size
            if run_size:
                pieces.append(
                    Piece(
                        len(pieces),
                        file_index,
                        run_first,
                        first + entry.chunk_count - run_first,
                        start_offset,
                        run_size,
                    )
                )
        return tuple(pieces)

    def check_piece(self, piece: Piece, data: bytes | bytearray | memoryview) -> None:
        """Raise :class:`IntegrityError` unless ``data`` is exactly the piece's chunks."""
        self.check_run(piece, 0, piece.chunk_count, data)

    def check_run(
        self,
        piece: Piece,
        first_chunk: int,
        chunk_count: int,
        data: bytes | bytearray | memoryview,
    ) -> None:
        """Raise :class:`IntegrityError` unless ``data`` is exactly chunks ``first_chunk`` to
        ``first_chunk + chunk_count`` of the piece."""
        view = memoryview(data).cast("B")
        sizes, digests = self.chunk_sizes, self.chunk_digests
        start = piece.first_chunk + first_chunk
        expected = sum(sizes[start : start + chunk_count])
        if len(view) != expected:
            raise IntegrityError(
                f"piece {piece.index} chunks {first_chunk}+{chunk_count} have {len(view)} "
                f"bytes, the manifest says {expected}"
            )
        offset = 0
        for chunk in range(start, start + chunk_count):
            size = sizes[chunk]
            if (
                blake3.blake3(view[offset : offset + size]).digest()
                != digests[chunk * DIGEST_SIZE : (chunk + 1) * DIGEST_SIZE]
            ):
                raise IntegrityError(f"piece {piece.index} failed its hash (chunk {chunk})")
            offset += size

    def file_digest(self, file_index: int) -> bytes:
        """Identity of a file's content: BLAKE3 over its chunk digests (used for renames)."""
        entry = self.files[file_index]
        start = entry.first_chunk * DIGEST_SIZE
        table = self.chunk_digests[start : start + entry.chunk_count * DIGEST_SIZE]
        return blake3.blake3(entry.size.to_bytes(8, "big") + table).digest()

    # ----------------------------------------------------------------- encoding

    def _as_value(self, with_signatures: bool) -> dict[bytes, bencoding.Value]:
        files: list[bencoding.Value] = []
        for entry in self.files:
            item: dict[bytes, bencoding.Value] = {
                b"chunks": entry.chunk_count,
                b"path": entry.path.encode("utf-8"),
                b"size": entry.size,
            }
            if entry.executable:
                item[b"executable"] = 1
            files.append(item)
        value: dict[bytes, bencoding.Value] = {
            b"chunk hashes": self.chunk_digests,
            b"chunk sizes": pack_u32s(self.chunk_sizes),
            b"chunker": {
                b"algorithm": self.chunker.algorithm.encode(),
                b"avg": self.chunker.avg_size,
                b"max": self.chunker.max_size,
                b"min": self.chunker.min_size,
            },
            b"files": files,
            b"format": FORMAT_VERSION,
            b"hash": HASH_ALGORITHM,
            b"name": self.name.encode("utf-8"),
            b"piece size": self.piece_size,
            b"total size": self.total_size,
            b"version": self.version.encode("utf-8"),
        }
        if self.directories:
            value[b"directories"] = [d.encode("utf-8") for d in self.directories]
        if self.previous is not None:
            value[b"previous"] = self.previous
        if self.derived:
            value[b"derived chunks"] = b"".join(
                _DERIVED_RECORD.pack(index, source.digest, source.offset)
                for index, source in self.derived.items()
            )
        if with_signatures and self.signatures:
            value[b"signatures"] = dict(self.signatures)
        return value

    def unsigned_bytes(self) -> bytes:
        return bencoding.encode(self._as_value(with_signatures=False))

    def encode(self) -> bytes:
        return bencoding.encode(self._as_value(with_signatures=True))

    @cached_property
    def id(self) -> bytes:
        """The swarm identity: BLAKE3 of the canonical bytes without signatures."""
        return blake3.blake3(self.unsigned_bytes()).digest()

    @property
    def id_hex(self) -> str:
        return self.id.hex()

    @property
    def info_hash(self) -> bytes:
        """20-byte key for BitTorrent trackers: the first 20 bytes of the manifest id."""
        return self.id[:20]

    @classmethod
    def decode(
        cls,
        data: bytes,
        *,
        trust: Sequence[bytes] = (),
        limits: ManifestLimits = ManifestLimits(),
    ) -> Manifest:
        """Decode and validate untrusted bytes; raise :class:`ManifestError` on anything off.

        Every signature present must verify; each key in ``trust`` must have signed.
        """
        from thetadist.manifest.signing import verify_manifest_signatures

        if len(data) > limits.max_bytes:
            raise ManifestError(f"manifest larger than {limits.max_bytes} bytes")
        value = bencoding.decode(
            data,
            bencoding.DecodeLimits(max_items=limits.max_files * 6 + limits.max_directories + 64),
        )
        manifest = _from_value(value, limits)
        if manifest.encode() != bytes(data):
            raise ManifestError("manifest is not in canonical form")
        verify_manifest_signatures(manifest, trust)
        return manifest

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        trust: Sequence[bytes] = (),
        limits: ManifestLimits = ManifestLimits(),
    ) -> Manifest:
        try:
            with open(path, "rb") as handle:
                data = handle.read(limits.max_bytes + 1)
        except OSError as exc:
            raise ManifestError(
                f"cannot read manifest {os.fspath(path)!r}: {exc.strerror}"
            ) from None
        return cls.decode(data, trust=trust, limits=limits)

    def save(self, path: str | os.PathLike[str]) -> int:
        """Write the manifest atomically (temporary file, fsync, rename); return its size."""
        from thetadist.store.atomic import atomic_write_bytes

        data = self.encode()
        atomic_write_bytes(Path(path), data)
        return len(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Manifest) and self.encode() == other.encode()

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return (
            f"Manifest(name={self.name!r}, version={self.version!r}, files={len(self.files)}, "
            f"chunks={self.chunk_count}, id={self.id_hex[:16]}…)"
        )


_TOP_KEYS = {
    b"chunk hashes",
    b"derived chunks",
    b"chunk sizes",
    b"chunker",
    b"directories",
    b"files",
    b"format",
    b"hash",
    b"name",
    b"piece size",
    b"previous",
    b"signatures",
    b"total size",
    b"version",
}
_REQUIRED_KEYS = _TOP_KEYS - {b"derived chunks", b"directories", b"previous", b"signatures"}


def _want(value: object, kind: type, what: str) -> object:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestError(f"{what} has the wrong type")
    return value


def _int(value: object, what: str, low: int = 0, high: int = 1 << 63) -> int:
    number = _want(value, int, what)
    assert isinstance(number, int)
    if not low <= number <= high:
        raise ManifestError(f"{what} {number} out of bounds")
    return number


def _bytes(value: object, what: str) -> bytes:
    raw = _want(value, bytes, what)
    assert isinstance(raw, bytes)
    return raw


def _label(value: object, what: str) -> str:
    try:
        return _bytes(value, what).decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError(f"{what} is not UTF-8") from None


def _from_value(value: bencoding.Value, limits: ManifestLimits) -> Manifest:
    if not isinstance(value, dict):
        raise ManifestError("manifest is not a dictionary")
    unknown = set(value) - _TOP_KEYS
    if unknown:
        raise ManifestError(f"unknown manifest key {min(unknown)!r}")
    missing = _REQUIRED_KEYS - set(value)
    if missing:
        raise ManifestError(f"manifest lacks key {min(missing)!r}")
    if _int(value[b"format"], "format") != FORMAT_VERSION:
        raise ManifestError(f"unsupported manifest format {value[b'format']!r}")
    if value[b"hash"] != HASH_ALGORITHM:
        raise ManifestError("unsupported hash algorithm")
    chunker_value = value[b"chunker"]
    if not isinstance(chunker_value, dict) or set(chunker_value) != {
        b"algorithm",
        b"avg",
        b"max",
        b"min",
    }:
        raise ManifestError("chunker must have exactly algorithm, avg, min and max")
    algorithm = _bytes(chunker_value[b"algorithm"], "chunker algorithm")
    if algorithm not in (b"fastcdc", b"fixed"):
        raise ManifestError(f"unknown chunker {algorithm[:32]!r}")
    chunker = ChunkerParams(
        "fastcdc" if algorithm == b"fastcdc" else "fixed",
        _int(chunker_value[b"avg"], "chunker avg", 1, 1 << 32),
        _int(chunker_value[b"min"], "chunker min", 1, 1 << 32),
        _int(chunker_value[b"max"], "chunker max", 1, 1 << 32),
    )
    raw_sizes = _bytes(value[b"chunk sizes"], "chunk sizes")
    if len(raw_sizes) % 4:
        raise ManifestError("chunk size table length is not a multiple of 4")
    if len(raw_sizes) // 4 > limits.max_chunks:
        raise ManifestError(f"more than {limits.max_chunks} chunks")
    files_value = _want(value[b"files"], list, "files")
    assert isinstance(files_value, list)
    if len(files_value) > limits.max_files:
        raise ManifestError(f"more than {limits.max_files} files")
    entries: list[FileEntry] = []
    next_chunk = 0
    for item in files_value:
        if not isinstance(item, dict):
            raise ManifestError("file entry is not a dictionary")
        keys = set(item)
        if (
            not {b"chunks", b"path", b"size"}
            <= keys
            <= {b"chunks", b"path", b"size", b"executable"}
        ):
            raise ManifestError("file entry has missing or unknown keys")
        path = validate_path(_bytes(item[b"path"], "file path"))
        if b"executable" in item and _int(item[b"executable"], "executable flag", 1, 1) != 1:
            raise ManifestError("executable flag must be 1 when present")
        count = _int(item[b"chunks"], "chunk count", 0, limits.max_chunks)
        entries.append(
            FileEntry(
                path, _int(item[b"size"], "file size"), b"executable" in item, next_chunk, count
            )
        )
        next_chunk += count
    directories_value = _want(value.get(b"directories", []), list, "directories")
    assert isinstance(directories_value, list)
    if len(directories_value) > limits.max_directories:
        raise ManifestError(f"more than {limits.max_directories} empty directories")
    directories = [validate_path(_bytes(d, "directory")) for d in directories_value]
    previous = value.get(b"previous")
    derived = _derived_from(
        _bytes(value.get(b"derived chunks", b""), "derived chunks"), len(raw_sizes) // 4
    )
    signatures_value = _want(value.get(b"signatures", {}), dict, "signatures")
    assert isinstance(signatures_value, dict)
    signatures = {key: _bytes(sig, "signature") for key, sig in signatures_value.items()}
    manifest = Manifest(
        name=_label(value[b"name"], "name"),
        version=_label(value[b"version"], "version"),
        chunker=chunker,
        files=entries,
        chunk_digests=_bytes(value[b"chunk hashes"], "chunk hashes"),
        chunk_sizes=unpack_u32s(raw_sizes),
        directories=directories,
        piece_size=_int(value[b"piece size"], "piece size"),
        previous=None if previous is None else _bytes(previous, "previous"),
        signatures=signatures,
        derived=derived,
        limits=limits,
    )
    if _int(value[b"total size"], "total size") != manifest.total_size:
        raise ManifestError("total size does not match the sum of file sizes")
    return manifest


def _derived_from(raw: bytes, chunk_count: int) -> dict[int, DerivedSource]:
    """The ``derived chunks`` table: records in strictly increasing chunk order, each for a
    chunk of the table.  Checked record by record, before anything is built for the next,
    so a hostile table costs no more than the chunk table it claims to annotate."""
    if len(raw) % _DERIVED_RECORD.size:
        raise ManifestError("derived chunk table length is not a multiple of its record size")
    if len(raw) // _DERIVED_RECORD.size > chunk_count:
        raise ManifestError("more derived chunks than chunks")
    derived: dict[int, DerivedSource] = {}
    last = -1
    for index, digest, offset in _DERIVED_RECORD.iter_unpack(raw):
        if index <= last:
            raise ManifestError("derived chunks are not in increasing order")
        if index >= chunk_count:
            raise ManifestError(f"derived chunk {index} is not in the chunk table")
        derived[index] = DerivedSource(digest, offset)
        last = index
    return derived
