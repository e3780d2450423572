"""Chunking: the parallel, segmented path equals a sequential pass, on every input."""

import json
import os
from pathlib import Path

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vectors import VECTOR_PARAMS, vector_input

import thetadist as td
from thetadist.manifest import chunking
from thetadist.manifest.model import ChunkerParams

VECTORS = json.loads((Path(__file__).parent.parent / "manifests/chunking-vectors.json").read_text())


@pytest.mark.parametrize("name", sorted(VECTOR_PARAMS))
def test_chunking_vectors(name: str) -> None:
    data = vector_input()
    assert blake3.blake3(data).hexdigest() == VECTORS["input"]["blake3"]
    sizes, digests = chunking.chunk_buffer(data, VECTOR_PARAMS[name])
    expected = VECTORS["vectors"][name]
    assert sizes == expected["sizes"]
    assert [digests[i : i + 32].hex() for i in range(0, len(digests), 32)] == expected["digests"]


def _scan(path: Path, params: ChunkerParams, workers: int) -> td.manifest.model.FileSpec:
    items, _, _ = chunking.walk_tree(path.parent)
    (spec,) = [
        s for s in chunking.chunk_files(items, params, workers=workers) if s.path == path.name
    ]
    return spec


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pieces=st.lists(
        st.tuples(st.sampled_from(["noise", "zeros", "text"]), st.integers(1, 200_000)),
        min_size=1,
        max_size=8,
    ),
    segment=st.integers(4096, 300_000),
    params=st.sampled_from(
        [
            ChunkerParams.fastcdc(1024),
            ChunkerParams.fastcdc(4096),
            ChunkerParams.fastcdc(16384),
            ChunkerParams.fixed(4096),
        ]
    ),
)
def test_segmented_equals_sequential(tmp_path_factory, monkeypatch, pieces, segment, params):
    monkeypatch.setattr(chunking, "SEGMENT_SIZE", segment)
    data = b"".join(
        blake3.blake3(f"{kind}{n}".encode()).digest(length=n)
        if kind == "noise"
        else bytes(n)
        if kind == "zeros"
        else (b"abc\n" * (n // 4 + 1))[:n]
        for kind, n in pieces
    )
    directory = tmp_path_factory.mktemp("seg")
    (directory / "f").write_bytes(data)
    spec = _scan(directory / "f", params, workers=3)
    sizes, digests = chunking.chunk_buffer(data, params)
    assert list(spec.sizes) == sizes
    assert spec.digests == digests


def test_file_over_4_gib(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    size = (4 << 30) + 12345
    with open(big, "wb") as handle:
        handle.truncate(size)  # sparse: reads as zeros without using the disk
        handle.seek(size - 5)
        handle.write(b"tail!")
    manifest = td.create_manifest(tmp_path, chunker=ChunkerParams.fixed(8 << 20))
    loaded = td.Manifest.decode(manifest.encode())
    assert loaded.files[0].size == size
    assert loaded.total_size == size
    last = loaded.pieces[-1]
    assert last.offset + last.size == size
    assert td.verify_tree(loaded, tmp_path).intact


def test_hundred_thousand_small_files(tmp_path: Path) -> None:
    root = tmp_path / "many"
    for d in range(100):
        sub = root / f"d{d:03}"
        sub.mkdir(parents=True)
        for f in range(1000):
            fd = os.open(sub / f"f{f:04}.txt", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"file %d %d\n" % (d, f))
            os.close(fd)
    manifest = td.create_manifest(root)
    assert len(manifest.files) == 100_000
    assert len(manifest.pieces) == 100_000
    assert td.Manifest.decode(manifest.encode()) == manifest


def test_empty_tree(tmp_path: Path) -> None:
    (tmp_path / "only" / "dirs").mkdir(parents=True)
    manifest = td.create_manifest(tmp_path)
    assert manifest.files == () and manifest.directories == ("only/dirs",)
    assert td.Manifest.decode(manifest.encode()) == manifest


def test_deterministic_across_worker_counts(small_tree: Path) -> None:
    one = td.create_manifest(small_tree, workers=1, name="x")
    four = td.create_manifest(small_tree, workers=4, name="x")
    assert one.encode() == four.encode()
