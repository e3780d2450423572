"""`seed --check`: every piece hashed on every core before serving, corrupt ones withdrawn,
and no hashing while serving unless a file changes."""

from __future__ import annotations

import os
import random
import time
from functools import partial
from pathlib import Path

import pytest
import trio
from test_store_helpers import make_tree

import thetadist
from thetadist.events import DataChecked, Event
from thetadist.manifest.model import ChunkerParams, Manifest
from thetadist.net.source import DirectorySource


def build(tmp_path: Path) -> tuple[Manifest, Path]:
    rng = random.Random(5)
    root = make_tree(
        tmp_path / "build",
        {"a.bin": rng.randbytes(3 << 20), "b/c.bin": rng.randbytes(1 << 20), "empty": b""},
    )
    manifest = thetadist.create_manifest(
        root, chunker=ChunkerParams.fastcdc(4096), piece_size=64 * 1024
    )
    return manifest, root


def corrupt_one_byte(manifest: Manifest, root: Path, piece_index: int) -> None:
    piece = manifest.pieces[piece_index]
    path = root / manifest.files[piece.file_index].path
    with open(path, "r+b") as handle:
        handle.seek(piece.offset + piece.size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_check_all_withdraws_exactly_the_corrupt_pieces(tmp_path: Path) -> None:
    manifest, root = build(tmp_path)
    corrupt_one_byte(manifest, root, 7)
    source = DirectorySource(manifest, root)
    checked, withdrawn = source.check_all(workers=2)
    assert (checked, withdrawn) == (len(manifest.pieces), 1)
    assert [p.index for p in manifest.pieces if not source.has_piece(p.index)] == [7]


async def test_checked_pieces_are_served_without_hashing_until_a_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, root = build(tmp_path)
    source = DirectorySource(manifest, root)
    source.check_all(workers=2)
    hashed: list[int] = []
    check_piece = Manifest.check_piece

    def counting(self: Manifest, piece, data) -> None:  # type: ignore[no-untyped-def]
        hashed.append(piece.index)
        check_piece(self, piece, data)

    monkeypatch.setattr(Manifest, "check_piece", counting)
    for piece in manifest.pieces:
        await source.read_piece(piece.index)
    assert hashed == []
    # a rewrite (same bytes, new mtime) is hashed again before it is served
    target = root / "b/c.bin"
    data = target.read_bytes()
    target.write_bytes(data)
    os.utime(target, ns=(1, 1))
    b_pieces = [p.index for p in manifest.pieces if manifest.files[p.file_index].path == "b/c.bin"]
    for index in b_pieces:
        await source.read_piece(index)
    assert hashed == b_pieces


async def test_a_checked_seed_reports_the_check_and_never_serves_a_corrupt_piece(
    tmp_path: Path,
) -> None:
    manifest, root = build(tmp_path)
    corrupt_one_byte(manifest, root, 3)
    events: list[Event] = []
    async with trio.open_nursery() as nursery:
        seeder = await nursery.start(
            partial(
                thetadist.seed,
                manifest,
                root,
                listen=("127.0.0.1", 0),
                check=True,
                on_event=events.append,
            )
        )
        result = await nursery.start(
            partial(
                thetadist.fetch,
                manifest,
                tmp_path / "out",
                peers=[("127.0.0.1", seeder.port)],
            )
        )
        with trio.move_on_after(10):
            while result.bytes_from_peers_total < manifest.total_size - manifest.pieces[3].size:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    checks = [e for e in events if isinstance(e, DataChecked)]
    assert len(checks) == 1 and checks[0].pieces_withdrawn == 1
    assert checks[0].pieces_checked == len(manifest.pieces)
    assert not result.complete and not result.peers_banned  # piece 3 was never offered
    assert result.bytes_from_peers_total == manifest.total_size - manifest.pieces[3].size


async def test_cancelling_a_long_check_returns_at_once_and_stops_its_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    manifest, root = build(tmp_path)
    gate = threading.Event()
    hashed: list[int] = []
    check_piece = Manifest.check_piece

    def gated(self: Manifest, piece, data) -> None:  # type: ignore[no-untyped-def]
        gate.wait(30)
        hashed.append(piece.index)
        check_piece(self, piece, data)

    monkeypatch.setattr(Manifest, "check_piece", gated)
    # (the gate holds the threads for 30 s: waiting for them would trip fail_after)
    with trio.fail_after(10), trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(thetadist.seed, manifest, root, listen=("127.0.0.1", 0), check=True)
            )
            await trio.sleep(0.2)  # the check threads are now waiting inside check_piece
            scope.cancel()
    assert scope.cancelled_caught and not gate.is_set()  # did not wait for the threads
    gate.set()
    await trio.to_thread.run_sync(lambda: time.sleep(0.5))  # they finish their piece ...
    assert len(hashed) <= os.cpu_count()  # ... and stop: no further piece is hashed
    assert len(hashed) < len(manifest.pieces)
