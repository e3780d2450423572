"""Manifest deltas: exact round trips on real builds, compactness, every kind of hostile delta,
and the `manifest delta` / `manifest apply` commands."""

from __future__ import annotations

import itertools
import json
import random
import struct
from pathlib import Path

import pytest
from conftest import write_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import thetadist as td
from thetadist.cli import main
from thetadist.errors import ManifestError, SignatureError
from thetadist.manifest import bencoding
from thetadist.manifest.delta import apply_delta, encode_delta
from thetadist.manifest.model import ChunkerParams, FileSpec, Manifest, ManifestLimits

CHUNKER = ChunkerParams.fastcdc(1024)  # small chunks: a few thousand in a few MB


def _v1_files(rng: random.Random) -> dict[str, bytes]:
    return {
        "bin/game": rng.randbytes(200_000),
        "data/a.pak": rng.randbytes(1_500_000),
        "data/b.pak": rng.randbytes(600_000),
        "data/zeros.bin": bytes(300_000),
        "docs/readme.txt": b"".join(b"line %d of the readme\n" % n for n in range(2000)),
        "empty.cfg": b"",
        "old/removed.dat": rng.randbytes(100_000),
        "tools/run.sh": b"#!/bin/sh\necho run\n",
        "music/track.ogg": rng.randbytes(400_000),
    }


def _v2_files(v1: dict[str, bytes], rng: random.Random) -> dict[str, bytes]:
    files = dict(v1)
    pak = bytearray(v1["data/a.pak"])
    pak[700_000:700_100] = rng.randbytes(100)  # edited in place
    del pak[1_200_000:1_203_000]  # bytes removed
    pak[200_000:200_000] = rng.randbytes(5_000)  # bytes inserted
    files["data/a.pak"] = bytes(pak)
    files["data/zeros.bin"] = bytes(350_000)
    files["docs/readme.txt"] = v1["docs/readme.txt"].replace(b"line 1000 ", b"line one thousand ")
    files["audio/track.ogg"] = files.pop("music/track.ogg")  # renamed
    del files["old/removed.dat"]  # deleted
    files["new/added.bin"] = rng.randbytes(150_000)  # new
    files["new/empty2.cfg"] = b""  # new and empty
    return files


@pytest.fixture(scope="module")
def key():
    return td.generate_key()


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """v1 and its patch v2: edits, inserts, removals, a rename, new, deleted and empty files,
    executable bits flipped both ways, a new empty directory."""
    rng = random.Random(11)
    root = tmp_path_factory.mktemp("delta")
    v1_files = _v1_files(rng)
    v1 = write_tree(root / "v1", v1_files, executable={"bin/game"}, empty_dirs=("saves/slot1",))
    v2 = write_tree(
        root / "v2",
        _v2_files(v1_files, rng),
        executable={"tools/run.sh"},
        empty_dirs=("saves/slot1", "saves/slot2"),
    )
    return v1, v2


@pytest.fixture(scope="module")
def builds(trees: tuple[Path, Path], key) -> tuple[Manifest, Manifest]:
    """The manifests of both trees, both signed."""
    v1, v2 = trees
    m1 = td.create_manifest(v1, name="game", version="1", chunker=CHUNKER, sign_key=key)
    m2 = td.create_manifest(
        v2, name="game", version="2", chunker=CHUNKER, previous=m1, sign_key=key
    )
    return m1, m2


@pytest.fixture(scope="module")
def delta(builds: tuple[Manifest, Manifest]) -> bytes:
    return encode_delta(*builds)


def _value(data: bytes) -> dict:
    value = bencoding.decode(data)
    assert isinstance(value, dict)
    return value


def _ops(value: dict) -> list[tuple[int, int, int]]:
    return list(struct.iter_unpack(">III", value[b"ops"]))


def _with(delta: bytes, **changes: object) -> bytes:
    """The delta with some keys replaced (``literal_hashes`` for ``literal hashes`` …)."""
    value = _value(delta)
    for name, new in changes.items():
        key = name.replace("_", " ").encode()
        if new is None:
            del value[key]
        else:
            value[key] = new
    return bencoding.encode(value)


def _pack_ops(ops: list[tuple[int, int, int]]) -> bytes:
    return b"".join(struct.pack(">III", *op) for op in ops)


# ------------------------------------------------------------------------- round trips


def test_round_trip_is_byte_identical(builds, delta: bytes, key) -> None:
    old, new = builds
    rebuilt = apply_delta(old, delta, trust=[td.public_key_bytes(key)])
    assert rebuilt.encode() == new.encode()
    assert rebuilt.id == new.id and rebuilt.signatures == new.signatures
    files = {f.path: f for f in rebuilt.files}
    assert files["tools/run.sh"].executable and not files["bin/game"].executable
    assert "audio/track.ogg" in files and "old/removed.dat" not in files
    assert files["new/empty2.cfg"].size == 0
    assert rebuilt.directories == ("saves/slot1", "saves/slot2")


def test_round_trip_carries_keys_beyond_the_table(trees, builds) -> None:
    """Keys the delta does not interpret (here the derived-chunk table a patch made against
    the previous tree lists) travel verbatim inside ``manifest``."""
    old = builds[0]
    new = td.create_manifest(
        trees[1], name="game", version="2", chunker=CHUNKER, previous=old, previous_dir=trees[0]
    )
    delta = encode_delta(old, new)
    full = _value(new.encode())
    assert b"derived chunks" in full
    assert _value(delta)[b"manifest"][b"derived chunks"] == full[b"derived chunks"]
    assert apply_delta(old, delta).encode() == new.encode()


def test_delta_fields(builds, delta: bytes) -> None:
    old, new = builds
    value = _value(delta)
    assert set(value) == {
        b"base",
        b"format",
        b"literal hashes",
        b"literal sizes",
        b"manifest",
        b"ops",
        b"target",
    }
    assert value[b"format"] == 1 and value[b"base"] == old.id and value[b"target"] == new.id
    full = _value(new.encode())
    del full[b"chunk hashes"], full[b"chunk sizes"]
    assert value[b"manifest"] == full  # every other key verbatim, signatures included
    ops = _ops(value)
    literals = len(value[b"literal sizes"]) // 4
    assert sum(count + lits for _, count, lits in ops) == new.chunk_count
    assert sum(lits for _, _, lits in ops) == literals == len(value[b"literal hashes"]) // 32
    assert all(start + count <= old.chunk_count and count + lits > 0 for start, count, lits in ops)
    assert 0 < literals < new.chunk_count // 10


def test_delta_is_much_smaller_than_the_manifest(builds, delta: bytes) -> None:
    new = builds[1]
    assert len(delta) < len(new.encode()) / 5
    # One chunk-sized edit in a table-dominated manifest: a few hundred bytes of table.
    edited = _table_manifest(
        [(bytes([n % 251]) * 31 + bytes([n // 251]), 1024) for n in range(5000)]
    )
    entries = _entries(edited)
    entries[2500] = (b"\xee" * 32, 1024)
    changed = _table_manifest(entries)
    small = encode_delta(edited, changed)
    assert len(small) < len(changed.encode()) / 100
    assert apply_delta(edited, small).encode() == changed.encode()


def test_reverse_identity_and_empty(builds) -> None:
    old, new = builds
    assert apply_delta(new, encode_delta(new, old)).encode() == old.encode()
    same = encode_delta(old, old)
    assert _ops(_value(same)) == [(0, old.chunk_count, 0)]
    assert apply_delta(old, same).encode() == old.encode()
    empty = Manifest.from_files(
        [FileSpec("nothing", 0, False, b"", [])], name="e", version="", chunker=CHUNKER
    )
    assert apply_delta(old, encode_delta(old, empty)).encode() == empty.encode()
    assert apply_delta(empty, encode_delta(empty, old)).encode() == old.encode()
    assert _value(encode_delta(old, empty))[b"ops"] == b""


def test_runs_stay_long_through_repeated_chunks() -> None:
    zero = (b"\x00" * 32, 1024)
    unique = [(n.to_bytes(32, "big"), 1024) for n in range(1, 200)]
    old = _table_manifest([zero] * 300 + unique)
    new = _table_manifest([zero] * 300 + unique[:100] + [(b"\xff" * 32, 1024)] + unique[100:])
    ops = _ops(_value(encode_delta(old, new)))
    assert ops == [(0, 400, 1), (400, 99, 0)]


def test_same_digest_with_another_size_is_a_literal() -> None:
    digest = b"\x05" * 32
    old = _table_manifest([(digest, 1024), (b"\x06" * 32, 1024)])
    new = _table_manifest([(digest, 2048), (b"\x06" * 32, 1024)])
    delta = encode_delta(old, new)
    assert _ops(_value(delta)) == [(0, 0, 1), (1, 1, 0)]
    assert apply_delta(old, delta).encode() == new.encode()


# ------------------------------------------------------------------------- hostile deltas


def test_wrong_base_is_rejected(builds, delta: bytes) -> None:
    old, new = builds
    with pytest.raises(ManifestError, match=f"delta is for manifest {old.id_hex[:16]}…, not "):
        apply_delta(new, delta)


def _hostile(builds, delta: bytes) -> list[tuple[str, bytes, str]]:
    old = builds[0]
    value = _value(delta)
    ops = _ops(value)
    hashes, sizes = value[b"literal hashes"], value[b"literal sizes"]
    first_literal = next(n for n, op in enumerate(ops) if op[2] and (op[1] or op[2] > 1))
    flipped = bytes([hashes[0] ^ 1]) + hashes[1:]
    return [
        ("truncated", delta[:-1], "ends early"),
        ("half", delta[: len(delta) // 2], "runs past the end|ends early"),
        ("trailing", delta + b"x", "trailing bytes"),
        ("not a dict", b"li1ee", "not a dictionary"),
        ("unsorted keys", b"d6:formati1e4:base0:e", "sorted"),
        ("leading zero", delta.replace(b"6:formati1e", b"6:formati01e"), "non-canonical"),
        ("huge integer", delta.replace(b"6:formati1e", b"6:formati" + b"9" * 30 + b"e"), "long"),
        ("big format", _with(delta, format=10**19), "unsupported delta format"),
        ("format 2", _with(delta, format=2), "unsupported delta format 2"),
        ("format bytes", _with(delta, format=b"1"), "unsupported delta format"),
        ("no format", _with(delta, format=None), "lacks key b'format'"),
        ("unknown key", _with(delta, zzz=1), "unknown delta key b'zzz'"),
        ("missing ops", _with(delta, ops=None), "lacks key b'ops'"),
        ("short base", _with(delta, base=old.id[:31]), "base is not a 32-byte"),
        ("short target", _with(delta, target=b""), "target is not a 32-byte"),
        ("wrong target", _with(delta, target=b"\x00" * 32), "not its target"),
        ("manifest list", _with(delta, manifest=[]), "manifest is not a dictionary"),
        (
            "manifest with table",
            _with(delta, manifest={**value[b"manifest"], b"chunk hashes": b""}),
            "must not hold",
        ),
        ("ops not bytes", _with(delta, ops=5), "ops is not a byte string"),
        ("ops ragged", _with(delta, ops=value[b"ops"] + b"\x00"), "not a multiple of 12"),
        ("hashes ragged", _with(delta, literal_hashes=hashes[:-1]), "not a multiple of 32"),
        ("sizes ragged", _with(delta, literal_sizes=sizes + b"\x00"), "not a multiple of 4"),
        (
            "tables differ",
            _with(delta, literal_sizes=sizes[:-4]),
            "literal hashes and literal sizes differ",
        ),
        (
            "copy out of range",
            _with(delta, ops=_pack_ops([(old.chunk_count, 1, 0), *ops])),
            "past the base",
        ),
        (
            "overflowing copy",
            _with(delta, ops=_pack_ops([(0xFFFFFFFF, 0xFFFFFFFF, 0), *ops])),
            "past the base",
        ),
        (
            "overflowing literals",
            _with(delta, ops=_pack_ops([(0, 0, 0xFFFFFFFF), *ops])),
            "literal chunks past|more than",
        ),
        ("empty op", _with(delta, ops=_pack_ops([*ops, (0, 0, 0)])), "op .* is empty"),
        ("literal table too short", _shift_literals(delta, ops, first_literal, +1), "past"),
        ("literal table too long", _shift_literals(delta, ops, first_literal, -1), "its ops use"),
        ("tampered literal digest", _with(delta, literal_hashes=flipped), "signature"),
        (
            "tampered metadata",
            _with(delta, manifest={**value[b"manifest"], b"name": b"other"}),
            "signature",
        ),
        (
            "unknown manifest key",
            _with(delta, manifest={**value[b"manifest"], b"derived": b"x"}),
            "unknown manifest key",
        ),
        (
            "too many chunks",
            _with(delta, ops=_pack_ops([(0, 1, 0)] * 3 + ops)),
            "do not add up|belong to no file",
        ),
    ]


def _shift_literals(delta: bytes, ops: list[tuple[int, int, int]], at: int, by: int) -> bytes:
    start, count, literals = ops[at]
    return _with(delta, ops=_pack_ops([*ops[:at], (start, count, literals + by), *ops[at + 1 :]]))


def test_hostile_deltas_raise_manifest_error(builds, delta: bytes) -> None:
    old = builds[0]
    for label, data, message in _hostile(builds, delta):
        with pytest.raises(ManifestError, match=message) as raised:
            apply_delta(old, data)
        assert "\n" not in str(raised.value), label


def test_tampered_unsigned_delta_misses_its_target(builds) -> None:
    old, new = (Manifest.decode(bencoding.encode(_unsigned(m))) for m in builds)
    delta = encode_delta(old, new)
    hashes = _value(delta)[b"literal hashes"]
    with pytest.raises(ManifestError, match="not its target"):
        apply_delta(old, _with(delta, literal_hashes=bytes([hashes[0] ^ 1]) + hashes[1:]))
    value = _value(delta)
    with pytest.raises(ManifestError, match="not its target"):
        apply_delta(old, _with(delta, manifest={**value[b"manifest"], b"version": b"3"}))


def _unsigned(manifest: Manifest) -> dict:
    value = _value(manifest.encode())
    value.pop(b"signatures", None)
    return value


def test_limits_and_trust(builds, delta: bytes) -> None:
    old = builds[0]
    with pytest.raises(ManifestError, match="delta larger than 100 bytes"):
        apply_delta(old, delta, limits=ManifestLimits(max_bytes=100))
    with pytest.raises(ManifestError, match=r"more than 10 .*chunks|more ops than 10"):
        apply_delta(old, delta, limits=ManifestLimits(max_chunks=10))
    with pytest.raises(SignatureError, match="not signed by trusted key"):
        apply_delta(old, delta, trust=[td.public_key_bytes(td.generate_key())])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_manifest_error(builds, raw: bytes) -> None:
    with pytest.raises(ManifestError):
        apply_delta(builds[0], raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_deltas_raise_only_manifest_error(builds, delta: bytes, data) -> None:
    raw = bytearray(delta)
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        rebuilt = apply_delta(builds[0], bytes(raw))
    except ManifestError:
        return
    assert rebuilt.id == _value(bytes(raw))[b"target"]


# ------------------------------------------------------------------------- random tables

DIGEST_POOL = [bytes([n]) * 32 for n in range(12)]  # few digests: many repeats


def _table_manifest(entries: list[tuple[bytes, int]], cuts: tuple[int, ...] = ()) -> Manifest:
    """A manifest whose chunk table is ``entries``, cut into files at ``cuts``."""
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(entries)}), len(entries)]
    specs = []
    for number, (first, end) in enumerate(itertools.pairwise(bounds)):
        part = entries[first:end]
        specs.append(
            FileSpec(
                f"f{number:04d}",
                sum(size for _, size in part),
                number % 3 == 1,
                b"".join(digest for digest, _ in part),
                [size for _, size in part],
            )
        )
    return Manifest.from_files(specs, name="t", version="1", chunker=ChunkerParams.fastcdc(1024))


def _entries(manifest: Manifest) -> list[tuple[bytes, int]]:
    return [
        (manifest.chunk_digest(n), manifest.chunk_sizes[n]) for n in range(manifest.chunk_count)
    ]


def _size_of(digest: bytes) -> int:
    """A digest names its content, so its size too."""
    return (256, 1024, 4096)[digest[0] % 3]


entry = (st.sampled_from(DIGEST_POOL) | st.binary(min_size=32, max_size=32)).map(
    lambda digest: (digest, _size_of(digest))
)


@st.composite
def edited_tables(draw: st.DrawFn) -> tuple[list[tuple[bytes, int]], list[tuple[bytes, int]]]:
    old = draw(st.lists(entry, max_size=60))
    new = list(old)
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["insert", "delete", "replace", "move", "duplicate"]))
        first = draw(st.integers(0, len(new)))
        end = draw(st.integers(first, min(len(new), first + 10)))
        if kind == "insert":
            new[first:first] = draw(st.lists(entry, min_size=1, max_size=5))
        elif kind == "delete":
            del new[first:end]
        elif kind == "replace":
            new[first:end] = draw(st.lists(entry, max_size=5))
        else:
            span = new[first:end]
            if kind == "move":
                del new[first:end]
            at = draw(st.integers(0, len(new)))
            new[at:at] = span
    return old, new


@settings(max_examples=150, deadline=None)
@given(
    tables=edited_tables(),
    cuts_old=st.lists(st.integers(0, 80), max_size=4),
    cuts_new=st.lists(st.integers(0, 80), max_size=4),
)
def test_round_trip_over_random_table_edits(tables, cuts_old, cuts_new) -> None:
    old_entries, new_entries = tables
    old = _table_manifest(old_entries, tuple(cuts_old))
    new = _table_manifest(new_entries, tuple(cuts_new))
    delta = encode_delta(old, new)
    assert apply_delta(old, delta).encode() == new.encode()
    value = _value(delta)
    # Never more literal entries than new entries old's table lacks (by digest and size).
    known = set(old_entries)
    assert len(value[b"literal sizes"]) // 4 == sum(e not in known for e in new_entries)


# ------------------------------------------------------------------------- the commands


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def summary(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_cli_delta_and_apply(capsys, builds, key, tmp_path: Path) -> None:
    old, new = builds
    old_file, new_file, delta_file = tmp_path / "v1.tdm", tmp_path / "v2.tdm", tmp_path / "d.tdd"
    old.save(old_file)
    new.save(new_file)
    code, out, _ = run(
        capsys, "manifest", "delta", str(old_file), str(new_file), "-o", str(delta_file), "--json"
    )
    made = summary(out)
    assert code == 0 and made["event"] == "summary"
    assert made["base"] == old.id_hex and made["target"] == new.id_hex
    assert made["manifest_bytes"] == new_file.stat().st_size
    assert made["delta_bytes"] == delta_file.stat().st_size < made["manifest_bytes"]
    assert delta_file.read_bytes() == encode_delta(old, new)

    code, out, _ = run(
        capsys, "manifest", "delta", str(old_file), str(new_file), "-o", str(delta_file)
    )
    assert code == 0 and "smaller" in out and "delta bytes" in out

    rebuilt = tmp_path / "rebuilt.tdm"
    public = td.public_key_bytes(key).hex()
    code, out, _ = run(
        capsys,
        "manifest",
        "apply",
        str(old_file),
        str(delta_file),
        "-o",
        str(rebuilt),
        "--trust",
        public,
        "--json",
    )
    applied = summary(out)
    assert code == 0 and applied["id"] == new.id_hex
    assert applied["bytes"] == len(new.encode())
    assert rebuilt.read_bytes() == new_file.read_bytes()
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, nothing left behind


def test_cli_apply_errors_are_one_line(capsys, builds, tmp_path: Path) -> None:
    old, new = builds
    new_file, delta_file, out_file = tmp_path / "v2.tdm", tmp_path / "d.tdd", tmp_path / "o.tdm"
    new.save(new_file)
    delta_file.write_bytes(encode_delta(old, new))
    code, out, err = run(
        capsys, "manifest", "apply", str(new_file), str(delta_file), "-o", str(out_file)
    )
    assert code == 3 and not out_file.exists()
    assert f"delta is for manifest {old.id_hex[:16]}…" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, out, err = run(
        capsys, "manifest", "apply", str(new_file), str(delta_file), "-o", str(out_file), "--json"
    )
    record = summary(out)
    assert code == 3 and record["event"] == "error" and record["error"] == "ManifestError"
    code, _, err = run(
        capsys, "manifest", "apply", str(new_file), str(tmp_path / "nope"), "-o", str(out_file)
    )
    assert code == 3 and "cannot read delta" in err and len(err.strip().splitlines()) == 1
    delta_file.write_bytes(b"garbage")
    code, _, err = run(
        capsys, "manifest", "apply", str(new_file), str(delta_file), "-o", str(out_file)
    )
    assert code == 3 and len(err.strip().splitlines()) == 1 and not out_file.exists()


def test_a_few_ops_cannot_make_a_manifest_past_the_size_limit(builds) -> None:
    """Copying the base's table over and over costs 12 bytes an op: the table is refused by
    its size before it is built, not after."""
    old, _ = builds
    delta = encode_delta(old, old)
    repeated = _with(delta, ops=_pack_ops([(0, old.chunk_count, 0)] * 50))
    limits = ManifestLimits(max_bytes=20 * old.chunk_count * 36)
    with pytest.raises(ManifestError, match="delta describes a manifest larger than"):
        apply_delta(old, repeated, limits=limits)
