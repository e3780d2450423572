"""The events of the swarm wire protocol v1, as plain frozen dataclasses.

A message is what one side says to the other; ``ConnectionClosed`` is the one event that is
not a message (the peer hung up).  The byte layout of every message is in docs/protocol.md
and in :mod:`thetadist.wire.framing`; the rules about when a message may be sent are in
:mod:`thetadist.wire.connection`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from thetadist.errors import LocalProtocolError

PROTOCOL_VERSION = 1
MANIFEST_ID_SIZE = 32
PEER_ID_SIZES = (20, 32)
ADDRESS_SIZE = 20

#: What a PIECE frame adds in front of its payload: length u32, type u8, piece u32,
#: first chunk u32, chunk count u32.  A frame limit of ``piece_frame_size(largest piece)``
#: lets every whole piece travel in one frame.
PIECE_FRAME_OVERHEAD = 17
DEFAULT_PIECE_SIZE = 1024 * 1024
DEFAULT_MAX_OUTSTANDING_REQUESTS = 64
#: The smallest frame limit a side may advertise: room for a handshake, a voucher and a
#: goodbye, so control messages always fit.
MIN_MAX_FRAME = 4096
MAX_VOUCHER_SIZE = 1024
MAX_GOODBYE_TEXT_SIZE = 256
MAX_HANDSHAKE_EXTENSIONS_SIZE = 1024

Buffer = bytes | bytearray | memoryview


def piece_frame_size(data_length: int) -> int:
    """Size of the PIECE frame that carries ``data_length`` bytes of chunk data."""
    return PIECE_FRAME_OVERHEAD + data_length


DEFAULT_MAX_FRAME = piece_frame_size(DEFAULT_PIECE_SIZE)


class Capability(enum.IntFlag):
    """Bits of ``Handshake.capabilities``; bits this version does not know are ignored."""

    #: This side understands VOUCHER messages: it may send them and accepts them.
    VOUCHERS = 1 << 0


class RejectReason(enum.IntEnum):
    """Known values of ``Reject.reason``; other values are accepted and mean "other"."""

    NOT_AVAILABLE = 1
    CANCELLED = 2
    BUSY = 3
    PAYMENT_REQUIRED = 4


class GoodbyeReason(enum.IntEnum):
    """Known values of ``Goodbye.reason``; other values are accepted and mean "other"."""

    NORMAL = 0
    PROTOCOL_ERROR = 1
    WRONG_MANIFEST = 2
    TIMEOUT = 3
    TOO_MANY_PEERS = 4
    PAYMENT_REQUIRED = 5
    SHUTTING_DOWN = 6


class ChunkRun(NamedTuple):
    """A run of consecutive chunks inside one piece: what a request asks for."""

    piece: int
    first_chunk: int
    chunk_count: int


@dataclass(frozen=True)
class PaymentTerms:
    """What a seeder charges and where vouchers are redeemed (filled by the payments layer).

    ``credit_window``: how many bytes the seeder serves ahead of the vouchers that pay for
    them (None: not stated, as in terms from before it was added), so that a payer sends its
    vouchers soon enough not to leave the seeder waiting.
    """

    payee: bytes
    price_per_mib_wei: int
    chain_id: int
    contract: bytes
    credit_window: int | None = None


@dataclass(frozen=True, kw_only=True)
class Handshake:
    """The first message in each direction.

    ``max_frame`` and ``max_outstanding_requests`` are the limits the sender enforces on what
    it receives; the other side must stay within them.  A ``max_outstanding_requests`` of 0
    says "do not request from me".
    """

    manifest_id: bytes
    peer_id: bytes
    listen_port: int = 0
    capabilities: int = 0
    max_frame: int = DEFAULT_MAX_FRAME
    max_outstanding_requests: int = DEFAULT_MAX_OUTSTANDING_REQUESTS
    payment_terms: PaymentTerms | None = None
    extensions: bytes = b""


@dataclass(frozen=True)
class Bitfield:
    """Which pieces the sender has: bit ``i`` (most significant bit first) is piece ``i``."""

    bits: bytes

    @classmethod
    def from_pieces(cls, piece_count: int, pieces: Iterable[int]) -> Bitfield:
        bits = bytearray(bitfield_size(piece_count))
        for piece in pieces:
            if not 0 <= piece < piece_count:
                raise LocalProtocolError(f"piece {piece} out of range for {piece_count} pieces")
            bits[piece >> 3] |= 0x80 >> (piece & 7)
        return cls(bytes(bits))

    def has(self, piece: int) -> bool:
        byte = piece >> 3
        if piece < 0 or byte >= len(self.bits):
            return False
        return bool(self.bits[byte] & (0x80 >> (piece & 7)))

    def pieces(self) -> Iterator[int]:
        for byte_index, byte in enumerate(self.bits):
            if byte:
                base = byte_index << 3
                for bit in range(8):
                    if byte & (0x80 >> bit):
                        yield base + bit


def bitfield_size(piece_count: int) -> int:
    return (piece_count + 7) >> 3


@dataclass(frozen=True)
class Have:
    piece: int


@dataclass(frozen=True)
class Request:
    """Ask for ``chunk_count`` chunks of ``piece`` starting at chunk ``first_chunk`` of the
    piece (not of the manifest), so a fetcher holding some chunks asks only for the rest."""

    piece: int
    first_chunk: int
    chunk_count: int

    @property
    def run(self) -> ChunkRun:
        return ChunkRun(self.piece, self.first_chunk, self.chunk_count)


@dataclass(frozen=True)
class Cancel:
    """Withdraw a request; the seeder still answers it, with PIECE or REJECT(CANCELLED)."""

    piece: int
    first_chunk: int
    chunk_count: int

    @property
    def run(self) -> ChunkRun:
        return ChunkRun(self.piece, self.first_chunk, self.chunk_count)


@dataclass(frozen=True)
class Piece:
    """The data of the chunks one request asked for, concatenated."""

    piece: int
    first_chunk: int
    chunk_count: int
    data: Buffer = field(repr=False)

    @property
    def run(self) -> ChunkRun:
        return ChunkRun(self.piece, self.first_chunk, self.chunk_count)


@dataclass(frozen=True)
class Reject:
    piece: int
    first_chunk: int
    chunk_count: int
    reason: int

    @property
    def run(self) -> ChunkRun:
        return ChunkRun(self.piece, self.first_chunk, self.chunk_count)


@dataclass(frozen=True)
class Voucher:
    """A payment voucher, opaque to the wire layer (the payments layer defines it)."""

    payload: bytes


@dataclass(frozen=True)
class KeepAlive:
    pass


@dataclass(frozen=True)
class Goodbye:
    reason: int
    text: str = ""


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer closed its sending side (end of stream after whole frames)."""


Message = (
    Handshake | Bitfield | Have | Request | Cancel | Piece | Reject | Voucher | KeepAlive | Goodbye
)
Event = Message | ConnectionClosed
