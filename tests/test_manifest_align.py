"""Patch alignment: a new version's chunks are cut where its content departs from the old one,
old content around an edit becomes derived chunks, and a holder of the old version rebuilds
them from its own files, so it fetches (nearly) only the new bytes."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from test_store_helpers import make_tree, snapshot

from thetadist import diff, verify_tree
from thetadist.errors import ManifestError
from thetadist.manifest import bencoding
from thetadist.manifest.align import MIN_DERIVED_SIZE
from thetadist.manifest.create import create_manifest
from thetadist.manifest.model import ChunkerParams, DerivedSource, Manifest
from thetadist.store.plan import assemble_from_local

CHUNKER = ChunkerParams.fastcdc(16 * 1024)


def versions(tmp_path: Path, seed: int = 7) -> tuple[Path, Path, int]:
    """v1 and v2 trees, and the count of bytes v2 has that v1 never had."""
    rng = random.Random(seed)
    archive = rng.randbytes(2 << 20)
    text = b"".join(b"line %d of the script\n" % n for n in range(300))
    inserted, replaced, edit = rng.randbytes(3000), rng.randbytes(700), b"EDITED"
    v2_archive = (
        archive[:500_000]
        + inserted
        + archive[500_000:1_200_000]
        + replaced
        + archive[1_200_700:1_700_000]
        + archive[1_750_000:]  # 50,000 bytes removed
    )
    v2_text = text[:3000] + edit + text[3010:]
    renamed = rng.randbytes(300_000)
    v1 = make_tree(
        tmp_path / "v1",
        {"data/archive.pak": archive, "script.txt": text, "old/name.bin": renamed},
    )
    v2 = make_tree(
        tmp_path / "v2",
        {
            "data/archive.pak": v2_archive,
            "script.txt": v2_text,
            # moved and edited at its start: its base is found through its reused chunks
            "new/name.bin": b"HEADER" + renamed[10:],
        },
    )
    return v1, v2, len(inserted) + len(replaced) + len(edit) + len(b"HEADER")


def create(root: Path, **kwargs: object) -> Manifest:
    return create_manifest(root, name="t", chunker=CHUNKER, workers=2, **kwargs)  # type: ignore[arg-type]


def test_a_holder_of_the_old_version_fetches_about_the_new_bytes_only(tmp_path: Path) -> None:
    v1, v2, new_bytes = versions(tmp_path)
    old = create(v1)
    plain = create(v2, previous=old)
    aligned = create(v2, previous=old, previous_dir=v1)
    assert aligned.derived  # old content around the edits is listed as derived chunks
    plain_fetch = diff(old, plain).data_bytes_to_fetch
    aligned_fetch = diff(old, aligned).data_bytes_to_fetch
    # Random old bytes may happen to equal a new byte at an edge; the rest is the new bytes,
    # plus at most one too-short-to-list slice of old bytes on each side of each of 4 edits.
    assert new_bytes - 16 <= aligned_fetch <= new_bytes + 8 * MIN_DERIVED_SIZE
    assert plain_fetch > 4 * aligned_fetch  # chunking alone re-sends old bytes at each edit
    # the same tree, whatever describes it
    assert [f.path for f in aligned.files] == [f.path for f in plain.files]
    assert aligned.total_size == plain.total_size


def test_an_update_in_place_copies_derived_chunks_and_needs_only_the_prediction(
    tmp_path: Path,
) -> None:
    v1, v2, _ = versions(tmp_path)
    old = create(v1)
    aligned = create(v2, previous=old, previous_dir=v1)
    predicted = diff(old, aligned).data_bytes_to_fetch
    installed = tmp_path / "installed"
    shutil.copytree(v1, installed)
    partial = assemble_from_local(aligned, installed, [installed])
    assert not partial.complete
    assert partial.bytes_missing == predicted  # every derived chunk was rebuilt locally
    # the new bytes arrive (here from a copy of v2), and the result is exactly v2
    done = assemble_from_local(aligned, installed, [v2])
    assert done.complete
    assert verify_tree(aligned, installed).intact
    for entry in aligned.files:  # (files v2 no longer has are left alone by an update)
        assert (installed / entry.path).read_bytes() == (v2 / entry.path).read_bytes()


def test_a_wrong_hint_costs_a_download_never_a_corrupt_file(tmp_path: Path) -> None:
    v1, v2, _ = versions(tmp_path)
    old = create(v1)
    aligned = create(v2, previous=old, previous_dir=v1)
    wrong = {
        index: DerivedSource(source.digest, source.offset + 1)
        for index, source in aligned.derived.items()
    }
    lying = Manifest(
        name=aligned.name,
        version=aligned.version,
        chunker=aligned.chunker,
        files=aligned.files,
        chunk_digests=aligned.chunk_digests,
        chunk_sizes=aligned.chunk_sizes,
        previous=aligned.previous,
        derived=wrong,
    )
    out = tmp_path / "out"
    result = assemble_from_local(lying, out, [v1])
    honest = assemble_from_local(aligned, tmp_path / "honest", [v1])
    derived_bytes = sum(aligned.chunk_sizes[index] for index in aligned.derived)
    assert result.bytes_missing == honest.bytes_missing + derived_bytes
    assert assemble_from_local(lying, out, [v2]).complete
    assert snapshot(out) == snapshot(v2)


def test_alignment_is_deterministic_and_survives_a_round_trip(tmp_path: Path) -> None:
    v1, v2, _ = versions(tmp_path)
    old = create(v1)
    one = create_manifest(v2, name="t", chunker=CHUNKER, previous=old, previous_dir=v1, workers=1)
    two = create(v2, previous=old, previous_dir=v1)
    assert one.encode() == two.encode()
    assert Manifest.decode(two.encode()) == two
    assert Manifest.decode(two.encode()).derived == two.derived


def test_fixed_size_chunks_are_never_realigned(tmp_path: Path) -> None:
    v1, v2, _ = versions(tmp_path)
    fixed = ChunkerParams.fixed(64 * 1024)
    old = create_manifest(v1, name="t", chunker=fixed)
    aligned = create_manifest(v2, name="t", chunker=fixed, previous=old, previous_dir=v1)
    assert aligned.encode() == create_manifest(v2, name="t", chunker=fixed, previous=old).encode()


def _with_derived_table(manifest: Manifest, table: bytes) -> bytes:
    value = bencoding.decode(manifest.encode())
    assert isinstance(value, dict)
    value[b"derived chunks"] = table
    return bencoding.encode(value)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (b"\x00" * 39, "multiple of its record size"),
        ((5).to_bytes(4, "big") + b"\x01" * 36 + (1).to_bytes(4, "big") + b"\x01" * 36, "order"),
        ((10**6).to_bytes(4, "big") + b"\x01" * 36, "not in the chunk table"),
        ((0).to_bytes(4, "big") + b"\x01" * 32 + b"\xff" * 4, "malformed source"),
    ],
)
def test_hostile_derived_tables_are_refused(tmp_path: Path, table: bytes, message: str) -> None:
    make_tree(tmp_path / "t", {"a.bin": random.Random(1).randbytes(200_000)})
    manifest = create(tmp_path / "t")
    with pytest.raises(ManifestError, match=message):
        Manifest.decode(_with_derived_table(manifest, table))


def test_an_empty_derived_table_is_not_canonical(tmp_path: Path) -> None:
    make_tree(tmp_path / "t", {"a.bin": b"x" * 1000})
    with pytest.raises(ManifestError, match="canonical"):
        Manifest.decode(_with_derived_table(create(tmp_path / "t"), b""))


def test_no_derived_chunk_is_smaller_than_it_is_worth(tmp_path: Path) -> None:
    """Edits 40 bytes before or after old chunk boundaries leave 40-byte slices of old chunks;
    each would cost a table entry and a record (76 bytes) to save 40: they are fetched."""
    import itertools

    rng = random.Random(3)
    old_bytes = rng.randbytes(2 << 20)
    v1 = make_tree(tmp_path / "v1", {"f.bin": old_bytes})
    old = create(v1)
    bounds = list(itertools.accumulate(old.chunk_sizes))
    new_bytes = old_bytes
    for k in range(len(bounds) - 30, 5, -4):
        cut = bounds[k] - 40 if k % 8 else bounds[k] + 40
        new_bytes = new_bytes[:cut] + rng.randbytes(500) + new_bytes[cut:]
    v2 = make_tree(tmp_path / "v2", {"f.bin": new_bytes})
    aligned = create(v2, previous=old, previous_dir=v1)
    assert aligned.derived
    assert min(aligned.chunk_sizes[i] for i in aligned.derived) >= MIN_DERIVED_SIZE
    assert diff(old, aligned).data_bytes_to_fetch < diff(old, create(v2)).data_bytes_to_fetch
