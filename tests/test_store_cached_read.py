"""Reads on the event loop only from the page cache: exact bytes or None, never a wrong byte;
the serving paths fall back to a worker thread whenever the fast path says no."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio

import thetadist.store.cached_read as cached_read
from thetadist import create_manifest
from thetadist.net.source import DirectorySource, StoreSource
from thetadist.store import PieceStore
from thetadist.store.cached_read import pread_cached
from thetadist.wire import PayloadPool

pytestmark = pytest.mark.skipif(
    not hasattr(os, "RWF_NOWAIT"), reason="preadv2(RWF_NOWAIT) is Linux-only"
)


def test_cached_bytes_come_back_exactly(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(3 * 1024 * 1024 + 17)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert pread_cached(fd, 1 << 20, 12345) == data[12345 : 12345 + (1 << 20)]
        assert pread_cached(fd, 100, len(data) - 50) is None  # short: past the end
        assert pread_cached(fd, 0, 0) is None
    finally:
        os.close(fd)


def test_evicted_bytes_are_never_read_on_the_loop(tmp_path: Path) -> None:
    """After fsync + POSIX_FADV_DONTNEED the pages are gone (ext4, xfs); the fast path must
    then say None rather than wait for the disk.  On a filesystem that keeps them (tmpfs) it
    may return them, but only exactly."""
    path = tmp_path / "f"
    data = os.urandom(4 << 20)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        result = pread_cached(fd, 1 << 20, 2 << 20)
        assert result is None or result == data[2 << 20 : 3 << 20]
    finally:
        os.close(fd)


def test_an_unsupported_flag_turns_the_fast_path_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 4096)
    calls = []

    def refusing(*args: object) -> int:
        calls.append(args)
        raise OSError(errno.EOPNOTSUPP, "not here")

    monkeypatch.setattr(cached_read, "_usable", True)
    monkeypatch.setattr(cached_read.os, "preadv", refusing)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert pread_cached(fd, 4096, 0) is None
        assert pread_cached(fd, 4096, 0) is None
    finally:
        os.close(fd)
    assert len(calls) == 1  # asked once, then remembered


def _build(root: Path) -> Path:
    root.mkdir()
    (root / "a.bin").write_bytes(os.urandom(3 << 20))
    (root / "b.bin").write_bytes(os.urandom(1 << 20))
    return root


async def test_sources_serve_cached_pieces_without_a_thread_and_the_rest_with_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = _build(tmp_path / "build")
    manifest = create_manifest(build, name="t")
    pieces = manifest.pieces
    expected = {
        p.index: (build / manifest.files[p.file_index].path).read_bytes()[
            p.offset : p.offset + p.size
        ]
        for p in pieces
    }
    hops = []
    run_sync = trio.to_thread.run_sync

    async def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        hops.append(args[0])
        return await run_sync(*args, **kwargs)

    monkeypatch.setattr(trio.to_thread, "run_sync", counting)
    seeding = DirectorySource(manifest, build)
    for piece in pieces:  # first read: hashed in a worker thread
        assert bytes(await seeding.read_piece(piece.index)) == expected[piece.index]
    assert len(hops) == len(pieces)
    for piece in pieces:  # verified, unchanged, cached: on the loop
        assert bytes(await seeding.read_piece(piece.index)) == expected[piece.index]
    assert len(hops) == len(pieces)
    # a file changed since it was verified: hashed again, off the loop, and withdrawn
    target = build / manifest.files[pieces[0].file_index].path
    corrupted = bytearray(target.read_bytes())
    corrupted[0] ^= 1
    target.write_bytes(bytes(corrupted))
    os.utime(target, ns=(1, 1))
    with pytest.raises(Exception, match="hash"):
        await seeding.read_piece(pieces[0].index)
    assert len(hops) == len(pieces) + 1

    store = PieceStore.open(manifest, tmp_path / "out")
    try:
        for piece in pieces:
            await store.write_piece(piece.index, expected[piece.index])
        hops.clear()
        fetching = StoreSource(store)
        for piece in pieces:
            assert bytes(await fetching.read_piece(piece.index)) == expected[piece.index]
        assert hops == []  # just written: all in the page cache
        monkeypatch.setattr(cached_read, "_usable", False)  # as on a kernel without it
        for piece in pieces:
            assert bytes(await fetching.read_piece(piece.index)) == expected[piece.index]
        assert len(hops) == len(pieces)
    finally:
        store.close()


async def test_cached_reads_refill_buffers_from_the_pool(tmp_path: Path) -> None:
    """A seeder reads served pieces into buffers its writer gave back: the same bytearray
    comes out, holding exactly the piece; one still viewed (being sent) is never refilled."""
    build = _build(tmp_path / "build")
    manifest = create_manifest(build, name="t")
    piece_a, piece_b = manifest.pieces[:2]
    expected = {
        p.index: (build / manifest.files[p.file_index].path).read_bytes()[
            p.offset : p.offset + p.size
        ]
        for p in (piece_a, piece_b)
    }
    source = DirectorySource(manifest, build)
    for piece in (piece_a, piece_b):
        await source.read_piece(piece.index)  # first read: verified in a worker thread
    pool = PayloadPool()
    spare = bytearray(b"\xee" * (2 * piece_a.size))
    pool.give_back(spare)
    data = await source.read_piece(piece_a.index, pool)
    assert data is spare and bytes(data) == expected[piece_a.index]
    view = memoryview(data)  # still being sent
    pool.give_back(data)
    again = await source.read_piece(piece_b.index, pool)
    assert again is not data and bytes(again) == expected[piece_b.index]
    assert bytes(view) == expected[piece_a.index]  # the viewed buffer kept its bytes
    view.release()


def test_pread_cached_refuses_a_buffer_of_the_wrong_size(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(8192))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(ValueError):
            pread_cached(fd, 4096, 0, bytearray(100))
    finally:
        os.close(fd)


async def test_a_fetchers_cached_reads_refill_buffers_from_the_pool(tmp_path: Path) -> None:
    """The same for what a fetcher re-serves from its store."""
    build = _build(tmp_path / "build")
    manifest = create_manifest(build, name="t")
    piece = manifest.pieces[0]
    expected = (build / manifest.files[piece.file_index].path).read_bytes()[
        piece.offset : piece.offset + piece.size
    ]
    store = PieceStore.open(manifest, tmp_path / "out")
    try:
        await store.write_piece(piece.index, expected)
        pool = PayloadPool()
        spare = bytearray(piece.size)
        pool.give_back(spare)
        data = await StoreSource(store).read_piece(piece.index, pool)
        assert data is spare and bytes(data) == expected
    finally:
        store.close()
