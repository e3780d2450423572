"""Manifest model, canonical codec, signatures and every kind of hostile manifest."""

import copy
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import thetadist as td
from thetadist.errors import ManifestError, SignatureError
from thetadist.manifest import bencoding
from thetadist.manifest.model import ManifestLimits


@pytest.fixture
def manifest(small_tree: Path) -> td.Manifest:
    return td.create_manifest(small_tree, name="game", version="1.0")


def test_round_trip_and_id(manifest: td.Manifest, tmp_path: Path) -> None:
    path = tmp_path / "m.tdm"
    manifest.save(path)
    loaded = td.Manifest.load(path)
    assert loaded == manifest
    assert loaded.id == manifest.id
    assert [f.path for f in loaded.files] == sorted(f.path for f in manifest.files)
    assert loaded.directories == ("saves/slot1",)
    entry = {f.path: f for f in loaded.files}
    assert entry["bin/game"].executable and not entry["readme.txt"].executable
    assert entry["empty.cfg"].size == 0 and entry["empty.cfg"].chunk_count == 0
    assert loaded.total_size == sum(f.size for f in loaded.files)


def test_pieces_are_runs_of_one_files_chunks(manifest: td.Manifest) -> None:
    covered = 0
    for piece in manifest.pieces:
        entry = manifest.files[piece.file_index]
        assert entry.first_chunk <= piece.first_chunk
        assert piece.first_chunk + piece.chunk_count <= entry.first_chunk + entry.chunk_count
        sizes = manifest.chunk_sizes[piece.first_chunk : piece.first_chunk + piece.chunk_count]
        assert sum(sizes) == piece.size
        assert piece.size <= manifest.piece_size or piece.chunk_count == 1
        covered += piece.chunk_count
    assert covered == manifest.chunk_count


def test_signature_round_trip_and_trust(manifest: td.Manifest, tmp_path: Path) -> None:
    key = td.generate_key()
    signed = td.sign_manifest(manifest, key)
    assert signed.id == manifest.id  # signatures are outside the identity
    public = td.public_key_bytes(key)
    assert td.Manifest.decode(signed.encode(), trust=[public]) == signed
    other = td.public_key_bytes(td.generate_key())
    with pytest.raises(SignatureError, match="not signed by trusted key"):
        td.Manifest.decode(signed.encode(), trust=[other])
    with pytest.raises(SignatureError):
        td.Manifest.decode(manifest.encode(), trust=[public])


def test_bad_signature_rejected(manifest: td.Manifest) -> None:
    signed = td.sign_manifest(manifest, td.generate_key())
    value = bencoding.decode(signed.encode())
    ((key, sig),) = value[b"signatures"].items()
    value[b"signatures"][key] = bytes([sig[0] ^ 1]) + sig[1:]
    with pytest.raises(SignatureError, match="bad publisher signature"):
        td.Manifest.decode(bencoding.encode(value))


def _value(manifest: td.Manifest) -> dict:
    return copy.deepcopy(bencoding.decode(manifest.encode()))


def _first_file(value: dict) -> dict:
    return next(f for f in value[b"files"] if f[b"size"] > 0)


HOSTILE_PATHS = [
    b"/etc/passwd",
    b"../escape",
    b"a/../../b",
    b"a//b",
    b"a/./b",
    b"a/",
    b"a\\b",
    b"nul\x00byte",
    b"tab\tin",
    b"del\x7f",
    b"",
    b"\xff\xfe",
    b"cafe\xcc\x81",
    b"x" * 300,
    b"/".join([b"d"] * 70),
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_hostile_paths_rejected(manifest: td.Manifest, path: bytes) -> None:
    value = _value(manifest)
    _first_file(value)[b"path"] = path
    value[b"files"].sort(key=lambda f: f[b"path"])
    with pytest.raises(ManifestError):
        td.Manifest.decode(bencoding.encode(value))


def test_hostile_directory_rejected(manifest: td.Manifest) -> None:
    value = _value(manifest)
    value[b"directories"] = [b"../up"]
    with pytest.raises(ManifestError, match="component"):
        td.Manifest.decode(bencoding.encode(value))


def _dup(value):
    value[b"files"].insert(0, copy.deepcopy(value[b"files"][0]))
    value[b"files"][0][b"size"] = 0
    value[b"files"][0][b"chunks"] = 0


def _file_dir_clash(value):
    value[b"directories"] = [value[b"files"][0][b"path"]]


def _prefix_clash(value):
    files = value[b"files"]
    files.append({b"chunks": 0, b"path": files[0][b"path"] + b"/inner", b"size": 0})
    files.sort(key=lambda f: f[b"path"])


MUTATIONS = {
    "size does not add up": lambda v: _first_file(v).__setitem__(
        b"size", _first_file(v)[b"size"] + 1
    ),
    "total size wrong": lambda v: v.__setitem__(b"total size", v[b"total size"] + 1),
    "chunk count too big": lambda v: _first_file(v).__setitem__(b"chunks", 10**6),
    "extra chunk": lambda v: (
        v.__setitem__(b"chunk sizes", v[b"chunk sizes"] + b"\0\0\0\1"),
        v.__setitem__(b"chunk hashes", v[b"chunk hashes"] + bytes(32)),
    ),
    "digest table short": lambda v: v.__setitem__(b"chunk hashes", v[b"chunk hashes"][:-1]),
    "size table ragged": lambda v: v.__setitem__(b"chunk sizes", v[b"chunk sizes"] + b"\0"),
    "zero chunk": lambda v: v.__setitem__(b"chunk sizes", b"\0\0\0\0" + v[b"chunk sizes"][4:]),
    "piece size tiny": lambda v: v.__setitem__(b"piece size", 1),
    "piece size huge": lambda v: v.__setitem__(b"piece size", 1 << 40),
    "huge integer": lambda v: v.__setitem__(b"piece size", 10**19),
    "negative size": lambda v: _first_file(v).__setitem__(b"size", -1),
    "unknown key": lambda v: v.__setitem__(b"zzz", 1),
    "missing key": lambda v: v.pop(b"files"),
    "wrong type": lambda v: v.__setitem__(b"files", b"notalist"),
    "file not dict": lambda v: v[b"files"].append(5),
    "unsorted files": lambda v: v[b"files"].reverse(),
    "duplicate path": _dup,
    "file is a directory": _file_dir_clash,
    "file used as parent": _prefix_clash,
    "bad format": lambda v: v.__setitem__(b"format", 2),
    "bad hash": lambda v: v.__setitem__(b"hash", b"md5"),
    "bad chunker": lambda v: v[b"chunker"].__setitem__(b"algorithm", b"rabin"),
    "chunker bounds": lambda v: v[b"chunker"].__setitem__(b"max", 1 << 30),
    "previous wrong size": lambda v: v.__setitem__(b"previous", b"short"),
    "executable zero": lambda v: _first_file(v).__setitem__(b"executable", 0),
    "name control char": lambda v: v.__setitem__(b"name", b"a\x1bb"),
    "signature wrong size": lambda v: v.__setitem__(b"signatures", {bytes(32): b"x"}),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_hostile_manifests_rejected(manifest: td.Manifest, name: str) -> None:
    value = _value(manifest)
    MUTATIONS[name](value)
    with pytest.raises(ManifestError):
        td.Manifest.decode(bencoding.encode(value))


def test_non_canonical_and_trailing_bytes(manifest: td.Manifest) -> None:
    data = manifest.encode()
    with pytest.raises(ManifestError, match="trailing"):
        td.Manifest.decode(data + b"\n")
    # A non-canonical integer spelling of the same value.
    with pytest.raises(ManifestError, match="non-canonical"):
        td.Manifest.decode(data.replace(b"6:formati1e", b"6:formati01e"))


def test_limits(manifest: td.Manifest) -> None:
    data = manifest.encode()
    with pytest.raises(ManifestError, match="larger than"):
        td.Manifest.decode(data, limits=ManifestLimits(max_bytes=len(data) - 1))
    with pytest.raises(ManifestError, match="files"):
        td.Manifest.decode(data, limits=ManifestLimits(max_files=2))
    with pytest.raises(ManifestError, match="chunk"):
        td.Manifest.decode(data, limits=ManifestLimits(max_chunks=3))
    deep = b"d5:filesl" + b"l" * 30 + b"e" * 30 + b"ee"
    with pytest.raises(ManifestError, match="nesting"):
        td.Manifest.decode(deep)


def test_load_missing_file_is_manifest_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read"):
        td.Manifest.load(tmp_path / "nope")


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_manifest_bytes_raise_only_manifest_error(manifest: td.Manifest, data) -> None:
    raw = bytearray(manifest.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    try:
        decoded = td.Manifest.decode(bytes(raw))
    except ManifestError:
        return
    assert decoded.encode() == bytes(raw)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_manifest_error(raw: bytes) -> None:
    with pytest.raises(ManifestError):
        td.Manifest.decode(raw)


def test_create_rejects_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(td.UsageError):
        td.create_manifest(tmp_path / "missing")


def test_symlinks_are_skipped_with_an_event(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"x")
    os.symlink(tmp_path / "real", tmp_path / "link")
    events = []
    manifest = td.create_manifest(tmp_path, on_event=events.append)
    assert [f.path for f in manifest.files] == ["real"]
    assert any(getattr(e, "reason", None) == "symlink" for e in events)
