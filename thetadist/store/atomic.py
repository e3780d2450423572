"""Small durable-write helpers: a file appears under its final name complete or not at all."""

from __future__ import annotations

import os
from pathlib import Path

from thetadist.errors import StoreError


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a sibling temporary file, fsync it, rename it over ``path``, fsync the dir."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_directory(path.parent if str(path.parent) else Path("."))
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise StoreError(f"cannot write {os.fspath(path)!r}: {exc.strerror}") from None
