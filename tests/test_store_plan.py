"""Local reuse (v1 → v2, in place), SIGKILL resume and a full disk."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_store_helpers import (
    fill_missing,
    make_tree,
    manifest_of,
    piece_data,
    rand_bytes,
    snapshot,
)

from thetadist.errors import StoreError
from thetadist.events import ChunksCopied, Event, PlanReady
from thetadist.store import (
    STAGING_DIR,
    PieceStore,
    apply_reuse,
    apply_reuse_async,
    assemble_from_local,
    plan_local_reuse,
)

TESTS = Path(__file__).resolve().parent


def versions(tmp_path: Path) -> tuple[Path, Path]:
    rng = random.Random(11)
    big = rand_bytes(rng, 400_000)
    moved = rand_bytes(rng, 150_000)
    doomed = rand_bytes(rng, 90_000)
    v1 = make_tree(
        tmp_path / "v1",
        {
            "big.bin": big,
            "old/name.dat": moved,
            "x.dat": doomed,
            "same.txt": b"unchanged\n" * 5000,
            "tool": b"#!/bin/sh\necho 1\n" * 100,
        },
    )
    v2 = make_tree(
        tmp_path / "v2",
        {
            # bytes inserted in the middle: CDC keeps most chunks
            "big.bin": big[:200_000] + rand_bytes(rng, 3000) + big[200_000:],
            "new/name.dat": moved,  # renamed
            "x.dat": b"",  # emptied: its old content moved to y.dat
            "y.dat": doomed,
            "same.txt": b"unchanged\n" * 5000,
            "tool": b"#!/bin/sh\necho 1\n" * 100,  # becomes executable
            "fresh.bin": rand_bytes(rng, 70_000),
        },
        executable=frozenset({"tool"}),
        empty_dirs=("cache/empty",),
    )
    return v1, v2


def test_reuse_from_older_version(tmp_path: Path) -> None:
    v1, v2 = versions(tmp_path)
    m2 = manifest_of(v2)
    out = tmp_path / "out"
    events: list[Event] = []
    result = assemble_from_local(m2, out, [v1], on_event=events.append, workers=2)
    assert not result.complete
    assert result.bytes_total == m2.total_size
    assert result.bytes_present_before == 0
    local = result.bytes_from_local[os.fspath(v1.resolve())]
    assert local > 0.7 * m2.total_size
    assert result.bytes_missing == m2.total_size - local
    assert any(isinstance(e, PlanReady) for e in events)
    assert any(isinstance(e, ChunksCopied) for e in events)
    assert (out / STAGING_DIR).is_dir()  # resumable
    assert (out / "same.txt").read_bytes() == (v2 / "same.txt").read_bytes()
    assert not (out / "fresh.bin").exists()
    with PieceStore.open(m2, out) as store:
        # Chunks copied into partly-local pieces are not journalled: reopening forgets them
        # (the next plan copies them again from the local source).
        missing_bytes = sum(m2.pieces[i].size for i in store.missing_pieces())
        assert missing_bytes >= result.bytes_missing
        fill_missing(store, v2)
        store.finish()
    assert snapshot(out) == snapshot(v2)


def test_in_place_update(tmp_path: Path) -> None:
    v1, v2 = versions(tmp_path)
    m2 = manifest_of(v2)
    out = tmp_path / "out"
    shutil.copytree(v1, out)
    same_inode = os.stat(out / "same.txt").st_ino
    result = assemble_from_local(m2, out, [], workers=2)
    assert not result.complete
    # y.dat came from the old x.dat, which v2 empties: the copy had to happen first.
    assert (out / "y.dat").read_bytes() == (v2 / "y.dat").read_bytes()
    assert (out / "x.dat").read_bytes() == b""
    assert os.stat(out / "same.txt").st_ino == same_inode  # adopted, not copied
    assert os.stat(out / "tool").st_mode & 0o111
    with PieceStore.open(m2, out) as store:
        fill_missing(store, v2)
        store.finish()
    # Files v2 does not name (old/name.dat) are left alone: the store never deletes.
    expected = snapshot(v2)
    expected.update({"old/": "dir", "old/name.dat": ((v1 / "old/name.dat").read_bytes(), False)})
    assert snapshot(out) == expected


def test_second_run_on_finished_tree_copies_nothing(tmp_path: Path) -> None:
    _, v2 = versions(tmp_path)
    m2 = manifest_of(v2)
    out = tmp_path / "out"
    assemble_from_local(m2, out, [v2], workers=2)
    inodes = {p: os.stat(out / p).st_ino for p in ("big.bin", "y.dat")}
    result = assemble_from_local(m2, out, [v2], workers=2)
    assert result.complete
    assert result.bytes_from_local == {os.fspath(out.resolve()): m2.total_size}
    assert {p: os.stat(out / p).st_ino for p in inodes} == inodes
    assert snapshot(out) == snapshot(v2)


def test_reuse_reverifies_sources_that_changed(tmp_path: Path) -> None:
    v1, v2 = versions(tmp_path)
    m2 = manifest_of(v2)
    out = tmp_path / "out"
    store = PieceStore.open(m2, out, hold_renames=True)
    plan = plan_local_reuse(m2, [v1], store=store, workers=2)
    assert plan.local_pieces
    with open(v1 / "old/name.dat", "r+b") as handle:  # the source changes after planning
        handle.write(b"\x00" * 100_000)
    result = apply_reuse(plan, store, workers=2)
    assert result.chunks_failed > 0
    store.release_renames()
    for index in store.present_pieces():
        assert store.read_piece_sync(index, verify=True)
    fill_missing(store, v2)
    store.finish()
    assert snapshot(out) == snapshot(v2)


async def test_apply_reuse_async(tmp_path: Path) -> None:
    v1, v2 = versions(tmp_path)
    m2 = manifest_of(v2)
    events: list[Event] = []
    store = PieceStore.open(m2, tmp_path / "out", on_event=events.append)
    plan = plan_local_reuse(m2, [v1], store=store, workers=2)
    result = await apply_reuse_async(plan, store, on_event=events.append)
    complete = [
        i
        for i in plan.local_pieces
        if all(
            plan.chunk_file[c] >= 0
            for c in range(
                m2.pieces[i].first_chunk, m2.pieces[i].first_chunk + m2.pieces[i].chunk_count
            )
        )
    ]
    assert result.pieces_completed == len(complete)
    for index in store.missing_pieces():
        # Partly-local pieces need only their missing chunks, as the swarm would send them.
        missing = store.missing_chunks(index)
        data = piece_data(m2, v2, index)
        piece = m2.pieces[index]
        sizes = m2.chunk_sizes[piece.first_chunk : piece.first_chunk + piece.chunk_count]
        for chunk in missing:
            start = sum(sizes[:chunk])
            await store.write_run(index, chunk, data[start : start + sizes[chunk]])
        assert store.has_piece(index)
    await store.finish_async()
    assert snapshot(tmp_path / "out") == snapshot(v2)


blocks = [random.Random(n).randbytes(9000) for n in range(6)]


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    old=st.dictionaries(
        st.sampled_from("abcde"), st.lists(st.integers(0, 5), max_size=8), max_size=4
    ),
    new=st.dictionaries(
        st.sampled_from("abcdf"), st.lists(st.integers(0, 5), max_size=8), max_size=4
    ),
    in_place=st.booleans(),
)
def test_property_assemble_then_fill_is_identical(
    tmp_path: Path, old: dict[str, list[int]], new: dict[str, list[int]], in_place: bool
) -> None:
    case = tmp_path / uuid.uuid4().hex
    v1 = make_tree(case / "v1", {k: b"".join(blocks[i] for i in v) for k, v in old.items()})
    v2 = make_tree(case / "v2", {k: b"".join(blocks[i] for i in v) for k, v in new.items()})
    m2 = manifest_of(v2)
    out = case / "out"
    if in_place:
        shutil.copytree(v1, out)
    result = assemble_from_local(m2, out, [] if in_place else [v1], workers=2)
    if not result.complete:
        with PieceStore.open(m2, out) as store:
            fill_missing(store, v2)
            store.finish()
    expected = snapshot(v2)
    if in_place:
        for name, data in snapshot(v1).items():
            expected.setdefault(name, data)
    assert snapshot(out) == expected


KILL_SCRIPT = textwrap.dedent(
    """
    import random, sys, time
    sys.path.insert(0, {tests!r})
    from test_store_helpers import manifest_of, piece_data
    from pathlib import Path
    from thetadist.store import PieceStore
    source, out, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    manifest = manifest_of(source, piece_size=65536)
    store = PieceStore.open(manifest, out, sync_every=1 << 20)
    order = store.missing_pieces()
    random.Random(seed).shuffle(order)
    for index in order:
        store.write_piece_sync(index, piece_data(manifest, source, index))
        print(index, flush=True)
        time.sleep(random.random() * 0.004)
    print("done", flush=True)
    """
)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_sigkill_at_random_point_then_resume(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    source = make_tree(
        tmp_path / "src",
        {f"f{n}.bin": rand_bytes(rng, rng.randrange(0, 600_000)) for n in range(6)},
        executable=frozenset({"f1.bin"}),
        empty_dirs=("e",),
    )
    manifest = manifest_of(source, piece_size=65536)
    out = tmp_path / "out"
    script = tmp_path / "child.py"
    script.write_text(KILL_SCRIPT.format(tests=os.fspath(TESTS)))
    kill_after = rng.randrange(1, len(manifest.pieces))
    child = subprocess.Popen(
        [sys.executable, os.fspath(script), os.fspath(source), os.fspath(out), str(seed)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    reported: list[int] = []
    for line in _lines(child.stdout):
        if line == "done":
            break
        reported.append(int(line))
        if len(reported) >= kill_after:
            child.kill()  # SIGKILL, mid-stream
            break
    assert child.wait() == -signal.SIGKILL
    # Lines the child printed before it died: every piece it acknowledged.
    reported += [int(line) for line in _lines(child.stdout) if line and line != "done"]
    with PieceStore.open(manifest, out) as store:
        present = set(store.present_pieces())
        assert set(reported) <= present  # nothing acknowledged was lost
        assert len(present) <= len(reported) + 1  # at most the piece in flight
        for index in present:  # and what is recorded is really on disk
            assert store.read_piece_sync(index, verify=True) == piece_data(manifest, source, index)
        fill_missing(store, source)
        store.finish()
    assert snapshot(out) == snapshot(source)


def _lines(stream: object) -> Iterator[str]:
    for line in stream:  # type: ignore[attr-defined]
        yield line.strip()


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", os.fspath(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a 1 MiB tmpfs (tests need root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", os.fspath(mount_point)], check=True)


def test_disk_full_is_one_clear_error_and_no_final_file(tmp_path: Path, tiny_fs: Path) -> None:
    rng = random.Random(5)
    source = make_tree(tmp_path / "src", {"small.txt": b"ok", "big.bin": rand_bytes(rng, 3 << 20)})
    manifest = manifest_of(source)
    out = tiny_fs / "out"
    store = PieceStore.open(manifest, out)
    with pytest.raises(StoreError) as caught:
        fill_missing(store, source)
    message = str(caught.value)
    assert "\n" not in message and "No space left on device" in message
    assert os.fspath(out) in message
    assert StoreError.exit_code == 5
    assert not (out / "big.bin").exists()
    store.close()
    # The same through assemble_from_local.
    shutil.rmtree(out)
    with pytest.raises(StoreError, match="No space left"):
        assemble_from_local(manifest, out, [source], workers=2)
    assert not (out / "big.bin").exists()


def test_read_only_output_is_a_store_error(tmp_path: Path, tiny_fs: Path) -> None:
    (tiny_fs / "out").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", os.fspath(tiny_fs)], check=True)
    manifest = manifest_of(make_tree(tmp_path / "src", {"a": b"a"}))
    with pytest.raises(StoreError, match="Read-only file system"):
        PieceStore.open(manifest, tiny_fs / "out")
