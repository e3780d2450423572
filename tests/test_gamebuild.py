from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bench.casync_compare import casync_bytes_to_fetch, parse_caidx
from bench.gamebuild import (
    PAK_ENTRY,
    PAK_HEADER,
    PAK_MAGIC,
    GroundTruth,
    generate,
    parse_size,
)

SIZE = 8 << 20
REPO = Path(__file__).resolve().parents[1]


def _tree(root: Path) -> dict[str, tuple[str, int]]:
    """relative path -> (sha256 or 'dir', permission bits)"""
    out: dict[str, tuple[str, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = Path(dirpath, d)
            if not any(p.iterdir()):
                out[str(p.relative_to(root))] = ("dir", 0)
        for f in filenames:
            p = Path(dirpath, f)
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(root))] = (digest, stat.S_IMODE(p.stat().st_mode))
    return out


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, GroundTruth]:
    base = tmp_path_factory.mktemp("gb")
    truth = generate(base / "v1", base / "v2", size=SIZE, seed=7)
    return base / "v1", base / "v2", truth


def test_sizes_and_ratio(build: tuple[Path, Path, GroundTruth]) -> None:
    v1, v2, truth = build
    t1, t2 = _tree(v1), _tree(v2)
    assert sum((v1 / p).stat().st_size for p, (h, _) in t1.items() if h != "dir") == truth.v1_bytes
    assert sum((v2 / p).stat().st_size for p, (h, _) in t2.items() if h != "dir") == truth.v2_bytes
    assert abs(truth.v1_bytes - SIZE) < SIZE * 0.01
    assert 0.03 <= truth.new_bytes / truth.v2_bytes <= 0.05
    assert truth.new_bytes + truth.copied_bytes == truth.v2_bytes
    assert sum(truth.new_by_kind.values()) == truth.new_bytes
    for kind in ("archive_index", "archive_record_replaced", "archive_record_inserted",
                 "media_replaced", "file_added", "exe_patch", "text_edit"):  # fmt: skip
        assert truth.new_by_kind.get(kind, 0) > 0, kind
    assert truth.v1_files == sum(1 for h, _ in t1.values() if h != "dir")
    assert truth.v2_files == sum(1 for h, _ in t2.values() if h != "dir")


def test_renames_deletes_and_special_files(build: tuple[Path, Path, GroundTruth]) -> None:
    v1, v2, truth = build
    assert truth.renamed_files
    for old, new in truth.renamed_files:
        assert not (v2 / old).exists()
        assert (v1 / old).read_bytes() == (v2 / new).read_bytes()
    ((old_dir, new_dir),) = truth.renamed_dirs
    assert not (v2 / old_dir).exists()
    moved = sorted(p.relative_to(v1 / old_dir) for p in (v1 / old_dir).rglob("*"))
    assert moved
    for rel in moved:
        assert (v1 / old_dir / rel).read_bytes() == (v2 / new_dir / rel).read_bytes()
    for p in truth.deleted_files:
        assert (v1 / p).exists() and not (v2 / p).exists()
    for p in truth.added_files:
        assert not (v1 / p).exists() and (v2 / p).exists()
    for root in (v1, v2):
        for p in truth.executables:
            assert (root / p).stat().st_mode & 0o111 == 0o111
        for p in truth.empty_files:
            assert (root / p).stat().st_size == 0
        for d in truth.empty_dirs:
            assert (root / d).is_dir() and not any((root / d).iterdir())
    assert len(truth.executables) >= 2 and truth.empty_files and truth.empty_dirs


def test_pak_structure(build: tuple[Path, Path, GroundTruth]) -> None:
    v1, v2, _ = build
    for root in (v1, v2):
        paks = sorted(root.glob("Content/Paks/*.pak"))
        assert len(paks) >= 2
        for pak in paks:
            data = pak.read_bytes()
            magic, _ver, count, index_off, data_off, _bid = PAK_HEADER.unpack_from(data)
            assert magic == PAK_MAGIC and data_off == index_off + count * PAK_ENTRY.size
            end = data_off
            for i in range(count):
                _rid, off, length, _fl, _h = PAK_ENTRY.unpack_from(
                    data, index_off + i * PAK_ENTRY.size
                )
                assert off == end and 2048 <= length <= 512 * 1024
                end += length
            assert end == len(data)


def test_deterministic(build: tuple[Path, Path, GroundTruth], tmp_path: Path) -> None:
    v1, v2, truth = build
    # a fresh process with another hash seed must produce the very same trees
    env = dict(os.environ, PYTHONHASHSEED="12345")
    cmd = [sys.executable, "-m", "bench.gamebuild", str(tmp_path / "a"), str(tmp_path / "b")]
    out = subprocess.run(
        [*cmd, "--size", "8MiB", "--seed", "7"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert GroundTruth(**json.loads(out)).new_bytes == truth.new_bytes
    assert _tree(tmp_path / "a") == _tree(v1)
    assert _tree(tmp_path / "b") == _tree(v2)


def test_other_seed_differs(build: tuple[Path, Path, GroundTruth], tmp_path: Path) -> None:
    v1, _, _ = build
    generate(tmp_path / "a", tmp_path / "b", size=SIZE, seed=8)
    assert _tree(tmp_path / "a") != _tree(v1)


def test_parse_size() -> None:
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("8MiB") == 8 << 20
    assert parse_size("16K") == 16384
    assert parse_size("1000") == 1000
    with pytest.raises(ValueError):
        parse_size("lots")


def test_casync_compare(tmp_path: Path) -> None:
    assert shutil.which("casync"), "casync must be installed (apt-get install casync)"
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    truth = generate(v1, v2, size=4 << 20, seed=3)
    res = casync_bytes_to_fetch(v1, v2, tmp_path / "w", chunk_size="16384", verify_stream=True)
    assert res["stream_verified"] is True
    assert res["chunk_size_avg"] == 16384
    idx = parse_caidx(tmp_path / "w" / "v2-16384.caidx")
    assert sum(idx.chunk_sizes()) == idx.stream_size == res["v2_stream_bytes"]
    assert len(idx.ids) == res["v2_chunks"]
    assert idx.file_size == res["v2_index_bytes"] == 48 + 16 + 40 * len(idx.ids) + 40
    new_chunk_bytes = res["new_chunk_bytes"]
    assert isinstance(new_chunk_bytes, int)
    # content-defined chunking cannot beat the truth by much (metadata aside)...
    assert new_chunk_bytes >= truth.new_bytes * 0.9
    # ...and should not need to refetch the whole tree
    assert new_chunk_bytes < truth.v2_bytes / 2
    assert res["bytes_to_fetch"] == new_chunk_bytes + res["v2_index_bytes"]
    # identical trees: nothing new
    same = casync_bytes_to_fetch(v1, v1, tmp_path / "w2", chunk_size=None)
    assert same["new_chunks"] == 0 and same["new_chunk_bytes"] == 0
