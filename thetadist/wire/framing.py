"""The frame codec: every message travels as one length-prefixed frame.

    frame := length u32 | type u8 | body        (length counts the type byte and the body)

Integers are unsigned and big-endian.  The layout of each body is specified in
docs/protocol.md; this module is its only implementation.  Decoding is split in two so
that a frame limit can be enforced from the first five bytes, before any payload is
buffered: :class:`ReceiveBuffer` cuts frames out of the byte stream, :func:`decode_message`
turns one frame body into a message.  Encoding failures are our fault
(:class:`LocalProtocolError`); decoding failures are the peer's (:class:`RemoteProtocolError`).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from typing import Any

from thetadist.errors import LocalProtocolError, RemoteProtocolError
from thetadist.wire.messages import (
    ADDRESS_SIZE,
    MANIFEST_ID_SIZE,
    MAX_GOODBYE_TEXT_SIZE,
    MAX_HANDSHAKE_EXTENSIONS_SIZE,
    MAX_VOUCHER_SIZE,
    PEER_ID_SIZES,
    PIECE_FRAME_OVERHEAD,
    PROTOCOL_VERSION,
    Bitfield,
    Buffer,
    Cancel,
    Goodbye,
    Handshake,
    Have,
    KeepAlive,
    Message,
    PaymentTerms,
    Piece,
    Reject,
    Request,
    Voucher,
)

MAGIC = b"THETADST"


class MessageType(enum.IntEnum):
    HANDSHAKE = 0
    BITFIELD = 1
    HAVE = 2
    REQUEST = 3
    CANCEL = 4
    PIECE = 5
    REJECT = 6
    VOUCHER = 7
    KEEPALIVE = 8
    GOODBYE = 9


#: Types from here up belong to extensions; a v1 peer skips those frames unread.  Unknown
#: types below it are core types of a later version, which v1 cannot parse safely.
FIRST_EXTENSION_TYPE = 0x80

_FRAME_HEADER = struct.Struct(">IB")
FRAME_HEADER_SIZE = _FRAME_HEADER.size
_LENGTH_SIZE = 4
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_RUN = struct.Struct(">III")
_REJECT = struct.Struct(">IIIH")
_PIECE_HEADER = struct.Struct(">IBIII")
_MAGIC_AND_VERSION = struct.Struct(">8sH")
_HANDSHAKE_IDS = struct.Struct(">32sB")
_HANDSHAKE_SETTINGS = struct.Struct(">HQIH")
_PAYMENT_TERMS = struct.Struct(">20s32sQ20sQ")
#: The terms as first defined, without the credit window (``credit_window`` None).
_PAYMENT_TERMS_WITHOUT_WINDOW = struct.Struct(">20s32sQ20s")
_TERMS_LAYOUTS = {layout.size: layout for layout in (_PAYMENT_TERMS, _PAYMENT_TERMS_WITHOUT_WINDOW)}

assert _PIECE_HEADER.size == PIECE_FRAME_OVERHEAD
assert _HANDSHAKE_IDS.size == MANIFEST_ID_SIZE + 1

MAX_HANDSHAKE_FRAME = (
    FRAME_HEADER_SIZE
    + _MAGIC_AND_VERSION.size
    + _HANDSHAKE_IDS.size
    + max(PEER_ID_SIZES)
    + _HANDSHAKE_SETTINGS.size
    + _U16.size
    + _PAYMENT_TERMS.size
    + _U16.size
    + MAX_HANDSHAKE_EXTENSIONS_SIZE
)


def is_extension_type(kind: int) -> bool:
    return kind >= FIRST_EXTENSION_TYPE


def message_name(kind: int) -> str:
    try:
        return MessageType(kind).name
    except ValueError:
        return f"type {kind:#04x}"


# ---------------------------------------------------------------------------- encoding


def _frame(kind: MessageType, body: bytes) -> bytes:
    return _FRAME_HEADER.pack(1 + len(body), kind) + body


def _encode_payment_terms(terms: PaymentTerms) -> bytes:
    if len(terms.payee) != ADDRESS_SIZE or len(terms.contract) != ADDRESS_SIZE:
        raise LocalProtocolError(f"payee and contract must be {ADDRESS_SIZE}-byte addresses")
    price = terms.price_per_mib_wei.to_bytes(32, "big")
    fields = (terms.payee, price, terms.chain_id, terms.contract)
    if terms.credit_window is None:
        return _PAYMENT_TERMS_WITHOUT_WINDOW.pack(*fields)
    return _PAYMENT_TERMS.pack(*fields, terms.credit_window)


def _encode_handshake(handshake: Handshake) -> bytes:
    # struct's "Ns" pads or truncates silently, so the sizes are checked first.
    if len(handshake.manifest_id) != MANIFEST_ID_SIZE:
        raise LocalProtocolError(f"manifest id must be {MANIFEST_ID_SIZE} bytes")
    if len(handshake.peer_id) not in PEER_ID_SIZES:
        raise LocalProtocolError(f"peer id must be {' or '.join(map(str, PEER_ID_SIZES))} bytes")
    if len(handshake.extensions) > MAX_HANDSHAKE_EXTENSIONS_SIZE:
        raise LocalProtocolError(
            f"handshake extensions exceed {MAX_HANDSHAKE_EXTENSIONS_SIZE} bytes"
        )
    terms = handshake.payment_terms
    encoded_terms = b"" if terms is None else _encode_payment_terms(terms)
    return b"".join(
        (
            _MAGIC_AND_VERSION.pack(MAGIC, PROTOCOL_VERSION),
            _HANDSHAKE_IDS.pack(handshake.manifest_id, len(handshake.peer_id)),
            handshake.peer_id,
            _HANDSHAKE_SETTINGS.pack(
                handshake.listen_port,
                handshake.capabilities,
                handshake.max_frame,
                handshake.max_outstanding_requests,
            ),
            _U16.pack(len(encoded_terms)),
            encoded_terms,
            _U16.pack(len(handshake.extensions)),
            handshake.extensions,
        )
    )


def _encode_goodbye(goodbye: Goodbye) -> bytes:
    text = goodbye.text.encode("utf-8")
    if len(text) > MAX_GOODBYE_TEXT_SIZE:
        raise LocalProtocolError(f"goodbye text exceeds {MAX_GOODBYE_TEXT_SIZE} bytes")
    return _U16.pack(goodbye.reason) + text


def _encode_voucher(voucher: Voucher) -> bytes:
    if len(voucher.payload) > MAX_VOUCHER_SIZE:
        raise LocalProtocolError(f"voucher exceeds {MAX_VOUCHER_SIZE} bytes")
    return bytes(voucher.payload)


def encode_piece_parts(piece: Piece) -> tuple[bytes, memoryview]:
    """The PIECE frame as (header, payload) so a large payload is sent without being copied."""
    payload = memoryview(piece.data)
    try:
        header = _PIECE_HEADER.pack(
            1 + _RUN.size + payload.nbytes,
            MessageType.PIECE,
            piece.piece,
            piece.first_chunk,
            piece.chunk_count,
        )
    except struct.error as exc:
        raise LocalProtocolError(f"cannot encode PIECE: {exc}") from None
    return header, payload


def encode_message(message: Message) -> bytes:
    """One whole frame.  A PIECE's payload is copied; see :func:`encode_piece_parts`."""
    try:
        match message:
            case Handshake():
                return _frame(MessageType.HANDSHAKE, _encode_handshake(message))
            case Bitfield(bits=bits):
                return _frame(MessageType.BITFIELD, bytes(bits))
            case Have(piece=piece):
                return _frame(MessageType.HAVE, _U32.pack(piece))
            case Request(piece=piece, first_chunk=first, chunk_count=count):
                return _frame(MessageType.REQUEST, _RUN.pack(piece, first, count))
            case Cancel(piece=piece, first_chunk=first, chunk_count=count):
                return _frame(MessageType.CANCEL, _RUN.pack(piece, first, count))
            case Piece():
                header, payload = encode_piece_parts(message)
                return header + payload
            case Reject(piece=piece, first_chunk=first, chunk_count=count, reason=reason):
                return _frame(MessageType.REJECT, _REJECT.pack(piece, first, count, reason))
            case Voucher():
                return _frame(MessageType.VOUCHER, _encode_voucher(message))
            case KeepAlive():
                return _frame(MessageType.KEEPALIVE, b"")
            case Goodbye():
                return _frame(MessageType.GOODBYE, _encode_goodbye(message))
    except (struct.error, OverflowError, UnicodeEncodeError) as exc:
        raise LocalProtocolError(f"cannot encode {type(message).__name__}: {exc}") from None
    raise LocalProtocolError(f"not a wire message: {message!r}")


# ---------------------------------------------------------------------------- decoding
#
# Decoders read straight from a memoryview into the receive buffer and copy out only what
# they keep: the buffer is reused for the next frame.


class _BodyReader:
    """Reads fields off a frame body in order; running short is the peer's fault."""

    def __init__(self, body: memoryview, what: str) -> None:
        self._body = body
        self._offset = 0
        self._what = what

    def _advance(self, size: int) -> int:
        start = self._offset
        if start + size > len(self._body):
            raise RemoteProtocolError(f"{self._what} is truncated")
        self._offset = start + size
        return start

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...]:
        return layout.unpack_from(self._body, self._advance(layout.size))

    def take(self, size: int) -> bytes:
        start = self._advance(size)
        return bytes(self._body[start : start + size])

    def expect_end(self) -> None:
        trailing = len(self._body) - self._offset
        if trailing:
            raise RemoteProtocolError(f"{self._what} has {trailing} trailing bytes")


def _fixed(body: memoryview, layout: struct.Struct, what: str) -> tuple[Any, ...]:
    if len(body) != layout.size:
        raise RemoteProtocolError(f"{what} body is {len(body)} bytes, not {layout.size}")
    return layout.unpack(body)


def _decode_handshake(body: memoryview) -> Handshake:
    # Magic and version come first in every version, so any peer can tell what it met.
    if len(body) < _MAGIC_AND_VERSION.size:
        raise RemoteProtocolError("handshake is truncated")
    magic, version = _MAGIC_AND_VERSION.unpack_from(body)
    if magic != MAGIC:
        raise RemoteProtocolError("not a thetadist peer (bad handshake magic)")
    if version != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"unsupported protocol version {version} (this side speaks {PROTOCOL_VERSION})"
        )
    reader = _BodyReader(body, "handshake")
    reader.unpack(_MAGIC_AND_VERSION)
    manifest_id, peer_id_size = reader.unpack(_HANDSHAKE_IDS)
    if peer_id_size not in PEER_ID_SIZES:
        raise RemoteProtocolError(f"handshake peer id of {peer_id_size} bytes")
    peer_id = reader.take(peer_id_size)
    listen_port, capabilities, max_frame, max_outstanding_requests = reader.unpack(
        _HANDSHAKE_SETTINGS
    )
    (terms_size,) = reader.unpack(_U16)
    payment_terms: PaymentTerms | None = None
    if terms_size in _TERMS_LAYOUTS:
        payee, price, chain_id, contract, *window = reader.unpack(_TERMS_LAYOUTS[terms_size])
        payment_terms = PaymentTerms(
            payee, int.from_bytes(price, "big"), chain_id, contract, *window
        )
    elif terms_size:
        raise RemoteProtocolError(f"handshake payment terms of {terms_size} bytes")
    (extensions_size,) = reader.unpack(_U16)
    if extensions_size > MAX_HANDSHAKE_EXTENSIONS_SIZE:
        raise RemoteProtocolError(f"handshake extensions of {extensions_size} bytes")
    extensions = reader.take(extensions_size)
    reader.expect_end()
    return Handshake(
        manifest_id=manifest_id,
        peer_id=peer_id,
        listen_port=listen_port,
        capabilities=capabilities,
        max_frame=max_frame,
        max_outstanding_requests=max_outstanding_requests,
        payment_terms=payment_terms,
        extensions=extensions,
    )


def _decode_bitfield(body: memoryview) -> Bitfield:
    return Bitfield(bytes(body))


def _decode_have(body: memoryview) -> Have:
    (piece,) = _fixed(body, _U32, "HAVE")
    return Have(piece)


def _decode_request(body: memoryview) -> Request:
    return Request(*_fixed(body, _RUN, "REQUEST"))


def _decode_cancel(body: memoryview) -> Cancel:
    return Cancel(*_fixed(body, _RUN, "CANCEL"))


def _decode_piece(body: memoryview) -> Piece:
    if len(body) < _RUN.size:
        raise RemoteProtocolError("PIECE is truncated")
    piece, first_chunk, chunk_count = _RUN.unpack_from(body)
    # The one copy of the payload: out of the receive buffer, which is about to be reused.
    # (A large payload is received into a buffer of its own instead; see ReceiveBuffer.)
    return Piece(piece, first_chunk, chunk_count, bytes(body[_RUN.size :]))


def _decode_reject(body: memoryview) -> Reject:
    return Reject(*_fixed(body, _REJECT, "REJECT"))


def _decode_voucher(body: memoryview) -> Voucher:
    if len(body) > MAX_VOUCHER_SIZE:
        raise RemoteProtocolError(f"voucher of {len(body)} bytes exceeds {MAX_VOUCHER_SIZE}")
    return Voucher(bytes(body))


def _decode_keepalive(body: memoryview) -> KeepAlive:
    if len(body):
        raise RemoteProtocolError(f"KEEPALIVE with a {len(body)}-byte body")
    return KeepAlive()


def _decode_goodbye(body: memoryview) -> Goodbye:
    if len(body) < _U16.size:
        raise RemoteProtocolError("GOODBYE is truncated")
    if len(body) - _U16.size > MAX_GOODBYE_TEXT_SIZE:
        raise RemoteProtocolError(f"GOODBYE text exceeds {MAX_GOODBYE_TEXT_SIZE} bytes")
    (reason,) = _U16.unpack_from(body)
    try:
        text = bytes(body[_U16.size :]).decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("GOODBYE text is not UTF-8") from None
    return Goodbye(reason, text)


_DECODERS: dict[int, Callable[[memoryview], Message]] = {
    MessageType.HANDSHAKE: _decode_handshake,
    MessageType.BITFIELD: _decode_bitfield,
    MessageType.HAVE: _decode_have,
    MessageType.REQUEST: _decode_request,
    MessageType.CANCEL: _decode_cancel,
    MessageType.PIECE: _decode_piece,
    MessageType.REJECT: _decode_reject,
    MessageType.VOUCHER: _decode_voucher,
    MessageType.KEEPALIVE: _decode_keepalive,
    MessageType.GOODBYE: _decode_goodbye,
}


def decode_message(kind: int, body: memoryview) -> Message:
    """Decode one frame body of a core message type (extension frames are the caller's)."""
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise RemoteProtocolError(f"unknown message type {kind:#04x}")
    return decoder(body)


class PayloadPool:
    """Payload buffers handed back after use, to be filled again.

    A fresh ``bytearray`` of a MiB is zero-filled, and with several alive at once the
    allocator maps and unmaps each one (page faults every time): 0.20 s a GiB measured,
    against 0.06 s to refill a reused one.  A buffer is reused only if resizing it succeeds,
    which Python refuses while any view of it is alive; whoever gives a buffer back must hold
    no other reference to it.  At most ``limit`` idle buffers and ``limit_bytes`` idle bytes
    are kept (a manifest may set pieces of up to 64 MiB).
    """

    def __init__(self, limit: int = 8, limit_bytes: int = 16 * 1024 * 1024) -> None:
        self.limit = limit
        self.limit_bytes = limit_bytes
        self._idle: list[bytearray] = []
        self._idle_bytes = 0

    def take(self, size: int) -> bytearray:
        """A buffer of exactly ``size`` bytes (contents undefined)."""
        while self._idle:
            buffer = self._idle.pop()
            self._idle_bytes -= len(buffer)
            try:
                if len(buffer) > size:
                    del buffer[size:]  # keeps the allocation unless it shrinks by half
                elif len(buffer) < size:
                    buffer += bytes(size - len(buffer))
                else:
                    buffer.append(0)  # a probe: refused while a view is alive
                    del buffer[size:]
            except BufferError:
                continue  # still viewed somewhere: leave it to its owner
            return buffer
        return bytearray(size)

    def give_back(self, buffer: bytearray) -> None:
        if len(self._idle) < self.limit and self._idle_bytes + len(buffer) <= self.limit_bytes:
            self._idle.append(buffer)
            self._idle_bytes += len(buffer)


class ReceiveBuffer:
    """Received bytes not yet consumed, cut into frames.

    A frame is looked at with :meth:`peek_frame` and consumed with :meth:`commit`; nothing is
    consumed while a frame is incomplete, so a short read simply rolls back.  Bytes arrive by
    copy (:meth:`feed`) or are read straight into the buffer (:meth:`get_buffer`, then
    :meth:`advance`).  They live in a receive area, a ``bytearray`` with a read and a write
    offset: consuming moves the read offset, the area rewinds when it empties, and an
    incomplete frame is moved to the front only when the next read would not fit behind it.
    The area is never resized in place (it is replaced when a frame needs more room), so a
    view of it that is still alive never makes an operation fail.

    A large payload can be diverted into a buffer of its own: :meth:`begin_payload` allocates
    it, moves the payload bytes already received into it, and from then on :meth:`feed` and
    :meth:`get_buffer` fill that buffer until :meth:`take_payload` hands it over, whole.
    """

    #: The smallest area allocated when bytes are fed in without a read size to go by.
    _MIN_AREA = 4096

    def __init__(self, pool: PayloadPool | None = None) -> None:
        self._pool = pool
        self._data = bytearray()
        self._start = 0
        self._end = 0
        self._peeked_end = 0
        #: The largest read size asked for: the area shrinks back to it once empty.
        self._read_size = 0
        #: Where the last view from get_buffer points: "area" or "payload", and its size.
        self._offered: tuple[str, int] | None = None
        self._payload: bytearray | None = None
        self._payload_filled = 0

    def __len__(self) -> int:
        """Bytes buffered that belong to no complete frame or payload yet."""
        pending = 0 if self._payload is None else self._payload_filled
        return self._end - self._start + pending

    @property
    def payload_pending(self) -> bool:
        """A payload begun with :meth:`begin_payload` has not been taken yet."""
        return self._payload is not None

    # ------------------------------------------------------------------ filling

    def feed(self, data: Buffer) -> None:
        """Copy received bytes in: into the pending payload first, the rest into the area."""
        self._offered = None
        view = memoryview(data).cast("B")
        with view:
            if self._payload is not None:
                taken = min(len(view), len(self._payload) - self._payload_filled)
                filled = self._payload_filled
                self._payload[filled : filled + taken] = view[:taken]
                self._payload_filled = filled + taken
                view = view[taken:]
            if len(view):
                self._make_room(len(view))
                self._data[self._end : self._end + len(view)] = view
                self._end += len(view)

    def get_buffer(self, size: int) -> memoryview:
        """A writable view for the next read: the unfilled rest of the pending payload, else
        free room in the area.  Write into it, then call :meth:`advance`.

        The area is kept at ``size`` bytes: the room offered is what the incomplete frame
        leaves of it, or ``size`` bytes behind that frame when it fills more than half.
        """
        if size < 1:
            raise LocalProtocolError(f"read size {size} is not positive")
        payload = self._payload
        if payload is not None and self._payload_filled < len(payload):
            self._offered = ("payload", len(payload) - self._payload_filled)
            return memoryview(payload)[self._payload_filled :]
        self._read_size = max(self._read_size, size)
        unread = self._end - self._start
        room = size - unread if 2 * unread <= size else size
        self._make_room(room)
        self._offered = ("area", room)
        return memoryview(self._data)[self._end : self._end + room]

    def advance(self, count: int) -> None:
        """``count`` bytes were written to the start of the view :meth:`get_buffer` gave."""
        offered, self._offered = self._offered, None
        if offered is None or not 0 <= count <= offered[1]:
            raise LocalProtocolError(f"{count} bytes do not fit the last buffer handed out")
        if offered[0] == "payload":
            self._payload_filled += count
        else:
            self._end += count

    def _make_room(self, size: int) -> None:
        """Make ``size`` bytes free behind the unread ones."""
        unread = self._end - self._start
        if self._end + size <= len(self._data):
            return
        data = self._data
        if unread + size <= len(data):
            # Move the incomplete frame to the front (same length: no resize).
            data[:unread] = bytes(memoryview(data)[self._start : self._end])
        else:
            wanted = max(unread + size, self._MIN_AREA, 2 * len(data) if unread else 0)
            data = bytearray(wanted)
            data[:unread] = memoryview(self._data)[self._start : self._end]
            self._data = data
        self._start, self._end = 0, unread
        self._peeked_end = 0

    # ------------------------------------------------------------------ frames

    def peek_frame(self, max_frame: int) -> tuple[int, memoryview] | None:
        """The next whole frame as (type, body), or None until it has all arrived.

        The frame limit is checked as soon as the header is in, so an oversized frame is
        refused before its payload is buffered.  Release the body view before committing.
        Not while a payload is pending.
        """
        start = self._start
        if self._end - start < FRAME_HEADER_SIZE:
            return None
        length, kind = _FRAME_HEADER.unpack_from(self._data, start)
        if length == 0:
            raise RemoteProtocolError("frame without a type byte")
        end = start + _LENGTH_SIZE + length
        size = end - start
        if size > max_frame:
            raise RemoteProtocolError(
                f"{message_name(kind)} frame of {size} bytes exceeds the limit of {max_frame}"
            )
        if end > self._end:
            return None
        self._peeked_end = end
        return kind, memoryview(self._data)[start + FRAME_HEADER_SIZE : end]

    def commit(self) -> None:
        """Consume the frame last returned by :meth:`peek_frame`."""
        self._offered = None
        self._start = self._peeked_end
        if self._start == self._end:
            self._rewind()

    def _rewind(self) -> None:
        """The area is empty: start over at its front, shrinking it if a frame grew it."""
        self._start = self._end = self._peeked_end = 0
        if len(self._data) > max(self._read_size, self._MIN_AREA):
            self._data = bytearray(self._read_size)

    # ------------------------------------------------------------------ payloads

    def peek_piece_header(self) -> tuple[int, int, int, int] | None:
        """For an incomplete PIECE frame whose fixed fields are in, ``(piece, first_chunk,
        chunk_count, payload size)``; else None.  Call after :meth:`peek_frame` returned
        None, which checked the frame limit."""
        start = self._start
        if self._end - start < _PIECE_HEADER.size:
            return None
        length, kind, piece, first_chunk, chunk_count = _PIECE_HEADER.unpack_from(self._data, start)
        if kind != MessageType.PIECE or _LENGTH_SIZE + length <= self._end - start:
            return None
        return piece, first_chunk, chunk_count, length - 1 - _RUN.size

    def begin_payload(self) -> None:
        """Divert the payload of the PIECE frame :meth:`peek_piece_header` described into a
        buffer of its own: the frame's header is consumed, the payload bytes already here
        move into the new buffer, and the area is left empty."""
        header = self.peek_piece_header()
        if header is None or self._payload is not None:
            raise LocalProtocolError("no incomplete PIECE frame to divert")
        payload = self._pool.take(header[3]) if self._pool is not None else bytearray(header[3])
        received = self._end - self._start - _PIECE_HEADER.size
        payload[:received] = memoryview(self._data)[self._start + _PIECE_HEADER.size : self._end]
        self._payload, self._payload_filled = payload, received
        self._offered = None
        self._rewind()

    def take_payload(self) -> bytearray | None:
        """The diverted payload once it is complete (it is then the caller's), else None."""
        payload = self._payload
        if payload is None or self._payload_filled < len(payload):
            return None
        self._payload, self._payload_filled = None, 0
        self._offered = None
        return payload
