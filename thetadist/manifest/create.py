"""Building a manifest from a directory tree."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from thetadist.errors import UsageError
from thetadist.events import EntrySkipped, EventCallback, FileScanned, ScanStarted, ignore_event
from thetadist.manifest.align import align_files
from thetadist.manifest.chunking import ScanItem, chunk_files, walk_tree
from thetadist.manifest.model import DEFAULT_PIECE_SIZE, ChunkerParams, FileSpec, Manifest
from thetadist.manifest.signing import sign_manifest


def create_manifest(
    root: str | os.PathLike[str],
    *,
    name: str | None = None,
    version: str = "",
    chunker: ChunkerParams | None = None,
    piece_size: int = DEFAULT_PIECE_SIZE,
    previous: Manifest | bytes | None = None,
    previous_dir: str | os.PathLike[str] | None = None,
    sign_key: Ed25519PrivateKey | None = None,
    on_event: EventCallback = ignore_event,
    workers: int | None = None,
) -> Manifest:
    """Chunk and hash every regular file under ``root`` and return its manifest.

    ``previous`` (a manifest or its id) records which version this one patches.  With
    ``previous_dir``, the previous version's tree, chunks are cut where the new content starts
    and ends, and old content around an edit is listed as derived chunks (see
    :mod:`thetadist.manifest.align`), so a holder of the old version fetches little more than
    the new bytes.  Symlinks and special files cannot be described and are reported as
    :class:`EntrySkipped` events.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise UsageError(f"not a directory: {os.fspath(root)!r}")
    chunker = chunker or ChunkerParams.fastcdc()
    files, empty_dirs, skipped = walk_tree(root_path)
    for path, reason in skipped:
        on_event(EntrySkipped(path, reason))
    on_event(ScanStarted(os.fspath(root_path), len(files), sum(item.size for item in files)))

    def report(item: ScanItem, spec: FileSpec) -> None:
        on_event(FileScanned(item.manifest_path, item.size, len(spec.sizes)))

    specs = list(chunk_files(files, chunker, workers=workers, on_file=report))
    if previous_dir is not None:
        old_root = Path(previous_dir)
        if not old_root.is_dir():
            raise UsageError(f"not a directory: {os.fspath(previous_dir)!r}")
        if chunker.algorithm == "fastcdc":  # fixed-size chunks must stay fixed-size
            specs = align_files(files, specs, old_root, chunker, workers=workers)
    previous_id = previous.id if isinstance(previous, Manifest) else previous
    manifest = Manifest.from_files(
        specs,
        name=name if name is not None else root_path.resolve().name,
        version=version,
        chunker=chunker,
        directories=empty_dirs,
        piece_size=piece_size,
        previous=previous_id,
    )
    return sign_manifest(manifest, sign_key) if sign_key is not None else manifest
