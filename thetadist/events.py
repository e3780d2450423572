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


@dataclass(frozen=True)
class DataChecked(Event):
    """A seeder hashed its whole directory before serving (``seed --check``)."""

    kind: ClassVar[str] = "data_checked"
    pieces_checked: int
    pieces_withdrawn: int
    seconds: float


@dataclass(frozen=True)
class Listening(Event):
    kind: ClassVar[str] = "listening"
    host: str
    port: int


@dataclass(frozen=True)
class PeerConnected(Event):
    kind: ClassVar[str] = "peer_connected"
    peer: str
    peer_id: str
    direction: str


@dataclass(frozen=True)
class PeerDisconnected(Event):
    kind: ClassVar[str] = "peer_disconnected"
    peer: str
    reason: str
    downloaded: int
    uploaded: int


@dataclass(frozen=True)
class PeerBanned(Event):
    kind: ClassVar[str] = "peer_banned"
    peer: str
    reason: str


@dataclass(frozen=True)
class PieceServeFailed(Event):
    kind: ClassVar[str] = "piece_serve_failed"
    piece: int
    reason: str


@dataclass(frozen=True)
class TrackerAnnounced(Event):
    kind: ClassVar[str] = "tracker_announced"
    url: str
    peers: int
    interval: int


@dataclass(frozen=True)
class TrackerFailed(Event):
    kind: ClassVar[str] = "tracker_failed"
    url: str
    reason: str


@dataclass(frozen=True)
class SwarmProgress(Event):
    kind: ClassVar[str] = "progress"
    bytes_done: int
    bytes_total: int
    download_rate: float
    upload_rate: float
    uploaded: int
    peers: int
    #: Wei promised in vouchers so far (paying nodes) and credited by vouchers received.
    paid_wei: int = 0
    received_wei: int = 0


@dataclass(frozen=True)
class DownloadComplete(Event):
    kind: ClassVar[str] = "complete"
    bytes_total: int
    seconds: float


@dataclass(frozen=True)
class VoucherSigned(Event):
    """A fetcher paid a peer for a verified piece (recorded in its ledger, then sent)."""

    kind: ClassVar[str] = "voucher_signed"
    peer: str
    piece: int
    bytes: int
    amount_wei: int
    cumulative_wei: int


@dataclass(frozen=True)
class VoucherReceived(Event):
    """A seeder received, verified and recorded a voucher."""

    kind: ClassVar[str] = "voucher_received"
    peer: str
    payer: str
    amount_wei: int
    cumulative_wei: int


@dataclass(frozen=True)
class PaymentDeclined(Event):
    """A fetcher will not pay this peer (too dear, another chain, no wallet, out of funds),
    so it requests nothing from it."""

    kind: ClassVar[str] = "payment_declined"
    peer: str
    reason: str


@dataclass(frozen=True)
class PaymentRefused(Event):
    """A seeder stopped serving a payer (behind by a credit window, pool short, unlocking,
    flagged, or a forged voucher)."""

    kind: ClassVar[str] = "payment_refused"
    peer: str
    reason: str
