"""What changed between two manifests, and what a holder of the old version must fetch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from thetadist.manifest.delta import encode_delta
from thetadist.manifest.model import DIGEST_SIZE, Manifest


@dataclass(frozen=True)
class Rename:
    old_path: str
    new_path: str
    size: int


@dataclass(frozen=True)
class ManifestDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    renamed: list[Rename] = field(default_factory=list)
    unchanged: int = 0
    new_total_bytes: int = 0
    bytes_reusable: int = 0
    #: Unique chunk bytes of the new version that the old one does not hold.
    data_bytes_to_fetch: int = 0
    #: What a patching client downloads to learn the new manifest: the manifest delta from
    #: the old one when the new one names it as ``previous``, else the whole new manifest.
    manifest_bytes: int = 0
    #: The whole new manifest.
    full_manifest_bytes: int = 0

    @property
    def bytes_to_fetch(self) -> int:
        return self.data_bytes_to_fetch + self.manifest_bytes

    def summary(self) -> dict[str, Any]:
        return {
            "files_added": len(self.added),
            "files_removed": len(self.removed),
            "files_changed": len(self.changed),
            "files_renamed": len(self.renamed),
            "files_unchanged": self.unchanged,
            "new_total_bytes": self.new_total_bytes,
            "bytes_reusable": self.bytes_reusable,
            "data_bytes_to_fetch": self.data_bytes_to_fetch,
            "manifest_bytes": self.manifest_bytes,
            "full_manifest_bytes": self.full_manifest_bytes,
            "bytes_to_fetch": self.bytes_to_fetch,
        }


def _digest_set(manifest: Manifest) -> set[bytes]:
    table = manifest.chunk_digests
    return {table[i : i + DIGEST_SIZE] for i in range(0, len(table), DIGEST_SIZE)}


def diff(old: Manifest, new: Manifest) -> ManifestDiff:
    """Compare two manifests.  Chunks are compared by digest, so content that moved between
    files or within a file counts as reusable.  A rename is a removed path and an added path
    with identical content; a file both at its old path and copied elsewhere is not a rename.

    A derived chunk counts as reusable when the old version holds the chunk it is cut from.
    Reuse across different chunker parameters is naturally near zero: cut points differ.
    """
    old_paths = {entry.path: index for index, entry in enumerate(old.files)}
    new_paths = {entry.path: index for index, entry in enumerate(new.files)}
    added = [path for path in new_paths if path not in old_paths]
    removed = [path for path in old_paths if path not in new_paths]
    changed: list[str] = []
    unchanged = 0
    for path in new_paths.keys() & old_paths.keys():
        if old.file_digest(old_paths[path]) == new.file_digest(new_paths[path]):
            unchanged += 1
        else:
            changed.append(path)
    removed_by_content: dict[bytes, list[str]] = {}
    for path in removed:
        removed_by_content.setdefault(old.file_digest(old_paths[path]), []).append(path)
    renamed: list[Rename] = []
    for path in list(added):
        candidates = removed_by_content.get(new.file_digest(new_paths[path]))
        if candidates:
            old_path = candidates.pop(0)
            renamed.append(Rename(old_path, path, new.files[new_paths[path]].size))
            added.remove(path)
            removed.remove(old_path)

    have = _digest_set(old)
    seen: set[bytes] = set()
    reusable = 0
    to_fetch = 0
    table = new.chunk_digests
    for index, size in enumerate(new.chunk_sizes):
        digest = table[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE]
        source = new.derived.get(index)
        if digest in have or (source is not None and source.digest in have):
            reusable += size
        elif digest not in seen:
            seen.add(digest)
            to_fetch += size
        else:
            reusable += size  # a repeat inside the new version: fetched once, copied after
    full = len(new.encode())
    manifest_bytes = full
    if new.previous == old.id:
        manifest_bytes = min(full, len(encode_delta(old, new)))
    return ManifestDiff(
        added=sorted(added),
        removed=sorted(removed),
        changed=sorted(changed),
        renamed=sorted(renamed, key=lambda r: r.new_path),
        unchanged=unchanged,
        new_total_bytes=new.total_size,
        bytes_reusable=reusable,
        data_bytes_to_fetch=to_fetch,
        manifest_bytes=manifest_bytes,
        full_manifest_bytes=full,
    )
