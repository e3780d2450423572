"""A small, deterministic sample game build and its patch, for the demo and the quick start.

Version 1 holds archive files of records, media, many small text files, an executable, an
empty file and an empty directory; version 2 edits records inside the archives, replaces a
media file, edits, adds, removes and renames small files — the shape of a weekly game patch.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import blake3


def _noise(label: str, size: int) -> bytes:
    """Incompressible, reproducible bytes (BLAKE3 in XOF mode)."""
    return blake3.blake3(label.encode()).digest(length=size)


def _records(label: str, count: int, size: int) -> list[bytes]:
    return [_noise(f"{label}/record/{i}", size + (i * 7919) % size) for i in range(count)]


def _text(label: str, lines: int) -> bytes:
    words = _noise(label, lines * 8).hex()
    return "".join(
        f"{label.split('/')[-1]}.key{n} = {words[n * 16 : n * 16 + 16]}\n" for n in range(lines)
    ).encode()


def write_sample_builds(root: str | os.PathLike[str], *, scale: int = 1) -> tuple[Path, Path]:
    """Write ``root/v1`` and ``root/v2`` (about ``scale`` × 40 MiB each); return both paths."""
    base = Path(root)
    v1, v2 = base / "v1", base / "v2"
    for tree in (v1, v2):
        if tree.exists():
            shutil.rmtree(tree)
        (tree / "data").mkdir(parents=True)
        (tree / "config").mkdir()
        (tree / "saves").mkdir()
    archives = {f"data/pak{n}.pak": _records(f"pak{n}", 120 * scale, 64 * 1024) for n in range(2)}
    for name, records in archives.items():
        (v1 / name).write_bytes(b"".join(records))
        patched = list(records)
        for position in range(5, len(patched), 40):
            patched[position] = _noise(f"{name}/patched/{position}", len(patched[position]))
        patched.insert(len(patched) // 2, _noise(f"{name}/inserted", 48 * 1024))
        del patched[len(patched) // 3]
        (v2 / name).write_bytes(b"".join(patched))
    for n in range(4):
        media = _noise(f"media{n}", 2 * 1024 * 1024 * scale)
        (v1 / f"data/movie{n}.bk2").write_bytes(media)
        (v2 / f"data/movie{n}.bk2").write_bytes(
            _noise("media-new", len(media)) if n == 0 else media
        )
    for n in range(300 * scale):
        text = _text(f"config/setting{n}", 20 + n % 50)
        (v1 / f"config/setting{n}.ini").write_bytes(text)
        if n % 50 == 7:
            text = text.replace(b"key3 =", b"key3 = 1 +")
        if n % 97 == 13:
            continue  # removed in version 2
        target = f"config/renamed{n}.ini" if n % 101 == 17 else f"config/setting{n}.ini"
        (v2 / target).write_bytes(text)
    (v2 / "config/new-feature.ini").write_bytes(_text("config/new-feature", 40))
    for tree, marker in ((v1, b"1"), (v2, b"2")):
        launcher = tree / "game.sh"
        launcher.write_bytes(b"#!/bin/sh\necho sample game build " + marker + b"\n")
        launcher.chmod(0o755)
        (tree / "saves/.keep").write_bytes(b"")
        (tree / "logs").mkdir()
    return v1, v2
