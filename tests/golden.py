"""The golden manifests in manifests/: how they are made, shared by the test and `regenerate`."""

import tempfile
from pathlib import Path

import thetadist as td
from thetadist.manifest import bencoding
from thetadist.manifest.delta import encode_delta
from thetadist.sample import write_sample_builds

GOLDEN = Path(__file__).parent.parent / "manifests"


def golden_manifests() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as work:
        v1, v2 = write_sample_builds(work)
        m1 = td.create_manifest(v1, name="sample-game", version="1")
        m2 = td.create_manifest(v2, name="sample-game", version="2", previous=m1)
        aligned = td.create_manifest(
            v2, name="sample-game", version="2", previous=m1, previous_dir=v1
        )
        fixed = td.create_manifest(
            v1, name="sample-game", version="1", chunker=td.ChunkerParams.fixed(64 * 1024)
        )
    return {
        "sample-v1.tdm": m1.encode(),
        "sample-v2.tdm": m2.encode(),
        "sample-v1-fixed64k.tdm": fixed.encode(),
        "sample-v2-aligned.tdm": aligned.encode(),
        "sample-v2-aligned-from-v1.tddelta": encode_delta(m1, aligned),
    }


def hostile_manifests(valid: bytes) -> dict[str, bytes]:
    value = bencoding.decode(valid)

    def variant(**changes: object) -> bytes:
        copy = dict(value)
        copy.update({k.replace("_", " ").encode(): v for k, v in changes.items()})
        return bencoding.encode(copy)

    first = dict(value[b"files"][0])
    return {
        "absolute-path.tdm": variant(
            files=[{**first, b"path": b"/etc/passwd"}, *value[b"files"][1:]]
        ),
        "dotdot-path.tdm": variant(files=[{**first, b"path": b"../../x"}, *value[b"files"][1:]]),
        "size-mismatch.tdm": variant(total_size=value[b"total size"] + 1),
        "trailing-bytes.tdm": valid + b"\n",
        "non-canonical.tdm": valid.replace(b"6:formati1e", b"6:formati01e"),
        "deep-nesting.tdm": b"d5:filesl" + b"l" * 64 + b"e" * 64 + b"ee",
        "huge-integer.tdm": variant(piece_size=10**25),
    }


if __name__ == "__main__":
    made = golden_manifests()
    for name, data in made.items():
        (GOLDEN / name).write_bytes(data)
    for name, data in hostile_manifests(made["sample-v1.tdm"]).items():
        (GOLDEN / "hostile" / name).write_bytes(data)
    print("written", sorted(made))
