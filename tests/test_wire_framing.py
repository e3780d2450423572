"""The frame codec on its own: encode, cut frames out of a stream, decode."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thetadist.errors import LocalProtocolError, RemoteProtocolError
from thetadist.wire import (
    FIRST_EXTENSION_TYPE,
    MAX_HANDSHAKE_EXTENSIONS_SIZE,
    MAX_HANDSHAKE_FRAME,
    MAX_VOUCHER_SIZE,
    Bitfield,
    Cancel,
    Goodbye,
    Handshake,
    Have,
    KeepAlive,
    Message,
    MessageType,
    PaymentTerms,
    Piece,
    ReceiveBuffer,
    Reject,
    Request,
    Voucher,
    decode_message,
    encode_message,
    encode_piece_parts,
    piece_frame_size,
)

NO_LIMIT = 1 << 40
u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)

payment_terms = st.builds(
    PaymentTerms,
    payee=st.binary(min_size=20, max_size=20),
    price_per_mib_wei=st.integers(0, 2**256 - 1),
    chain_id=st.integers(0, 2**64 - 1),
    contract=st.binary(min_size=20, max_size=20),
    credit_window=st.none() | st.integers(0, 2**64 - 1),
)
handshakes = st.builds(
    Handshake,
    manifest_id=st.binary(min_size=32, max_size=32),
    peer_id=st.binary(min_size=20, max_size=20) | st.binary(min_size=32, max_size=32),
    listen_port=u16,
    capabilities=st.integers(0, 2**64 - 1),
    max_frame=u32,
    max_outstanding_requests=u16,
    payment_terms=st.none() | payment_terms,
    extensions=st.binary(max_size=MAX_HANDSHAKE_EXTENSIONS_SIZE),
)
messages: st.SearchStrategy[Message] = st.one_of(
    handshakes,
    st.builds(Bitfield, st.binary(max_size=64)),
    st.builds(Have, u32),
    st.builds(Request, u32, u32, u32),
    st.builds(Cancel, u32, u32, u32),
    st.builds(Piece, u32, u32, u32, st.binary(max_size=3000)),
    st.builds(Reject, u32, u32, u32, u16),
    st.builds(Voucher, st.binary(max_size=MAX_VOUCHER_SIZE)),
    st.just(KeepAlive()),
    st.builds(Goodbye, u16, st.text(max_size=64)),
)


def decode_all(buffer: ReceiveBuffer, max_frame: int = NO_LIMIT) -> list[Message]:
    decoded = []
    while (frame := buffer.peek_frame(max_frame)) is not None:
        kind, body = frame
        try:
            decoded.append(decode_message(kind, body))
        finally:
            body.release()
        buffer.commit()
    return decoded


def frame(kind: int, body: bytes) -> bytes:
    return struct.pack(">IB", 1 + len(body), kind) + body


def decode_one(data: bytes) -> Message:
    buffer = ReceiveBuffer()
    buffer.feed(data)
    (message,) = decode_all(buffer)
    return message


@given(st.lists(messages, max_size=12), st.data())
def test_message_sequences_survive_encode_and_decode_in_any_split(
    sent: list[Message], data: st.DataObject
) -> None:
    stream = b"".join(encode_message(message) for message in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    buffer = ReceiveBuffer()
    received: list[Message] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        buffer.feed(stream[start:end])
        received.extend(decode_all(buffer))
    assert received == sent
    assert len(buffer) == 0


def test_piece_parts_are_the_frame_without_copying_the_payload() -> None:
    data = bytearray(b"x" * 70_000)
    piece = Piece(3, 1, 2, data)
    header, payload = encode_piece_parts(piece)
    assert payload.obj is data
    assert header + payload == encode_message(piece)
    assert len(header) + len(payload) == piece_frame_size(len(data))


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(struct.pack(">IB", 2**31, MessageType.PIECE))
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        buffer.peek_frame(piece_frame_size(1 << 20))


def test_frame_exactly_at_the_limit_is_accepted() -> None:
    encoded = encode_message(Voucher(b"v" * 100))
    buffer = ReceiveBuffer()
    buffer.feed(encoded)
    assert buffer.peek_frame(len(encoded)) is not None
    with pytest.raises(RemoteProtocolError):
        buffer.peek_frame(len(encoded) - 1)


def test_frame_without_type_byte_is_refused() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"\x00\x00\x00\x00\x02")
    with pytest.raises(RemoteProtocolError, match="type byte"):
        buffer.peek_frame(NO_LIMIT)


def test_incomplete_frame_consumes_nothing() -> None:
    encoded = encode_message(Have(7))
    buffer = ReceiveBuffer()
    buffer.feed(encoded[:-1])
    assert buffer.peek_frame(NO_LIMIT) is None
    assert len(buffer) == len(encoded) - 1
    buffer.feed(encoded[-1:])
    assert decode_all(buffer) == [Have(7)]


def test_draining_many_frames_across_compactions_keeps_every_frame() -> None:
    sent = [Have(index) for index in range(30_000)]
    stream = b"".join(encode_message(message) for message in sent)
    buffer = ReceiveBuffer()
    received: list[Message] = []
    for start in range(0, len(stream), 100_003):
        buffer.feed(stream[start : start + 100_003])
        received.extend(decode_all(buffer))
    assert received == sent


@pytest.mark.parametrize("kind", [10, 0x42, FIRST_EXTENSION_TYPE - 1, FIRST_EXTENSION_TYPE])
def test_decoder_refuses_types_it_does_not_know(kind: int) -> None:
    with pytest.raises(RemoteProtocolError, match="unknown message type"):
        decode_one(frame(kind, b""))


handshake = Handshake(manifest_id=bytes(32), peer_id=bytes(20))
handshake_body = encode_message(handshake)[5:]


@pytest.mark.parametrize(
    ("kind", "body", "complaint"),
    [
        (MessageType.HANDSHAKE, b"THETA", "truncated"),
        (MessageType.HANDSHAKE, b"BITTORRENT" + handshake_body[10:], "magic"),
        (MessageType.HANDSHAKE, handshake_body[:8] + b"\x00\x02" + handshake_body[10:], "version"),
        (MessageType.HANDSHAKE, handshake_body[:-1], "truncated"),
        (MessageType.HANDSHAKE, handshake_body + b"\x00", "trailing"),
        (MessageType.HANDSHAKE, handshake_body[:42] + b"\x07" + handshake_body[43:], "peer id"),
        (MessageType.HANDSHAKE, handshake_body[:-4] + b"\x00\x05\x00\x00", "payment terms"),
        (MessageType.HANDSHAKE, handshake_body[:-2] + b"\x04\x01", "extensions"),
        (MessageType.HAVE, b"\x00\x00\x01", "HAVE body"),
        (MessageType.REQUEST, bytes(13), "REQUEST body"),
        (MessageType.CANCEL, bytes(11), "CANCEL body"),
        (MessageType.REJECT, bytes(12), "REJECT body"),
        (MessageType.PIECE, bytes(11), "PIECE is truncated"),
        (MessageType.VOUCHER, bytes(MAX_VOUCHER_SIZE + 1), "voucher"),
        (MessageType.KEEPALIVE, b"\x00", "KEEPALIVE"),
        (MessageType.GOODBYE, b"\x00", "GOODBYE is truncated"),
        (MessageType.GOODBYE, b"\x00\x00\xff\xfe", "UTF-8"),
        (MessageType.GOODBYE, b"\x00\x00" + b"a" * 257, "exceeds"),
    ],
)
def test_malformed_bodies_are_the_peers_fault(kind: int, body: bytes, complaint: str) -> None:
    with pytest.raises(RemoteProtocolError, match=complaint):
        decode_one(frame(kind, body))


@pytest.mark.parametrize(
    "message",
    [
        Handshake(manifest_id=bytes(31), peer_id=bytes(20)),
        Handshake(manifest_id=bytes(32), peer_id=bytes(7)),
        Handshake(manifest_id=bytes(32), peer_id=bytes(20), listen_port=70_000),
        Handshake(manifest_id=bytes(32), peer_id=bytes(20), max_frame=2**32),
        Handshake(
            manifest_id=bytes(32),
            peer_id=bytes(20),
            extensions=bytes(MAX_HANDSHAKE_EXTENSIONS_SIZE + 1),
        ),
        Handshake(
            manifest_id=bytes(32),
            peer_id=bytes(20),
            payment_terms=PaymentTerms(bytes(19), 1, 1, bytes(20)),
        ),
        Handshake(
            manifest_id=bytes(32),
            peer_id=bytes(20),
            payment_terms=PaymentTerms(bytes(20), -1, 1, bytes(20)),
        ),
        Handshake(
            manifest_id=bytes(32),
            peer_id=bytes(20),
            payment_terms=PaymentTerms(bytes(20), 1, 1, bytes(20), credit_window=-1),
        ),
        Handshake(
            manifest_id=bytes(32),
            peer_id=bytes(20),
            payment_terms=PaymentTerms(bytes(20), 1, 1, bytes(20), credit_window=2**64),
        ),
        Have(-1),
        Request(2**32, 0, 1),
        Piece(0, 0, -1, b"data"),
        Reject(0, 0, 1, 2**16),
        Voucher(bytes(MAX_VOUCHER_SIZE + 1)),
        Goodbye(0, "é" * 129),
        Goodbye(0, "\udc80"),
    ],
)
def test_unencodable_messages_are_our_fault(message: Message) -> None:
    with pytest.raises(LocalProtocolError):
        encode_message(message)


def test_handshake_frame_bound_covers_the_largest_handshake() -> None:
    largest = Handshake(
        manifest_id=bytes(32),
        peer_id=bytes(32),
        payment_terms=PaymentTerms(bytes(20), 2**256 - 1, 2**64 - 1, bytes(20), 2**64 - 1),
        extensions=bytes(MAX_HANDSHAKE_EXTENSIONS_SIZE),
    )
    assert len(encode_message(largest)) == MAX_HANDSHAKE_FRAME


def _with_terms_of(handshake: Handshake, terms: bytes) -> bytes:
    """``handshake`` encoded with its payment terms replaced by ``terms`` (any size)."""
    assert handshake.payment_terms is not None and not handshake.extensions
    body = encode_message(handshake)[5:]
    # magic+version 10, ids 33, peer id 20, settings 16, then the u16 terms size
    head = body[: 10 + 33 + 20 + 16]
    return frame(MessageType.HANDSHAKE, head + struct.pack(">H", len(terms)) + terms + b"\0\0")


def test_terms_without_a_credit_window_are_still_understood() -> None:
    """80-byte terms (as first defined, before the credit window) decode without a window, and
    terms without one encode that way; a window of 0 (stop-and-wait) is a window."""
    terms = PaymentTerms(b"\x01" * 20, 10**12, 31337, b"\x02" * 20, credit_window=64 << 20)
    handshake = Handshake(manifest_id=bytes(32), peer_id=bytes(20), payment_terms=terms)
    price = (10**12).to_bytes(32, "big")
    legacy = struct.pack(">20s32sQ20s", terms.payee, price, 31337, terms.contract)
    decoded = decode_one(_with_terms_of(handshake, legacy))
    assert isinstance(decoded, Handshake)
    assert decoded.payment_terms == PaymentTerms(terms.payee, 10**12, 31337, terms.contract)
    assert decoded.payment_terms.credit_window is None
    assert encode_message(decoded) == _with_terms_of(handshake, legacy)
    assert decode_one(encode_message(handshake)) == handshake  # the current form keeps it
    stop_and_wait = Handshake(
        manifest_id=bytes(32),
        peer_id=bytes(20),
        payment_terms=PaymentTerms(terms.payee, 1, 1, terms.contract, credit_window=0),
    )
    assert decode_one(encode_message(stop_and_wait)) == stop_and_wait


@pytest.mark.parametrize("size", [1, 79, 81, 87, 89])
def test_terms_of_any_other_size_are_refused(size: int) -> None:
    terms = PaymentTerms(b"\x01" * 20, 1, 1, b"\x02" * 20)
    handshake = Handshake(manifest_id=bytes(32), peer_id=bytes(20), payment_terms=terms)
    with pytest.raises(RemoteProtocolError, match=f"payment terms of {size} bytes"):
        decode_one(_with_terms_of(handshake, bytes(size)))


def test_bitfield_helpers_agree_with_the_bit_order() -> None:
    bitfield = Bitfield.from_pieces(10, [0, 7, 9])
    assert bitfield.bits == bytes([0b1000_0001, 0b0100_0000])
    assert [bitfield.has(piece) for piece in (0, 1, 7, 9, 10, -1)] == [
        True,
        False,
        True,
        True,
        False,
        False,
    ]
    assert list(bitfield.pieces()) == [0, 7, 9]
    with pytest.raises(LocalProtocolError):
        Bitfield.from_pieces(10, [10])


# ------------------------------------------------------------------ reading into the buffer


def read_into(buffer: ReceiveBuffer, data: bytes, read_size: int) -> None:
    """Deliver ``data`` the way a socket shell does: ``recv_into`` the offered view."""
    while data:
        view = buffer.get_buffer(read_size)
        count = min(len(view), len(data))
        view[:count] = data[:count]
        view.release()
        buffer.advance(count)
        data = data[count:]


@given(st.lists(messages, max_size=12), st.integers(1, 5000))
def test_reading_straight_into_the_buffer_gives_the_same_frames(
    sent: list[Message], read_size: int
) -> None:
    stream = b"".join(encode_message(message) for message in sent)
    buffer = ReceiveBuffer()
    received: list[Message] = []
    for start in range(0, len(stream), read_size):
        read_into(buffer, stream[start : start + read_size], read_size)
        received.extend(decode_all(buffer))
    assert received == sent
    assert len(buffer) == 0


def test_a_view_still_alive_does_not_stop_the_buffer() -> None:
    buffer = ReceiveBuffer()
    stale = buffer.get_buffer(8)
    buffer.advance(0)
    big = encode_message(Bitfield(b"v" * 3000)) * 3
    buffer.feed(big)  # grows the area while `stale` still points into the old one
    assert decode_all(buffer) == [Bitfield(b"v" * 3000)] * 3
    stale.release()


def test_advance_must_match_the_buffer_handed_out() -> None:
    buffer = ReceiveBuffer()
    with pytest.raises(LocalProtocolError):
        buffer.advance(1)
    buffer.get_buffer(10)
    with pytest.raises(LocalProtocolError):
        buffer.advance(11)


PAYLOAD = bytes(range(256)) * 40


def piece_stream() -> bytes:
    return encode_message(Piece(2, 3, 4, PAYLOAD)) + encode_message(Have(9))


@pytest.mark.parametrize("cut", range(18, len(piece_stream()) - 9, 97))
def test_a_payload_diverted_mid_frame_is_whole_and_uncopied(cut: int) -> None:
    stream = piece_stream()
    buffer = ReceiveBuffer()
    read_into(buffer, stream[:cut], 1 << 20)
    assert buffer.peek_frame(NO_LIMIT) is None
    assert buffer.peek_piece_header() == (2, 3, 4, len(PAYLOAD))
    buffer.begin_payload()
    assert buffer.payload_pending and len(buffer) == cut - 17
    view = buffer.get_buffer(16)
    assert len(view) == len(PAYLOAD) - (cut - 17)  # the payload's own rest, not 16 bytes
    owner = view.obj
    view.release()
    read_into(buffer, stream[cut:], 1 << 20)  # the rest of the payload, then the HAVE
    payload = buffer.take_payload()
    assert payload == PAYLOAD and payload is owner
    assert not buffer.payload_pending
    assert decode_all(buffer) == [Have(9)]


def test_a_payload_trickles_in_one_byte_at_a_time() -> None:
    stream = piece_stream()
    buffer = ReceiveBuffer()
    read_into(buffer, stream[:17], 1)
    buffer.begin_payload()
    for index in range(17, len(stream)):
        if index < 17 + len(PAYLOAD):
            assert buffer.take_payload() is None
        read_into(buffer, stream[index : index + 1], 1)
    assert buffer.take_payload() == PAYLOAD
    assert decode_all(buffer) == [Have(9)]


def test_only_an_incomplete_piece_frame_can_be_diverted() -> None:
    encoded = encode_message(Piece(0, 0, 1, b"abc"))
    buffer = ReceiveBuffer()
    buffer.feed(encode_message(Have(1)) + encoded[:16])
    assert buffer.peek_piece_header() is None  # a HAVE comes first
    assert decode_all(buffer) == [Have(1)]
    assert buffer.peek_piece_header() is None  # the PIECE's fixed fields are not all in
    with pytest.raises(LocalProtocolError):
        buffer.begin_payload()
    buffer.feed(encoded[16:17])
    assert buffer.peek_piece_header() == (0, 0, 1, 3)
    buffer.feed(encoded[17:])
    assert buffer.peek_piece_header() is None  # complete: an ordinary frame
    assert decode_all(buffer) == [Piece(0, 0, 1, b"abc")]


def test_reads_ending_mid_frame_keep_the_area_at_the_read_size() -> None:
    stream = b"".join(encode_message(Have(index)) for index in range(20_000))
    buffer = ReceiveBuffer()
    received: list[Message] = []
    while stream:  # each read as large as the socket allows, drained before the next
        view = buffer.get_buffer(5000)
        count = min(len(view), len(stream))
        view[:count] = stream[:count]
        view.release()
        buffer.advance(count)
        stream = stream[count:]
        received.extend(decode_all(buffer))
        assert len(buffer._data) == 5000
    assert received == [Have(index) for index in range(20_000)]


def test_a_frame_larger_than_the_read_size_grows_the_area_until_it_is_consumed() -> None:
    big = encode_message(Bitfield(bytes(30_000)))
    buffer = ReceiveBuffer()
    read_into(buffer, big + encode_message(Have(1)), 5000)
    assert len(buffer._data) > 30_000
    assert decode_all(buffer) == [Bitfield(bytes(30_000)), Have(1)]
    assert len(buffer._data) == 5000


def test_a_payload_pool_reuses_buffers_but_never_one_still_viewed() -> None:
    from thetadist.wire import PayloadPool

    pool = PayloadPool(limit=2)
    first = pool.take(1000)
    assert len(first) == 1000
    pool.give_back(first)
    again = pool.take(900)
    assert again is first and len(again) == 900  # reused, resized to exactly what is asked
    pool.give_back(again)
    assert pool.take(1200) is first and len(first) == 1200
    view = memoryview(first)
    pool.give_back(first)
    fresh = pool.take(1200)  # the same size, but a view is alive: not handed out again
    assert fresh is not first and len(fresh) == 1200
    view.release()
    for _ in range(5):
        pool.give_back(bytearray(10))
    assert len(pool._idle) == 2  # bounded in count
    big = PayloadPool(limit=8, limit_bytes=3000)
    for _ in range(5):
        big.give_back(bytearray(1000))
    assert len(big._idle) == 3  # and in bytes


def test_pooled_payloads_arrive_intact_when_buffers_are_reused() -> None:
    from thetadist.wire import PayloadPool

    pool = PayloadPool()
    buffer = ReceiveBuffer(pool)
    payloads = [os.urandom(70_000 + 1000 * n) for n in range(4)]
    taken = []
    for number, payload in enumerate(payloads):
        frame = encode_message(Piece(number, 0, 1, payload))
        buffer.feed(frame[:100])
        assert buffer.peek_frame(1 << 20) is None
        buffer.begin_payload()
        buffer.feed(frame[100:])
        data = buffer.take_payload()
        assert data is not None and bytes(data) == payload
        taken.append(id(data))
        pool.give_back(data)
    assert len(set(taken)) == 1  # one buffer served all four
