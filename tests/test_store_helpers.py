"""Shared helpers for the store tests (imported by the test_store_* modules)."""

from __future__ import annotations

import os
import random
from pathlib import Path

from thetadist.manifest.chunking import chunk_buffer
from thetadist.manifest.create import create_manifest
from thetadist.manifest.model import ChunkerParams, FileSpec, Manifest
from thetadist.store import STAGING_DIR, PieceStore

CHUNKER = ChunkerParams.fastcdc(4096)
PIECE_SIZE = 64 * 1024


def rand_bytes(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def make_tree(
    root: Path,
    files: dict[str, bytes],
    *,
    executable: frozenset[str] = frozenset(),
    empty_dirs: tuple[str, ...] = (),
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for path, data in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(0o755 if path in executable else 0o644)
    for directory in empty_dirs:
        (root / directory).mkdir(parents=True, exist_ok=True)
    return root


def manifest_of(root: Path, *, piece_size: int = PIECE_SIZE) -> Manifest:
    return create_manifest(root, name="t", chunker=CHUNKER, piece_size=piece_size, workers=2)


def snapshot(root: Path) -> dict[str, object]:
    """Every file (content, exec bit) and every directory under ``root``, staging excluded."""
    result: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != STAGING_DIR]
        for name in dirnames:
            result[os.path.normpath(os.path.join(rel_dir, name)) + "/"] = "dir"
        for name in filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            result[rel] = (Path(path).read_bytes(), os.stat(path).st_mode & 0o111 != 0)
    return result


def piece_data(manifest: Manifest, source: Path, index: int) -> bytes:
    piece = manifest.pieces[index]
    with open(source / manifest.files[piece.file_index].path, "rb") as handle:
        handle.seek(piece.offset)
        return handle.read(piece.size)


def fill_missing(store: PieceStore, source: Path) -> int:
    missing = store.missing_pieces()
    for index in missing:
        store.write_piece_sync(index, piece_data(store.manifest, source, index))
    return len(missing)


def synthetic_manifest(
    contents: dict[str, bytes],
    *,
    executable: frozenset[str] = frozenset(),
    directories: tuple[str, ...] = (),
    piece_size: int = PIECE_SIZE,
    chunker: ChunkerParams = CHUNKER,
) -> Manifest:
    specs = []
    for path, data in contents.items():
        sizes, digests = chunk_buffer(data, chunker)
        specs.append(FileSpec(path, len(data), path in executable, digests, sizes))
    return Manifest.from_files(
        specs, name="s", version="", chunker=chunker, directories=directories, piece_size=piece_size
    )
