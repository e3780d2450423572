"""Progress and audit events: plain frozen dataclasses handed to an ``on_event`` callback.

Library code never prints; it calls ``on_event(event)``.  The CLI renders events with rich or
as NDJSON (``--json``), where each event becomes ``{"event": <kind>, ...fields}``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"

    def as_json(self) -> dict[str, Any]:
        data = {"event": self.kind}
        for item in fields(self):
            value = getattr(self, item.name)
            data[item.name] = value.hex() if isinstance(value, bytes) else value
        return data


EventCallback = Callable[[Event], None]


def ignore_event(event: Event) -> None:
    """The default ``on_event``: drop everything."""


@dataclass(frozen=True)
class ScanStarted(Event):
    kind: ClassVar[str] = "scan_started"
    root: str
    files: int
    total_bytes: int


@dataclass(frozen=True)
class FileScanned(Event):
    kind: ClassVar[str] = "file_scanned"
    path: str
    size: int
    chunks: int


@dataclass(frozen=True)
class EntrySkipped(Event):
    kind: ClassVar[str] = "entry_skipped"
    path: str
    reason: str


@dataclass(frozen=True)
class PlanReady(Event):
    kind: ClassVar[str] = "plan_ready"
    pieces_total: int
    pieces_present: int
    bytes_total: int
    bytes_present: int
    bytes_local: int
    bytes_missing: int


@dataclass(frozen=True)
class ChunksCopied(Event):
    kind: ClassVar[str] = "chunks_copied"
    source: str
    chunks: int
    bytes: int


@dataclass(frozen=True)
class PieceStored(Event):
    kind: ClassVar[str] = "piece_stored"
    piece: int
    size: int
    source: str


@dataclass(frozen=True)
class FileCompleted(Event):
    kind: ClassVar[str] = "file_completed"
    path: str
    size: int


@dataclass(frozen=True)
class ChunkCorrupt(Event):
    kind: ClassVar[str] = "chunk_corrupt"
    path: str
    chunk: int
    offset: int
    size: int


@dataclass(frozen=True)
class FileMissing(Event):
    kind: ClassVar[str] = "file_missing"
    path: str
    size: int
