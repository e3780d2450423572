"""Validation of the relative POSIX paths a manifest may name.

A manifest comes from a stranger and its paths decide where bytes are written, so a path is
accepted only in its one normal form: relative, ``/``-separated, UTF-8 in NFC, with no empty,
``.`` or ``..`` component, no backslash, no NUL or other control character, and bounded in
length and depth.
"""

from __future__ import annotations

import unicodedata

from thetadist.errors import ManifestError

MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255
MAX_PATH_DEPTH = 64


def validate_path(raw: bytes) -> str:
    """Return ``raw`` as text if it is a normalised relative POSIX path, else raise."""
    if not raw:
        raise ManifestError("empty path")
    if len(raw) > MAX_PATH_BYTES:
        raise ManifestError(f"path longer than {MAX_PATH_BYTES} bytes")
    try:
        path = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError(f"path is not UTF-8: {raw[:64]!r}") from None
    shown = ascii(path[:80])
    if unicodedata.normalize("NFC", path) != path:
        raise ManifestError(f"path is not in Unicode NFC form: {shown}")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise ManifestError(f"path contains a control character: {shown}")
    if "\\" in path:
        raise ManifestError(f"path contains a backslash: {shown}")
    if path.startswith("/"):
        raise ManifestError(f"path is absolute: {shown}")
    components = path.split("/")
    if len(components) > MAX_PATH_DEPTH:
        raise ManifestError(f"path deeper than {MAX_PATH_DEPTH} components: {shown}")
    for component in components:
        if component in ("", ".", ".."):
            raise ManifestError(f"path has an empty, '.' or '..' component: {shown}")
        if len(component.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise ManifestError(f"path component longer than {MAX_COMPONENT_BYTES} bytes: {shown}")
    return path


def check_no_prefix_conflicts(file_paths: list[str], directory_paths: list[str]) -> None:
    """Reject a tree where a file is also used as a directory (``a`` and ``a/b``)."""
    parents: set[str] = set()
    for path in [*file_paths, *directory_paths]:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parents.add("/".join(parts[:depth]))
    files = set(file_paths)
    clash = files & parents
    if clash:
        raise ManifestError(f"path is both a file and a directory: {min(clash)!a}")
    if files & set(directory_paths):
        raise ManifestError("path listed both as a file and as an empty directory")
