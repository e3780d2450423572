"""``PeerConnection``: the sans-I/O state machine of one swarm connection, in the h11 style.

The caller owns the socket.  Bytes read go into :meth:`PeerConnection.receive_data` (``b""``
at end of stream), or are read straight into :meth:`PeerConnection.receive_buffer` and
reported with :meth:`PeerConnection.received` (which lands a large PIECE payload in its own
buffer without copying it); :meth:`PeerConnection.next_event` returns the next event or
:data:`NEED_DATA`; :meth:`PeerConnection.send` turns a message into bytes to write.  Each
side moves through the states of :class:`State` by the single table ``_TRANSITIONS``;
on top of it the connection enforces the limits each side advertised in its handshake and
keeps the outstanding requests of both directions, so a PIECE or REJECT nobody asked for is
caught here, not in the swarm logic.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence, Set
from typing import Final

from thetadist.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from thetadist.wire.framing import (
    FRAME_HEADER_SIZE,
    MAX_HANDSHAKE_FRAME,
    MessageType,
    PayloadPool,
    ReceiveBuffer,
    decode_message,
    encode_message,
    encode_piece_parts,
    is_extension_type,
    message_name,
)
from thetadist.wire.messages import (
    MIN_MAX_FRAME,
    Bitfield,
    Buffer,
    Cancel,
    Capability,
    ChunkRun,
    ConnectionClosed,
    Event,
    Goodbye,
    Handshake,
    Have,
    KeepAlive,
    Message,
    Piece,
    Reject,
    Request,
    Voucher,
    bitfield_size,
    piece_frame_size,
)


class State(enum.Enum):
    """Where one side of the connection stands, as seen from this end."""

    #: Has not sent its handshake yet.
    HANDSHAKE = "handshake"
    #: Sent its handshake; its next message may be a BITFIELD.
    OPENING = "opening"
    ESTABLISHED = "established"
    #: Said GOODBYE, or (for the peer) closed its end of the stream.
    CLOSED = "closed"
    #: Broke the protocol (the peer only: our own misuse changes no state).
    ERROR = "error"


class NeedData(enum.Enum):
    NEED_DATA = "need data"


#: Returned by :meth:`PeerConnection.next_event` when no whole frame is buffered.
NEED_DATA: Final = NeedData.NEED_DATA

_OPENING, _ESTABLISHED = State.OPENING, State.ESTABLISHED

#: Every legal transition, for either side: (state, event) -> next state.
_TRANSITIONS: Final[dict[tuple[State, type[Event]], State]] = {
    (State.HANDSHAKE, Handshake): _OPENING,
    (_OPENING, Bitfield): _ESTABLISHED,
    (_OPENING, Have): _ESTABLISHED,
    (_OPENING, Request): _ESTABLISHED,
    (_OPENING, Cancel): _ESTABLISHED,
    (_OPENING, Piece): _ESTABLISHED,
    (_OPENING, Reject): _ESTABLISHED,
    (_OPENING, Voucher): _ESTABLISHED,
    (_OPENING, KeepAlive): _ESTABLISHED,
    (_OPENING, Goodbye): State.CLOSED,
    (_ESTABLISHED, Have): _ESTABLISHED,
    (_ESTABLISHED, Request): _ESTABLISHED,
    (_ESTABLISHED, Cancel): _ESTABLISHED,
    (_ESTABLISHED, Piece): _ESTABLISHED,
    (_ESTABLISHED, Reject): _ESTABLISHED,
    (_ESTABLISHED, Voucher): _ESTABLISHED,
    (_ESTABLISHED, KeepAlive): _ESTABLISHED,
    (_ESTABLISHED, Goodbye): State.CLOSED,
    (State.HANDSHAKE, ConnectionClosed): State.CLOSED,
    (_OPENING, ConnectionClosed): State.CLOSED,
    (_ESTABLISHED, ConnectionClosed): State.CLOSED,
    (State.CLOSED, ConnectionClosed): State.CLOSED,
}

#: States in which a side may speak; extension frames are skipped only in these.
_SPEAKING = frozenset({_OPENING, _ESTABLISHED})

PieceChunkSizes = Callable[[int], Sequence[int]] | Sequence[Sequence[int]]

#: PIECE payloads from this size up are received into a buffer of their own.
DIRECT_PAYLOAD_MIN: Final = 64 * 1024


class PeerConnection:
    """One connection to one peer about one manifest.

    ``our_handshake`` carries the limits this end enforces (``max_frame``,
    ``max_outstanding_requests``): they are advertised and enforced from one value, so they
    cannot disagree.  ``piece_chunk_sizes(piece)`` gives the chunk sizes of a piece, used to
    check request ranges and PIECE lengths; a sequence of sequences works as well.
    A PIECE payload of ``direct_payload_min`` bytes or more that has not all arrived with its
    header is received into a buffer of its own, once the header passed every check, taken
    from ``payload_pool`` when one is given.
    """

    def __init__(
        self,
        our_handshake: Handshake,
        *,
        piece_count: int,
        piece_chunk_sizes: PieceChunkSizes,
        direct_payload_min: int = DIRECT_PAYLOAD_MIN,
        payload_pool: PayloadPool | None = None,
    ) -> None:
        if piece_count < 0:
            raise LocalProtocolError(f"negative piece count {piece_count}")
        self._chunk_sizes: Callable[[int], Sequence[int]]
        if callable(piece_chunk_sizes):
            self._chunk_sizes = piece_chunk_sizes
        else:
            if len(piece_chunk_sizes) != piece_count:
                raise LocalProtocolError(
                    f"{len(piece_chunk_sizes)} chunk size lists for {piece_count} pieces"
                )
            self._chunk_sizes = piece_chunk_sizes.__getitem__
        self.piece_count = piece_count
        self.our_handshake = our_handshake
        self.their_handshake: Handshake | None = None
        self._min_max_frame = max(MIN_MAX_FRAME, FRAME_HEADER_SIZE + bitfield_size(piece_count))
        if our_handshake.max_frame < self._min_max_frame:
            raise LocalProtocolError(
                f"max_frame {our_handshake.max_frame} is below the minimum {self._min_max_frame}"
            )
        self._handshake_frame = encode_message(our_handshake)
        self._our_state = State.HANDSHAKE
        self._their_state = State.HANDSHAKE
        self._buffer = ReceiveBuffer(payload_pool)
        self._direct_payload_min = max(1, direct_payload_min)
        #: The run of the PIECE whose payload is being received into its own buffer.
        self._incoming_piece: ChunkRun | None = None
        self._eof = False
        # Run -> data length the answer must carry, per direction.
        self._requests_sent: dict[ChunkRun, int] = {}
        self._requests_received: dict[ChunkRun, int] = {}

    # ------------------------------------------------------------------ inspection

    @property
    def max_frame(self) -> int:
        """The largest frame we accept, as our handshake announces."""
        return self.our_handshake.max_frame

    @property
    def our_state(self) -> State:
        return self._our_state

    @property
    def their_state(self) -> State:
        return self._their_state

    @property
    def requests_sent(self) -> Set[ChunkRun]:
        """Our requests the peer has not yet answered (cancelled ones included)."""
        return self._requests_sent.keys()

    @property
    def requests_received(self) -> Set[ChunkRun]:
        """The peer's requests we have not yet answered with PIECE or REJECT."""
        return self._requests_received.keys()

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: Buffer) -> None:
        """Buffer bytes read from the peer; ``b""`` means the peer closed its end.

        Call :meth:`next_event` until it returns :data:`NEED_DATA` before feeding more, so
        the buffer stays within one frame plus one read.
        """
        if self._their_state is State.ERROR:
            return  # The connection is dead; keep no more of what the peer sends.
        if self._eof:
            if data:
                raise LocalProtocolError("received data after end of stream")
            return
        if data:
            self._buffer.feed(data)
        else:
            self._eof = True

    def receive_buffer(self, size: int) -> memoryview:
        """Where the next bytes read from the peer should go, to read into (``recv_into``).

        While a large PIECE payload is arriving this is the unfilled rest of the payload's
        own buffer (it may exceed ``size``: that memory is already committed), else ``size``
        bytes of the receive area.  Report what was read with :meth:`received` before any
        other call; a read abandoned without :meth:`received` leaves no trace.
        """
        return self._buffer.get_buffer(size)

    def received(self, count: int) -> None:
        """``count`` bytes were read into the last :meth:`receive_buffer`; 0 means the peer
        closed its end.  As with :meth:`receive_data`, drain :meth:`next_event` first."""
        if self._their_state is State.ERROR:
            return
        if self._eof:
            if count:
                raise LocalProtocolError("received data after end of stream")
            return
        if count:
            self._buffer.advance(count)
        else:
            self._eof = True

    def next_event(self) -> Event | NeedData:
        """The next event from the peer, or :data:`NEED_DATA`.

        Raises :class:`RemoteProtocolError` when the peer broke the protocol; after that the
        connection is dead and every further call raises again.
        """
        if self._their_state is State.ERROR:
            raise RemoteProtocolError("the peer already broke the protocol")
        try:
            return self._next_event()
        except RemoteProtocolError:
            self._their_state = State.ERROR
            raise

    def _next_event(self) -> Event | NeedData:
        while True:
            message: Message | None
            if self._incoming_piece is not None:
                data = self._buffer.take_payload()
                if data is None:
                    if self._eof:
                        raise RemoteProtocolError("stream ended in the middle of a frame")
                    return NEED_DATA
                run, self._incoming_piece = self._incoming_piece, None
                message = Piece(*run, data)
            else:
                limit = (
                    MAX_HANDSHAKE_FRAME if self._their_state is State.HANDSHAKE else self.max_frame
                )
                frame = self._buffer.peek_frame(limit)
                if frame is None:
                    if self._begin_direct_piece():
                        continue
                    if not self._eof:
                        return NEED_DATA
                    if len(self._buffer):
                        raise RemoteProtocolError("stream ended in the middle of a frame")
                    self._their_state = self._transition(
                        self._their_state, ConnectionClosed, RemoteProtocolError
                    )
                    return ConnectionClosed()
                kind, body = frame
                try:
                    message = self._decode(kind, body)
                finally:
                    body.release()
                self._buffer.commit()
                if message is None:
                    continue
            next_state = self._transition(self._their_state, type(message), RemoteProtocolError)
            deliver = self._accept(message)
            self._their_state = next_state
            if deliver:
                return message

    def _begin_direct_piece(self) -> bool:
        """Divert a large incoming PIECE payload into its own buffer, if one has begun.

        The header (its frame limit already checked) gets every check the whole frame would
        get, so nothing is allocated for a PIECE we would refuse; those checks cannot come
        out differently when the payload has arrived, as nothing else can arrive before.
        """
        header = self._buffer.peek_piece_header()
        if header is None:
            return False
        *fields, size = header
        if size < self._direct_payload_min:
            return False
        if self._their_state is State.HANDSHAKE:
            raise RemoteProtocolError("expected a handshake, got PIECE (not a thetadist peer?)")
        run = ChunkRun(*fields)
        self._transition(self._their_state, Piece, RemoteProtocolError)
        self._check_piece_length(run, size)
        self._buffer.begin_payload()
        self._incoming_piece = run
        return True

    def _decode(self, kind: int, body: memoryview) -> Message | None:
        """The message in a frame, or None for an extension frame to skip."""
        if self._their_state is State.HANDSHAKE and kind != MessageType.HANDSHAKE:
            raise RemoteProtocolError(
                f"expected a handshake, got {message_name(kind)} (not a thetadist peer?)"
            )
        if is_extension_type(kind):
            if self._their_state not in _SPEAKING:
                raise RemoteProtocolError(
                    f"extension {message_name(kind)} in state {self._their_state.value}"
                )
            return None
        return decode_message(kind, body)

    def _accept(self, message: Message) -> bool:
        """Check a message against the limits and our requests; False: drop it silently."""
        match message:
            case Handshake():
                self._accept_handshake(message)
            case Bitfield(bits=bits):
                self._check_bitfield(bits, RemoteProtocolError)
            case Have(piece=piece):
                self._check_piece_index(piece, RemoteProtocolError)
            case Request():
                self._accept_request(message.run)
            case Cancel():
                self._chunk_run_length(message.run, RemoteProtocolError)
                # A CANCEL for a request already answered crossed our PIECE on the wire.
                return message.run in self._requests_received
            case Piece(data=data):
                self._check_piece_length(message.run, len(data))
                del self._requests_sent[message.run]
            case Reject():
                if self._requests_sent.pop(message.run, None) is None:
                    raise RemoteProtocolError(f"REJECT of unrequested {tuple(message.run)}")
            case Voucher():
                if not self.our_handshake.capabilities & Capability.VOUCHERS:
                    raise RemoteProtocolError("VOUCHER sent, but we did not offer vouchers")
        return True

    def _check_piece_length(self, run: ChunkRun, size: int) -> None:
        expected = self._requests_sent.get(run)
        if expected is None:
            raise RemoteProtocolError(f"unrequested PIECE {tuple(run)}")
        if size != expected:
            raise RemoteProtocolError(f"PIECE {tuple(run)} carries {size} bytes, not {expected}")

    def _accept_handshake(self, handshake: Handshake) -> None:
        if handshake.manifest_id != self.our_handshake.manifest_id:
            raise RemoteProtocolError(f"wrong manifest id {handshake.manifest_id.hex()}")
        if handshake.max_frame < self._min_max_frame:
            raise RemoteProtocolError(
                f"peer's max_frame {handshake.max_frame} is below the minimum {self._min_max_frame}"
            )
        self.their_handshake = handshake

    def _accept_request(self, run: ChunkRun) -> None:
        length = self._chunk_run_length(run, RemoteProtocolError)
        assert self.their_handshake is not None  # The transition table put us past HANDSHAKE.
        if piece_frame_size(length) > self.their_handshake.max_frame:
            raise RemoteProtocolError(
                f"REQUEST {tuple(run)} would need a frame above the peer's own max_frame"
            )
        if run in self._requests_received:
            raise RemoteProtocolError(f"duplicate REQUEST {tuple(run)}")
        if len(self._requests_received) >= self.our_handshake.max_outstanding_requests:
            raise RemoteProtocolError(
                f"more than {self.our_handshake.max_outstanding_requests} outstanding requests"
            )
        self._requests_received[run] = length

    # ------------------------------------------------------------------ sending

    def send(self, message: Message) -> bytes:
        """Bytes to write for ``message``.  Raises :class:`LocalProtocolError`, changing
        nothing, when the message is not allowed now.  A PIECE's payload is copied into the
        result; :meth:`send_piece_parts` avoids that."""
        if isinstance(message, Piece):
            header, payload = self.send_piece_parts(message)
            return header + payload
        next_state = self._transition(self._our_state, type(message), LocalProtocolError)
        if isinstance(message, Handshake):
            if message != self.our_handshake:
                raise LocalProtocolError("send the handshake the connection was made with")
            self._our_state = next_state
            return self._handshake_frame
        answer_length = self._check_outgoing(message)
        frame = encode_message(message)
        their = self.their_handshake
        if their is not None and len(frame) > their.max_frame:
            raise LocalProtocolError(
                f"{type(message).__name__} frame of {len(frame)} bytes exceeds the peer's "
                f"max_frame {their.max_frame}"
            )
        if isinstance(message, Request):
            self._requests_sent[message.run] = answer_length
        elif isinstance(message, Reject):
            del self._requests_received[message.run]
        self._our_state = next_state
        return frame

    def send_piece_parts(self, piece: Piece) -> tuple[bytes, memoryview]:
        """Send a PIECE as (header, payload): write both, in order, without joining them."""
        next_state = self._transition(self._our_state, Piece, LocalProtocolError)
        self._require_their_handshake(piece)
        expected = self._requests_received.get(piece.run)
        if expected is None:
            raise LocalProtocolError(f"PIECE {tuple(piece.run)} answers no pending request")
        header, payload = encode_piece_parts(piece)
        if payload.nbytes != expected:
            raise LocalProtocolError(
                f"PIECE {tuple(piece.run)} carries {payload.nbytes} bytes, not {expected}"
            )
        del self._requests_received[piece.run]
        self._our_state = next_state
        return header, payload

    def _check_outgoing(self, message: Message) -> int:
        """Everything that could make ``send`` fail, checked before any state changes.

        Returns, for a REQUEST, the data length its answer must carry (else 0)."""
        if not isinstance(message, Goodbye):
            self._require_their_handshake(message)
        their = self.their_handshake
        match message:
            case Bitfield(bits=bits):
                self._check_bitfield(bits, LocalProtocolError)
            case Have(piece=piece):
                self._check_piece_index(piece, LocalProtocolError)
            case Request():
                assert their is not None
                length = self._chunk_run_length(message.run, LocalProtocolError)
                if piece_frame_size(length) > self.max_frame:
                    raise LocalProtocolError(
                        f"REQUEST {tuple(message.run)} would need a frame above our max_frame"
                    )
                if message.run in self._requests_sent:
                    raise LocalProtocolError(f"REQUEST {tuple(message.run)} is already pending")
                if len(self._requests_sent) >= their.max_outstanding_requests:
                    raise LocalProtocolError(
                        f"the peer accepts {their.max_outstanding_requests} outstanding requests"
                    )
                return length
            case Cancel():
                if message.run not in self._requests_sent:
                    raise LocalProtocolError(f"CANCEL of {tuple(message.run)}, not pending")
            case Reject():
                if message.run not in self._requests_received:
                    raise LocalProtocolError(f"REJECT of {tuple(message.run)}, not pending")
            case Voucher():
                assert their is not None
                if not their.capabilities & Capability.VOUCHERS:
                    raise LocalProtocolError("the peer did not offer vouchers")
        return 0

    def _require_their_handshake(self, message: Message) -> None:
        # Until the peer's handshake is in we do not know its limits; only GOODBYE may go.
        if self.their_handshake is None:
            raise LocalProtocolError(
                f"cannot send {type(message).__name__} before the peer's handshake arrived"
            )

    # ------------------------------------------------------------------ shared checks

    @staticmethod
    def _transition(state: State, event_type: type[Event], error: type[ProtocolError]) -> State:
        try:
            return _TRANSITIONS[state, event_type]
        except KeyError:
            raise error(f"{event_type.__name__} is not allowed in state {state.value}") from None

    def _check_piece_index(self, piece: int, error: type[ProtocolError]) -> None:
        if not 0 <= piece < self.piece_count:
            raise error(f"piece {piece} out of range (piece count {self.piece_count})")

    def _check_bitfield(self, bits: bytes, error: type[ProtocolError]) -> None:
        if len(bits) != bitfield_size(self.piece_count):
            raise error(f"BITFIELD of {len(bits)} bytes for {self.piece_count} pieces")
        spare_bits = -self.piece_count % 8
        if spare_bits and bits[-1] & ((1 << spare_bits) - 1):
            raise error("BITFIELD sets bits past the last piece")

    def _chunk_run_length(self, run: ChunkRun, error: type[ProtocolError]) -> int:
        """Bytes in a run of chunks, or ``error`` if the run is not inside its piece."""
        self._check_piece_index(run.piece, error)
        sizes = self._chunk_sizes(run.piece)
        end = run.first_chunk + run.chunk_count
        if run.first_chunk < 0 or run.chunk_count < 1 or end > len(sizes):
            raise error(f"chunks {tuple(run)} out of range ({len(sizes)} chunks in the piece)")
        return sum(sizes[run.first_chunk : end])
