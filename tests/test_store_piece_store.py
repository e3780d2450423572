"""PieceStore: verified positional writes, atomic finish, resume, refusal of unsafe output."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import blake3
import pytest
import trio
from test_store_helpers import (
    fill_missing,
    make_tree,
    manifest_of,
    piece_data,
    rand_bytes,
    snapshot,
    synthetic_manifest,
)

from thetadist.errors import IntegrityError, StoreError
from thetadist.events import Event, FileCompleted, PieceStored
from thetadist.manifest.model import ChunkerParams, FileSpec, Manifest
from thetadist.store import STAGING_DIR, PieceStore
from thetadist.store import journal as jr


def build_source(root: Path, seed: int = 1) -> Path:
    rng = random.Random(seed)
    return make_tree(
        root,
        {
            "a.bin": rand_bytes(rng, 300_000),
            "bin/tool": rand_bytes(rng, 70_000),
            "docs/readme.txt": b"hello\n" * 1000,
            "empty.txt": b"",
            "deep/er/x.dat": rand_bytes(rng, 5),
        },
        executable=frozenset({"bin/tool"}),
        empty_dirs=("void", "nest/inner"),
    )


async def test_random_order_then_finish_is_identical(tmp_path: Path) -> None:
    source = build_source(tmp_path / "src")
    manifest = manifest_of(source)
    out = tmp_path / "out"
    events: list[Event] = []
    store = PieceStore.open(manifest, out, on_event=events.append)
    order = list(range(store.piece_count))
    random.Random(7).shuffle(order)
    async with trio.open_nursery() as nursery:
        for index in order:
            nursery.start_soon(store.write_piece, index, piece_data(manifest, source, index))
    assert store.all_present and store.is_complete
    assert not await store.write_piece(0, piece_data(manifest, source, 0))  # idempotent
    assert await store.read_piece(0, verify=True) == piece_data(manifest, source, 0)
    await store.finish_async()
    assert snapshot(out) == snapshot(source)
    assert not (out / STAGING_DIR).exists()
    completed = {e.path for e in events if isinstance(e, FileCompleted)}
    assert completed == {f.path for f in manifest.files}
    assert sum(isinstance(e, PieceStored) for e in events) == len(manifest.pieces)


def test_corrupt_piece_is_rejected_and_nothing_written(tmp_path: Path) -> None:
    source = build_source(tmp_path / "src")
    manifest = manifest_of(source)
    store = PieceStore.open(manifest, tmp_path / "out")
    index = next(p.index for p in manifest.pieces if p.chunk_count > 1)
    good = bytearray(piece_data(manifest, source, index))
    bad = bytearray(good)
    bad[-1] ^= 1
    journal_size = os.path.getsize(store.staging / "journal")
    with pytest.raises(IntegrityError):
        store.write_piece_sync(index, bad)
    with pytest.raises(IntegrityError):
        store.write_piece_sync(index, good[:-1])
    assert not store.has_piece(index)
    assert os.path.getsize(store.staging / "journal") == journal_size
    partial = store.staging / "partial" / str(manifest.pieces[index].file_index)
    assert not partial.exists()
    with pytest.raises(StoreError):
        store.read_piece_sync(index)
    store.close()


def test_resume_after_crash_keeps_written_pieces(tmp_path: Path) -> None:
    source = build_source(tmp_path / "src")
    manifest = manifest_of(source)
    out = tmp_path / "out"
    store = PieceStore.open(manifest, out)
    written = list(range(0, store.piece_count, 2))
    for index in written:
        store.write_piece_sync(index, piece_data(manifest, source, index))
    store._close_handles()  # a crash: no sync, no close, no finish
    del store
    store = PieceStore.open(manifest, out)
    assert store.present_pieces() == written
    assert store.missing_pieces() == [i for i in range(store.piece_count) if i % 2]
    fill_missing(store, source)
    store.finish()
    assert snapshot(out) == snapshot(source)


def test_file_complete_but_not_renamed_is_finalized_on_open(tmp_path: Path) -> None:
    source = build_source(tmp_path / "src")
    manifest = manifest_of(source)
    out = tmp_path / "out"
    store = PieceStore.open(manifest, out, hold_renames=True)
    for index in store.file_pieces(0):
        store.write_piece_sync(index, piece_data(manifest, source, index))
    assert not (out / manifest.files[0].path).exists()
    store._close_handles()
    store = PieceStore.open(manifest, out)
    assert store.is_final(0)
    assert (out / manifest.files[0].path).read_bytes() == (
        source / manifest.files[0].path
    ).read_bytes()
    store.close()


def test_rename_done_but_final_record_lost(tmp_path: Path) -> None:
    source = build_source(tmp_path / "src")
    manifest = manifest_of(source)
    out = tmp_path / "out"
    store = PieceStore.open(manifest, out)
    fill_missing(store, source)
    journal = store.staging / "journal"
    store._close_handles()
    # Drop the trailing FILE_FINAL records: the renames happened, their records were lost.
    data = journal.read_bytes()
    body = [data[i : i + 8] for i in range(jr.HEADER_SIZE, len(data), 8)]
    kept = [r for r in body if r[0] != jr.FILE_FINAL]
    journal.write_bytes(data[: jr.HEADER_SIZE] + b"".join(kept))
    store = PieceStore.open(manifest, out)
    assert store.is_complete and store.all_present
    store.finish()
    assert snapshot(out) == snapshot(source)


def test_journal_torn_tail_and_bad_record(tmp_path: Path) -> None:
    source = build_source(tmp_path / "src")
    manifest = manifest_of(source)
    out = tmp_path / "out"
    store = PieceStore.open(manifest, out, hold_renames=True)
    for index in range(6):
        store.write_piece_sync(index, piece_data(manifest, source, index))
    journal = store.staging / "journal"
    store._close_handles()
    with open(journal, "ab") as handle:
        handle.write(b"\x01\x07\x00")  # torn final record
    store = PieceStore.open(manifest, out, hold_renames=True)
    assert store.present_pieces() == list(range(6))
    store._close_handles()
    # A bad record in the middle: it and everything after it is dropped, never trusted.
    data = bytearray(journal.read_bytes())
    records = [bytes(data[i : i + 8]) for i in range(jr.HEADER_SIZE, len(data), 8)]
    piece_positions = [n for n, r in enumerate(records) if r[0] == jr.PIECE]
    third = jr.HEADER_SIZE + 8 * piece_positions[3]
    data[third + 1] ^= 0xFF
    journal.write_bytes(bytes(data))
    store = PieceStore.open(manifest, out)
    assert store.present_pieces() == [0, 1, 2]
    store._close_handles()
    # A journal of another manifest (or a garbage header) starts fresh.
    journal.write_bytes(b"garbage" * 20)
    store = PieceStore.open(manifest, out)
    assert store.present_count == 0
    store.close()


def test_suspect_pieces_after_reboot_are_reverified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = build_source(tmp_path / "src")
    manifest = manifest_of(source)
    out = tmp_path / "out"
    store = PieceStore.open(manifest, out, hold_renames=True)
    store.write_piece_sync(0, piece_data(manifest, source, 0))
    store.sync()
    store.write_piece_sync(1, piece_data(manifest, source, 1))
    store.write_piece_sync(2, piece_data(manifest, source, 2))
    partial = store.staging / "partial" / str(manifest.pieces[2].file_index)
    store._close_handles()
    # Power loss: piece 2's data never reached the disk, its record did.
    piece = manifest.pieces[2]
    with open(partial, "r+b") as handle:
        handle.seek(piece.offset)
        handle.write(bytes(piece.size))
    monkeypatch.setattr(jr, "boot_tag", lambda: 12345)  # a new boot
    store = PieceStore.open(manifest, out, hold_renames=True)
    assert store.present_pieces() == [0, 1]
    store._close_handles()
    # The rewritten journal trusts what was verified, even after another reboot.
    monkeypatch.setattr(jr, "boot_tag", lambda: 777)
    store = PieceStore.open(manifest, out)
    assert store.present_pieces() == [0, 1]
    store.close()


def test_refuses_symlink_and_non_regular_targets(tmp_path: Path) -> None:
    source = build_source(tmp_path / "src")
    manifest = manifest_of(source)
    escape = tmp_path / "elsewhere"
    escape.mkdir()
    out = tmp_path / "out1"
    out.mkdir()
    (out / "bin").symlink_to(escape)
    with pytest.raises(StoreError, match="symlink"):
        PieceStore.open(manifest, out)
    out = tmp_path / "out2"
    (out / "a.bin").mkdir(parents=True)
    with pytest.raises(StoreError, match="directory"):
        PieceStore.open(manifest, out)
    out = tmp_path / "out3"
    out.mkdir()
    (out / "empty.txt").symlink_to(escape / "victim")
    with pytest.raises(StoreError, match="symlink"):
        PieceStore.open(manifest, out)
    out = tmp_path / "out4"
    out.mkdir()
    (out / "docs").write_bytes(b"a file where a directory must be")
    with pytest.raises(StoreError):
        PieceStore.open(manifest, out)
    assert list(escape.iterdir()) == []
    # A symlink planted after open is still refused at rename time.
    out = tmp_path / "out5"
    store = PieceStore.open(manifest, out)
    (out / "deep").symlink_to(escape)
    deep = next(i for i, f in enumerate(manifest.files) if f.path.startswith("deep/"))
    with pytest.raises(StoreError, match="not a directory"):
        for index in store.file_pieces(deep):
            store.write_piece_sync(index, piece_data(manifest, source, index))
    assert list(escape.iterdir()) == []
    store.close()


def test_manifest_path_in_staging_area_is_refused(tmp_path: Path) -> None:
    manifest = synthetic_manifest({".thetadist/x": b"boom"})
    with pytest.raises(StoreError, match="staging"):
        PieceStore.open(manifest, tmp_path / "out")


def test_existing_file_is_replaced_atomically(tmp_path: Path) -> None:
    source = build_source(tmp_path / "src")
    manifest = manifest_of(source)
    out = tmp_path / "out"
    (out / "docs").mkdir(parents=True)
    old = out / "docs" / "readme.txt"
    old.write_bytes(b"old content")
    reader = open(old, "rb")  # noqa: SIM115 - a reader holding the old inode
    store = PieceStore.open(manifest, out)
    assert old.read_bytes() == b"old content"  # untouched until complete
    fill_missing(store, source)
    store.finish()
    assert reader.read() == b"old content"
    reader.close()
    assert snapshot(out) == snapshot(source)


def test_output_is_a_file(tmp_path: Path) -> None:
    manifest = synthetic_manifest({"a": b"x"})
    (tmp_path / "out").write_bytes(b"")
    with pytest.raises(StoreError, match="not a directory"):
        PieceStore.open(manifest, tmp_path / "out")


def test_second_process_is_locked_out(tmp_path: Path) -> None:
    manifest = synthetic_manifest({"a": b"x" * 10})
    store = PieceStore.open(manifest, tmp_path / "out")
    with pytest.raises(StoreError, match="in use"):
        PieceStore.open(manifest, tmp_path / "out")
    store.close()


def test_chunk_level_writes_complete_a_piece(tmp_path: Path) -> None:
    source = build_source(tmp_path / "src")
    manifest = manifest_of(source)
    store = PieceStore.open(manifest, tmp_path / "out", hold_renames=True)
    piece = next(p for p in manifest.pieces if p.chunk_count >= 3)
    data = piece_data(manifest, source, piece.index)
    offset = 0
    chunks = []
    for chunk in range(piece.first_chunk, piece.first_chunk + piece.chunk_count):
        size = manifest.chunk_sizes[chunk]
        chunks.append((chunk, data[offset : offset + size]))
        offset += size
    with pytest.raises(IntegrityError):
        store.write_chunk_sync(chunks[0][0], chunks[1][1])
    for chunk, payload in reversed(chunks):
        assert not store.has_piece(piece.index)
        store.write_chunk_sync(chunk, payload)
    assert store.has_piece(piece.index)
    assert store.read_piece_sync(piece.index, verify=True) == data
    store.close()


def test_sparse_file_beyond_4_gib(tmp_path: Path) -> None:
    chunker = ChunkerParams.fixed(16 << 20)
    size = (4 << 30) + 3 * (16 << 20) + 12345
    zero_digest = blake3.blake3(bytes(16 << 20)).digest()
    tail = random.Random(3).randbytes(size % (16 << 20))
    full_chunks = size // (16 << 20)
    sizes = [16 << 20] * full_chunks + [len(tail)]
    digests = zero_digest * full_chunks + blake3.blake3(tail).digest()
    spec = FileSpec("huge.bin", size, False, digests, sizes)
    manifest = Manifest.from_files(
        [spec], name="big", version="", chunker=chunker, piece_size=64 << 20
    )
    store = PieceStore.open(manifest, tmp_path / "out")
    last = manifest.pieces[-1]
    assert last.offset >= 1 << 32
    data = bytes((16 << 20) * (last.chunk_count - 1)) + tail
    assert store.write_piece_sync(last.index, data)
    partial = store.staging / "partial" / "0"
    info = os.stat(partial)
    assert info.st_size == size
    assert info.st_blocks * 512 < 256 << 20  # sparse
    with open(partial, "rb") as handle:
        handle.seek(size - len(tail))
        assert handle.read() == tail
    assert store.read_piece_sync(last.index, verify=True)[-len(tail) :] == tail
    assert store.missing_pieces() == list(range(last.index))
    store.close()


def test_hundred_thousand_small_files(tmp_path: Path) -> None:
    count = 100_000
    contents = {f"d{i % 100:02d}/f{i:06d}": (b"%d" % i if i % 10 else b"") for i in range(count)}
    manifest = synthetic_manifest(contents, directories=("z/empty",))
    out = tmp_path / "out"
    store = PieceStore.open(manifest, out, hold_renames=True)
    for piece in manifest.pieces:
        store.write_piece_sync(piece.index, contents[manifest.files[piece.file_index].path])
    store.release_renames()
    store.finish()
    names = sorted(os.listdir(out / "d07"))
    assert len(names) == count // 100
    assert (out / "d07" / "f000007").read_bytes() == b"7"
    assert (out / "d00" / "f000100").read_bytes() == b""
    assert (out / "z" / "empty").is_dir()
    assert not (out / STAGING_DIR).exists()


def test_exec_bits_follow_the_manifest(tmp_path: Path) -> None:
    manifest = synthetic_manifest(
        {"run.sh": b"#!/bin/sh\n", "data": b"d"}, executable=frozenset({"run.sh"})
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "data").write_bytes(b"old")
    (out / "data").chmod(0o755)
    store = PieceStore.open(manifest, out)
    store.write_piece_sync(0, b"d")
    store.write_piece_sync(1, b"#!/bin/sh\n")
    store.finish()
    assert os.stat(out / "run.sh").st_mode & 0o111
    assert not os.stat(out / "data").st_mode & 0o111
    assert stat.S_ISREG(os.stat(out / "data").st_mode)


def test_pieces_are_written_while_a_sync_is_flushing_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The periodic sync fsyncs the files without the store's lock first: a write from
    another thread must not wait for it (it used to, for most of a second per sync)."""
    import threading

    import thetadist.store.piece_store as piece_store

    source = build_source(tmp_path / "src")
    manifest = manifest_of(source)
    store = PieceStore.open(manifest, tmp_path / "out")
    pieces = manifest.pieces
    store.write_piece_sync(pieces[0].index, piece_data(manifest, source, pieces[0].index))
    flushing, release, gave_up = threading.Event(), threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        if threading.current_thread() is syncing and not release.is_set():
            flushing.set()
            if not release.wait(10):
                gave_up.set()  # the write waited for this fsync: the lock was held
        real_fsync(fd)

    monkeypatch.setattr(piece_store.os, "fsync", slow_fsync)
    syncing = threading.Thread(target=store.sync)
    syncing.start()
    assert flushing.wait(10)
    later = pieces[-1].index
    store.write_piece_sync(later, piece_data(manifest, source, later))
    assert not gave_up.is_set()  # written while the sync was still flushing
    release.set()
    syncing.join(10)
    assert not syncing.is_alive()
    monkeypatch.setattr(piece_store.os, "fsync", real_fsync)
    assert store.has_piece(later)
    store.close()
    reopened = PieceStore.open(manifest, tmp_path / "out")
    assert reopened.has_piece(pieces[0].index) and reopened.has_piece(later)
    reopened.close()
