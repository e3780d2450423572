"""PeerConnection: two state machines joined in memory, bytes from one fed to the other."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thetadist.errors import LocalProtocolError, RemoteProtocolError
from thetadist.wire import (
    DIRECT_PAYLOAD_MIN,
    FIRST_EXTENSION_TYPE,
    MAX_HANDSHAKE_FRAME,
    NEED_DATA,
    Bitfield,
    Cancel,
    Capability,
    ConnectionClosed,
    Event,
    Goodbye,
    GoodbyeReason,
    Handshake,
    Have,
    KeepAlive,
    MessageType,
    PeerConnection,
    Piece,
    Reject,
    RejectReason,
    Request,
    State,
    Voucher,
    encode_message,
)

MANIFEST_ID = bytes(range(32))
#: Chunk sizes of each piece of a small pretend manifest.
CHUNK_SIZES: list[list[int]] = [[100, 200, 300], [50], [1000, 1000], [7] * 9]


def make_connection(
    peer: int, *, direct_payload_min: int = DIRECT_PAYLOAD_MIN, **handshake_fields: Any
) -> PeerConnection:
    handshake_fields.setdefault("manifest_id", MANIFEST_ID)
    our_handshake = Handshake(peer_id=bytes([peer]) * 20, **handshake_fields)
    return PeerConnection(
        our_handshake,
        piece_count=len(CHUNK_SIZES),
        piece_chunk_sizes=CHUNK_SIZES,
        direct_payload_min=direct_payload_min,
    )


def drain(connection: PeerConnection) -> list[Event]:
    events: list[Event] = []
    while (event := connection.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, ConnectionClosed):
            break
    return events


def deliver(data: bytes, to: PeerConnection) -> list[Event]:
    to.receive_data(data)
    return drain(to)


def read_into(data: bytes, to: PeerConnection, read_size: int = 1 << 20) -> list[Event]:
    """Deliver ``data`` as a socket shell does: ``recv_into`` what ``receive_buffer`` offers,
    at most ``read_size`` bytes a read, draining the events after every read."""
    events: list[Event] = []
    while data:
        view = to.receive_buffer(read_size)
        count = min(len(view), len(data), read_size)
        view[:count] = data[:count]
        view.release()
        to.received(count)
        events.extend(drain(to))
        data = data[count:]
    return events


def handshaken_pair(
    a_fields: dict[str, Any] | None = None, b_fields: dict[str, Any] | None = None
) -> tuple[PeerConnection, PeerConnection]:
    a = make_connection(1, **(a_fields or {}))
    b = make_connection(2, **(b_fields or {}))
    assert deliver(a.send(a.our_handshake), b) == [a.our_handshake]
    assert deliver(b.send(b.our_handshake), a) == [b.our_handshake]
    return a, b


def piece_data(run: Request | Cancel, fill: int = 0xAB) -> bytes:
    sizes = CHUNK_SIZES[run.piece][run.first_chunk : run.first_chunk + run.chunk_count]
    return bytes([fill]) * sum(sizes)


def raw_frame(kind: int, body: bytes) -> bytes:
    return struct.pack(">IB", 1 + len(body), kind) + body


# ------------------------------------------------------------------------- happy paths


def test_handshakes_cross_and_both_sides_open() -> None:
    a, b = handshaken_pair()
    assert a.their_handshake == b.our_handshake
    assert b.their_handshake == a.our_handshake
    assert (a.our_state, a.their_state) == (State.OPENING, State.OPENING)


def test_request_is_answered_with_piece_data() -> None:
    a, b = handshaken_pair()
    bitfield = Bitfield.from_pieces(len(CHUNK_SIZES), [0, 2])
    assert deliver(b.send(bitfield) + b.send(Have(3)), a) == [bitfield, Have(3)]
    request = Request(piece=0, first_chunk=1, chunk_count=2)
    assert deliver(a.send(request), b) == [request]
    assert request.run in b.requests_received
    header, payload = b.send_piece_parts(Piece(0, 1, 2, piece_data(request)))
    (piece,) = deliver(header + payload, a)
    assert isinstance(piece, Piece)
    assert (piece.run, bytes(piece.data)) == (request.run, piece_data(request))
    assert not a.requests_sent and not b.requests_received
    assert a.their_state is State.ESTABLISHED


def test_chunk_sizes_may_come_from_a_callable() -> None:
    connection = PeerConnection(
        Handshake(manifest_id=MANIFEST_ID, peer_id=bytes(20)),
        piece_count=len(CHUNK_SIZES),
        piece_chunk_sizes=lambda piece: CHUNK_SIZES[piece],
    )
    peer = make_connection(2)
    deliver(connection.send(connection.our_handshake), peer)
    deliver(peer.send(peer.our_handshake), connection)
    assert deliver(peer.send(Request(2, 0, 2)), connection) == [Request(2, 0, 2)]


def test_one_byte_trickle_gives_the_same_events() -> None:
    a, b = handshaken_pair()
    request = Request(3, 2, 5)
    deliver(a.send(request), b)
    stream = (
        b.send(Bitfield.from_pieces(len(CHUNK_SIZES), [3]))
        + b.send(Piece(3, 2, 5, piece_data(request)))
        + b.send(KeepAlive())
        + b.send(Goodbye(GoodbyeReason.SHUTTING_DOWN, "bye ✓"))
    )
    trickled: list[Event] = []
    for index in range(len(stream)):
        trickled.extend(deliver(stream[index : index + 1], a))
    trickled.extend(deliver(b"", a))
    assert trickled == [
        Bitfield.from_pieces(len(CHUNK_SIZES), [3]),
        Piece(3, 2, 5, piece_data(request)),
        KeepAlive(),
        Goodbye(GoodbyeReason.SHUTTING_DOWN, "bye ✓"),
        ConnectionClosed(),
    ]


def test_cancel_is_answered_by_a_reject() -> None:
    a, b = handshaken_pair()
    request = Request(2, 0, 1)
    deliver(a.send(request), b)
    cancel = Cancel(2, 0, 1)
    assert deliver(a.send(cancel), b) == [cancel]
    assert request.run in a.requests_sent  # Still owed an answer.
    reject = Reject(2, 0, 1, RejectReason.CANCELLED)
    assert deliver(b.send(reject), a) == [reject]
    assert not a.requests_sent


def test_cancel_that_crossed_the_piece_is_dropped_quietly() -> None:
    a, b = handshaken_pair()
    request = Request(1, 0, 1)
    deliver(a.send(request), b)
    piece_frame = b.send(Piece(1, 0, 1, piece_data(request)))
    cancel_frame = a.send(Cancel(1, 0, 1))
    assert deliver(cancel_frame, b) == []
    assert len(deliver(piece_frame, a)) == 1
    with pytest.raises(LocalProtocolError):
        b.send(Reject(1, 0, 1, RejectReason.CANCELLED))


def test_vouchers_flow_when_both_sides_offer_them() -> None:
    a, b = handshaken_pair(
        {"capabilities": Capability.VOUCHERS}, {"capabilities": Capability.VOUCHERS}
    )
    assert deliver(a.send(Voucher(b"signed")), b) == [Voucher(b"signed")]


def test_extension_frames_are_skipped_once_established() -> None:
    a, b = handshaken_pair()
    data = raw_frame(FIRST_EXTENSION_TYPE, b"future stuff") + b.send(Have(1))
    assert deliver(data, a) == [Have(1)]


def test_clean_end_of_stream_closes_their_side() -> None:
    a, _b = handshaken_pair()
    assert deliver(b"", a) == [ConnectionClosed()]
    assert a.their_state is State.CLOSED
    assert a.next_event() == ConnectionClosed()


def test_goodbye_may_be_sent_before_the_peers_handshake() -> None:
    a = make_connection(1)
    b = make_connection(2)
    data = a.send(a.our_handshake) + a.send(Goodbye(GoodbyeReason.TOO_MANY_PEERS))
    assert deliver(data, b)[-1] == Goodbye(GoodbyeReason.TOO_MANY_PEERS)
    assert b.their_state is State.CLOSED


# ------------------------------------------------------------------------- peer faults


def expect_peer_fault(data: bytes, to: PeerConnection, complaint: str) -> None:
    to.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=complaint):
        drain(to)
    assert to.their_state is State.ERROR
    with pytest.raises(RemoteProtocolError):
        to.next_event()


def test_wrong_manifest_id_is_refused() -> None:
    a = make_connection(1)
    stranger = make_connection(2, manifest_id=bytes(32))
    expect_peer_fault(stranger.send(stranger.our_handshake), a, "wrong manifest id")


def test_other_protocol_version_is_refused() -> None:
    a, b = make_connection(1), make_connection(2)
    handshake = bytearray(b.send(b.our_handshake))
    handshake[13:15] = b"\x00\x02"
    expect_peer_fault(bytes(handshake), a, "version 2")


def test_garbage_instead_of_a_handshake_is_refused_at_once() -> None:
    expect_peer_fault(b"GET / HTTP/1.1\r\n", make_connection(1), "exceeds the limit")


def test_small_frame_of_the_wrong_type_is_not_a_handshake() -> None:
    expect_peer_fault(encode_message(Have(0)), make_connection(1), "expected a handshake")


def test_extension_frame_before_the_handshake_is_refused() -> None:
    expect_peer_fault(raw_frame(0xF0, b""), make_connection(1), "expected a handshake")


def test_handshake_sized_frame_limit_applies_before_the_handshake() -> None:
    header = struct.pack(">IB", MAX_HANDSHAKE_FRAME, MessageType.HANDSHAKE)
    expect_peer_fault(header, make_connection(1), "exceeds the limit")


def test_oversized_frame_is_refused_before_its_payload_arrives() -> None:
    a, _b = handshaken_pair()
    expect_peer_fault(struct.pack(">IB", 2**32 - 1, MessageType.PIECE), a, "exceeds the limit")
    a.receive_data(b"\x00" * 100_000)  # Dropped: the connection is dead.
    with pytest.raises(RemoteProtocolError):
        a.next_event()


def test_peer_advertising_a_tiny_frame_limit_is_refused() -> None:
    a = make_connection(1)
    b_handshake = Handshake(manifest_id=MANIFEST_ID, peer_id=bytes(20), max_frame=100)
    expect_peer_fault(encode_message(b_handshake), a, "below the minimum")


@pytest.mark.parametrize(
    ("request_", "complaint"),
    [
        (Request(4, 0, 1), "piece 4 out of range"),
        (Request(2**32 - 1, 0, 1), "out of range"),
        (Request(0, 2, 2), "out of range"),
        (Request(0, 0, 0), "out of range"),
        (Request(1, 1, 1), "out of range"),
    ],
)
def test_request_outside_the_manifest_is_refused(request_: Request, complaint: str) -> None:
    a, _b = handshaken_pair()
    expect_peer_fault(encode_message(request_), a, complaint)


def test_have_outside_the_manifest_is_refused() -> None:
    a, _b = handshaken_pair()
    expect_peer_fault(encode_message(Have(len(CHUNK_SIZES))), a, "out of range")


def test_too_many_outstanding_requests_are_refused() -> None:
    a, b = handshaken_pair({"max_outstanding_requests": 2})
    data = b.send(Request(0, 0, 1)) + b.send(Request(0, 1, 1))
    with pytest.raises(LocalProtocolError, match="2 outstanding"):
        b.send(Request(0, 2, 1))
    expect_peer_fault(data + encode_message(Request(0, 2, 1)), a, "more than 2 outstanding")


def test_duplicate_request_is_refused() -> None:
    a, b = handshaken_pair()
    expect_peer_fault(b.send(Request(0, 0, 1)) + encode_message(Request(0, 0, 1)), a, "duplicate")


def test_request_beyond_the_requesters_own_frame_limit_is_refused() -> None:
    big_chunks = [[3000, 3000]]
    seeder, fetcher = (
        PeerConnection(
            Handshake(manifest_id=MANIFEST_ID, peer_id=bytes([peer]) * 20, max_frame=4096),
            piece_count=1,
            piece_chunk_sizes=big_chunks,
        )
        for peer in (1, 2)
    )
    deliver(seeder.send(seeder.our_handshake), fetcher)
    deliver(fetcher.send(fetcher.our_handshake), seeder)
    with pytest.raises(LocalProtocolError, match="above our max_frame"):
        fetcher.send(Request(0, 0, 2))
    assert deliver(fetcher.send(Request(0, 0, 1)), seeder) == [Request(0, 0, 1)]
    expect_peer_fault(encode_message(Request(0, 0, 2)), seeder, "above the peer's own max_frame")


def test_unrequested_piece_is_refused() -> None:
    a, _b = handshaken_pair()
    expect_peer_fault(encode_message(Piece(1, 0, 1, bytes(50))), a, "unrequested PIECE")


def test_piece_of_the_wrong_length_is_refused() -> None:
    a, b = handshaken_pair()
    deliver(a.send(Request(1, 0, 1)), b)
    expect_peer_fault(encode_message(Piece(1, 0, 1, bytes(49))), a, "49 bytes, not 50")


def test_piece_answering_a_different_run_is_refused() -> None:
    a, b = handshaken_pair()
    deliver(a.send(Request(0, 0, 2)), b)
    expect_peer_fault(encode_message(Piece(0, 0, 1, bytes(100))), a, "unrequested")


def test_unrequested_reject_is_refused() -> None:
    a, _b = handshaken_pair()
    expect_peer_fault(encode_message(Reject(0, 0, 1, RejectReason.BUSY)), a, "REJECT")


@pytest.mark.parametrize(
    ("bits", "complaint"),
    [
        (b"\xff\x00", "2 bytes for 4 pieces"),
        (b"", "0 bytes for 4 pieces"),
        (b"\xf8", "past the last piece"),
    ],
)
def test_malformed_bitfield_is_refused(bits: bytes, complaint: str) -> None:
    a, _b = handshaken_pair()
    expect_peer_fault(encode_message(Bitfield(bits)), a, complaint)


def test_bitfield_after_other_messages_is_refused() -> None:
    a, b = handshaken_pair()
    data = b.send(Have(0)) + encode_message(Bitfield.from_pieces(len(CHUNK_SIZES), [0]))
    expect_peer_fault(data, a, "Bitfield is not allowed in state established")


def test_second_handshake_is_refused() -> None:
    a, b = handshaken_pair()
    expect_peer_fault(encode_message(b.our_handshake), a, "Handshake is not allowed")


def test_voucher_we_did_not_offer_is_refused() -> None:
    a, _b = handshaken_pair()
    expect_peer_fault(encode_message(Voucher(b"pay")), a, "did not offer vouchers")


def test_unknown_core_message_type_is_refused() -> None:
    a, _b = handshaken_pair()
    expect_peer_fault(raw_frame(0x30, b""), a, "unknown message type")


def test_anything_after_goodbye_is_refused() -> None:
    a, b = handshaken_pair()
    data = b.send(Goodbye(GoodbyeReason.NORMAL)) + encode_message(KeepAlive())
    expect_peer_fault(data, a, "KeepAlive is not allowed in state closed")


def test_stream_ending_inside_a_frame_is_refused() -> None:
    a, b = handshaken_pair()
    a.receive_data(b.send(Have(1))[:-1])
    assert a.next_event() is NEED_DATA
    expect_peer_fault(b"", a, "middle of a frame")


# ------------------------------------------------------------------------- our faults


def test_only_goodbye_may_go_before_the_peers_handshake() -> None:
    a = make_connection(1)
    with pytest.raises(LocalProtocolError, match="not allowed in state handshake"):
        a.send(Have(0))
    a.send(a.our_handshake)
    with pytest.raises(LocalProtocolError, match="before the peer's handshake"):
        a.send(Request(0, 0, 1))
    assert a.our_state is State.OPENING


def test_only_our_own_handshake_may_be_sent() -> None:
    a = make_connection(1)
    with pytest.raises(LocalProtocolError, match="made with"):
        a.send(Handshake(manifest_id=MANIFEST_ID, peer_id=bytes(20)))
    assert a.our_state is State.HANDSHAKE


@pytest.mark.parametrize(
    ("message", "complaint"),
    [
        (Request(9, 0, 1), "out of range"),
        (Request(0, -1, 1), "out of range"),
        (Cancel(0, 0, 1), "not pending"),
        (Reject(0, 0, 1, 1), "not pending"),
        (Piece(0, 0, 1, bytes(100)), "no pending request"),
        (Have(4), "out of range"),
        (Bitfield(b"\xff"), "past the last piece"),
        (Voucher(b"pay"), "did not offer vouchers"),
    ],
)
def test_misuse_is_our_fault_and_changes_nothing(message: Any, complaint: str) -> None:
    a, _b = handshaken_pair()
    with pytest.raises(LocalProtocolError, match=complaint):
        a.send(message)
    assert a.our_state is State.OPENING
    assert not a.requests_sent


def test_piece_must_carry_exactly_the_requested_bytes() -> None:
    a, b = handshaken_pair()
    deliver(a.send(Request(0, 0, 1)), b)
    with pytest.raises(LocalProtocolError, match="99 bytes, not 100"):
        b.send_piece_parts(Piece(0, 0, 1, bytes(99)))
    assert Request(0, 0, 1).run in b.requests_received


def test_nothing_may_follow_our_goodbye() -> None:
    a, _b = handshaken_pair()
    a.send(Goodbye(GoodbyeReason.NORMAL, "done"))
    with pytest.raises(LocalProtocolError, match="state closed"):
        a.send(KeepAlive())


def test_connection_refuses_a_frame_limit_too_small_for_its_bitfield() -> None:
    with pytest.raises(LocalProtocolError, match="below the minimum"):
        PeerConnection(
            Handshake(manifest_id=MANIFEST_ID, peer_id=bytes(20), max_frame=4096),
            piece_count=100_000,
            piece_chunk_sizes=lambda piece: [1],
        )


def test_chunk_size_table_must_cover_every_piece() -> None:
    with pytest.raises(LocalProtocolError, match="3 chunk size lists for 4 pieces"):
        PeerConnection(
            Handshake(manifest_id=MANIFEST_ID, peer_id=bytes(20)),
            piece_count=4,
            piece_chunk_sizes=CHUNK_SIZES[:3],
        )


# ------------------------------------------------------------------------- properties


@settings(max_examples=300)
@given(st.binary(max_size=200), st.integers(1, 16))
def test_arbitrary_bytes_after_the_handshake_only_make_events_or_peer_faults(
    garbage: bytes, read_size: int
) -> None:
    a, _b = handshaken_pair({"capabilities": Capability.VOUCHERS})
    try:
        for start in range(0, len(garbage), read_size):
            deliver(garbage[start : start + read_size], a)
        deliver(b"", a)
    except RemoteProtocolError:
        assert a.their_state is State.ERROR


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_instead_of_a_handshake_only_make_peer_faults(garbage: bytes) -> None:
    a = make_connection(1)
    try:
        deliver(garbage, a)
        deliver(b"", a)
    except RemoteProtocolError:
        return
    assert a.their_state in (State.HANDSHAKE, State.CLOSED)


runs = st.integers(0, len(CHUNK_SIZES) - 1).flatmap(
    lambda piece: st.tuples(st.just(piece), st.integers(0, len(CHUNK_SIZES[piece]) - 1)).flatmap(
        lambda start: st.tuples(
            st.just(start[0]),
            st.just(start[1]),
            st.integers(1, len(CHUNK_SIZES[start[0]]) - start[1]),
        )
    )
)
actions = st.one_of(
    st.tuples(st.just("request"), runs),
    st.tuples(st.just("cancel"), st.integers(0, 10)),
    st.tuples(st.just("answer"), st.integers(0, 10), st.booleans()),
    st.tuples(st.just("have"), st.integers(0, len(CHUNK_SIZES) - 1)),
    st.tuples(st.just("voucher"), st.binary(max_size=40)),
    st.tuples(st.just("keepalive")),
)


@settings(max_examples=200)
@given(st.lists(actions, max_size=30), st.integers(1, 700), st.booleans())
def test_random_conversations_arrive_intact_in_any_read_size(
    steps: Sequence[tuple[Any, ...]], read_size: int, direct: bool
) -> None:
    """A fetcher and a seeder take random legal turns; each receives exactly what the other
    sent, whatever the read size, and every request ends answered or still pending.  With
    ``direct``, bytes are read into ``receive_buffer`` and every PIECE payload split by a
    read lands in its own buffer."""
    fields: dict[str, Any] = {"capabilities": Capability.VOUCHERS, "max_outstanding_requests": 4}
    if direct:
        fields["direct_payload_min"] = 1
    fetcher, seeder = handshaken_pair(fields, fields)
    sent_to_seeder: list[Event] = []
    sent_to_fetcher: list[Event] = []
    received_by_seeder: list[Event] = []
    received_by_fetcher: list[Event] = []

    def carry(data: bytes, to: PeerConnection, into: list[Event]) -> None:
        if direct:
            into.extend(read_into(data, to, read_size))
            return
        for start in range(0, len(data), read_size):
            into.extend(deliver(data[start : start + read_size], to))

    for step in steps:
        kind = step[0]
        if kind == "request":
            request = Request(*step[1])
            if request.run in fetcher.requests_sent or len(fetcher.requests_sent) >= 4:
                continue
            carry(fetcher.send(request), seeder, received_by_seeder)
            sent_to_seeder.append(request)
        elif kind == "cancel" and fetcher.requests_sent:
            run = sorted(fetcher.requests_sent)[step[1] % len(fetcher.requests_sent)]
            cancel = Cancel(*run)
            pending_at_seeder = run in seeder.requests_received
            carry(fetcher.send(cancel), seeder, received_by_seeder)
            if pending_at_seeder:
                sent_to_seeder.append(cancel)
        elif kind == "answer" and seeder.requests_received:
            run = sorted(seeder.requests_received)[step[1] % len(seeder.requests_received)]
            answer: Piece | Reject
            if step[2]:
                answer = Piece(*run, piece_data(Request(*run), fill=run.piece))
            else:
                answer = Reject(*run, RejectReason.NOT_AVAILABLE)
            carry(seeder.send(answer), fetcher, received_by_fetcher)
            sent_to_fetcher.append(answer)
        elif kind == "have":
            carry(seeder.send(Have(step[1])), fetcher, received_by_fetcher)
            sent_to_fetcher.append(Have(step[1]))
        elif kind == "voucher":
            carry(fetcher.send(Voucher(step[1])), seeder, received_by_seeder)
            sent_to_seeder.append(Voucher(step[1]))
        elif kind == "keepalive":
            carry(seeder.send(KeepAlive()), fetcher, received_by_fetcher)
            sent_to_fetcher.append(KeepAlive())
    assert received_by_seeder == sent_to_seeder
    assert received_by_fetcher == sent_to_fetcher
    assert set(fetcher.requests_sent) == set(seeder.requests_received)


# ------------------------------------------------------------------ reading into the buffer


def test_one_byte_trickle_through_the_receive_buffer_gives_the_same_events() -> None:
    a, b = handshaken_pair({"direct_payload_min": 1})
    request = Request(3, 2, 5)
    deliver(a.send(request), b)
    stream = (
        b.send(Bitfield.from_pieces(len(CHUNK_SIZES), [3]))
        + b.send(Piece(3, 2, 5, piece_data(request)))
        + b.send(KeepAlive())
        + b.send(Goodbye(GoodbyeReason.SHUTTING_DOWN, "bye ✓"))
    )
    trickled = read_into(stream, a, read_size=1)
    a.received(0)
    trickled.extend(drain(a))
    assert trickled == [
        Bitfield.from_pieces(len(CHUNK_SIZES), [3]),
        Piece(3, 2, 5, piece_data(request)),
        KeepAlive(),
        Goodbye(GoodbyeReason.SHUTTING_DOWN, "bye ✓"),
        ConnectionClosed(),
    ]


def piece_conversation() -> tuple[PeerConnection, bytes, Piece]:
    """A fetcher (diverting payloads from 1 byte up) that asked for piece 2, and the stream
    the seeder answers with: the PIECE between a HAVE and a KEEPALIVE."""
    a, b = handshaken_pair({"direct_payload_min": 1})
    deliver(b.send(Bitfield.from_pieces(len(CHUNK_SIZES), [2])), a)
    request = Request(2, 0, 2)
    deliver(a.send(request), b)
    piece = Piece(2, 0, 2, bytes(range(250)) * 8)
    header, payload = b.send_piece_parts(piece)
    return a, b.send(Have(2)) + header + payload + b.send(KeepAlive()), piece


def test_a_payload_split_at_every_boundary_arrives_whole() -> None:
    _a, stream, piece = piece_conversation()
    header_end = len(encode_message(Have(2))) + 17
    for cut in range(1, len(stream)):
        a, _stream, _piece = piece_conversation()
        events = read_into(stream[:cut], a) + read_into(stream[cut:], a)
        assert events == [Have(2), piece, KeepAlive()]
        received = events[1]
        assert isinstance(received, Piece)
        # Diverted exactly when the first read ended between the PIECE's header and its end.
        diverted = header_end <= cut < header_end + len(piece.data)
        assert isinstance(received.data, bytearray) is diverted
        assert not a.requests_sent and len(a._buffer) == 0


def test_a_large_payload_is_read_into_its_own_buffer() -> None:
    size = 1 << 20
    sizes = [[size], [size]]
    fetcher = PeerConnection(
        Handshake(manifest_id=MANIFEST_ID, peer_id=bytes(20), max_frame=size + 17),
        piece_count=2,
        piece_chunk_sizes=sizes,
    )
    seeder = PeerConnection(
        Handshake(manifest_id=MANIFEST_ID, peer_id=bytes([1]) * 20, max_frame=size + 17),
        piece_count=2,
        piece_chunk_sizes=sizes,
    )
    read_into(fetcher.send(fetcher.our_handshake), seeder)
    read_into(seeder.send(seeder.our_handshake), fetcher)
    read_into(fetcher.send(Request(1, 0, 1)), seeder)
    header, payload = seeder.send_piece_parts(Piece(1, 0, 1, bytes([7]) * size))
    stream = header + payload
    first = 256 * 1024
    assert read_into(stream[:first], fetcher, first) == []
    view = fetcher.receive_buffer(first)
    assert len(view) == size - (first - 17)  # the payload's own rest, not the 256 KiB area
    owner = view.obj
    view.release()
    (piece,) = read_into(stream[first:], fetcher, first)
    assert isinstance(piece, Piece) and piece.data is owner and piece.data == payload


def test_an_unrequested_piece_is_refused_before_any_payload_is_kept() -> None:
    a, _b = handshaken_pair({"direct_payload_min": 1})
    header = struct.pack(">IBIII", 13 + 50, MessageType.PIECE, 1, 0, 1)
    with pytest.raises(RemoteProtocolError, match="unrequested PIECE"):
        read_into(header, a)
    assert not a._buffer.payload_pending
    assert a.their_state is State.ERROR
    a.received(0)  # dropped: the connection is dead


def test_a_piece_of_the_wrong_length_is_refused_from_its_header() -> None:
    a, b = handshaken_pair({"direct_payload_min": 1})
    deliver(a.send(Request(1, 0, 1)), b)
    header = struct.pack(">IBIII", 13 + 49, MessageType.PIECE, 1, 0, 1)
    with pytest.raises(RemoteProtocolError, match="49 bytes, not 50"):
        read_into(header, a)
    assert not a._buffer.payload_pending


def test_an_oversized_piece_is_refused_before_any_payload_is_kept() -> None:
    a, b = handshaken_pair({"direct_payload_min": 1})
    deliver(a.send(Request(1, 0, 1)), b)
    header = struct.pack(">IBIII", a.max_frame, MessageType.PIECE, 1, 0, 1)
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        read_into(header, a)
    assert not a._buffer.payload_pending


def test_an_unrequested_large_piece_costs_no_allocation() -> None:
    import tracemalloc

    big = 64 << 20
    a, _b = handshaken_pair({"max_frame": big + 17}, {"max_frame": big + 17})
    header = struct.pack(">IBIII", 13 + big, MessageType.PIECE, 1, 0, 1)
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError, match="unrequested PIECE"):
            read_into(header + bytes(1000), a, 256 * 1024)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_a_piece_cancelled_while_its_payload_arrives_is_still_delivered() -> None:
    a, stream, piece = piece_conversation()
    assert read_into(stream[:100], a) == [Have(2)]
    assert a._buffer.payload_pending
    a.send(Cancel(2, 0, 2))  # crossed the PIECE on the wire
    assert read_into(stream[100:], a) == [piece, KeepAlive()]


def test_stream_ending_inside_a_diverted_payload_is_refused() -> None:
    a, stream, _piece = piece_conversation()
    read_into(stream[:100], a)
    assert a._buffer.payload_pending
    a.received(0)
    with pytest.raises(RemoteProtocolError, match="middle of a frame"):
        a.next_event()
    assert a.their_state is State.ERROR
    a.receive_buffer(4096)
    a.received(10)  # dropped: the connection is dead
    with pytest.raises(RemoteProtocolError):
        a.next_event()


def test_garbage_after_a_diverted_payload_is_refused() -> None:
    a, stream, piece = piece_conversation()
    end_of_piece = len(stream) - len(encode_message(KeepAlive()))
    garbage = struct.pack(">IB", 1, 0x42)
    assert read_into(stream[:100], a) == [Have(2)]
    a.receive_data(stream[100:end_of_piece] + garbage)  # one read: payload rest, then garbage
    assert a.next_event() == piece
    with pytest.raises(RemoteProtocolError, match="unknown message type"):
        a.next_event()
    assert a.their_state is State.ERROR


def test_data_after_end_of_stream_through_the_receive_buffer_is_our_fault() -> None:
    a, _b = handshaken_pair()
    a.received(0)
    assert drain(a) == [ConnectionClosed()]
    a.receive_buffer(16)
    with pytest.raises(LocalProtocolError):
        a.received(1)
