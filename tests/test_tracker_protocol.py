"""The sans-I/O tracker core: query and reply codecs, compact peers, the swarm table."""

from __future__ import annotations

import contextlib
import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thetadist.errors import LocalProtocolError, TrackerError
from thetadist.manifest import bencoding
from thetadist.tracker.protocol import (
    AnnounceRequest,
    ReplyPeer,
    SwarmLimits,
    SwarmTable,
    announce_url,
    build_announce_query,
    build_announce_reply,
    build_failure,
    decode_compact_peers,
    encode_compact_peers,
    failure_reason,
    parse_announce_query,
    parse_announce_reply,
)

H = b"\x00" * 20
PID = b"-TD0001-abcdefghijkl"

counters = st.integers(min_value=0, max_value=2**63 - 1)
requests = st.builds(
    AnnounceRequest,
    info_hash=st.binary(min_size=20, max_size=20),
    peer_id=st.binary(min_size=20, max_size=20),
    port=st.integers(min_value=1, max_value=65535),
    uploaded=counters,
    downloaded=counters,
    left=counters,
    event=st.sampled_from([None, "started", "completed", "stopped"]),
    numwant=st.integers(min_value=0, max_value=10_000),
    compact=st.booleans(),
    no_peer_id=st.booleans(),
    ip=st.none() | st.ip_addresses().map(str),
    key=st.none() | st.binary(min_size=1, max_size=64),
)


@given(requests)
def test_query_round_trip(request: AnnounceRequest) -> None:
    query = build_announce_query(request)
    assert query.isascii() and "+" not in query and " " not in query
    assert parse_announce_query(query) == request
    assert parse_announce_query(query.encode()) == request


@given(st.binary(max_size=600))
@settings(max_examples=500)
def test_arbitrary_query_bytes_raise_only_tracker_error(data: bytes) -> None:
    with contextlib.suppress(TrackerError):
        parse_announce_query(data)


@given(st.text(max_size=300))
def test_arbitrary_query_text_raises_only_tracker_error(text: str) -> None:
    with contextlib.suppress(TrackerError):
        parse_announce_query(text)


@given(
    st.lists(
        st.sampled_from(
            ["info_hash", "peer_id", "port", "left", "event", "numwant", "compact", "ip", "x"]
        ).flatmap(lambda k: st.tuples(st.just(k), st.text(max_size=30))),
        max_size=8,
    )
)
def test_structured_garbage_raises_only_tracker_error(pairs: list[tuple[str, str]]) -> None:
    query = "&".join(f"{k}={v}" for k, v in pairs)
    with contextlib.suppress(TrackerError):
        parse_announce_query(query)


def _query(**overrides: str) -> str:
    params = {
        "info_hash": "%00" * 20,
        "peer_id": "A" * 20,
        "port": "6881",
        "uploaded": "0",
        "downloaded": "0",
        "left": "10",
    }
    params.update(overrides)
    return "&".join(f"{k}={v}" for k, v in params.items() if v != "<omit>")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"info_hash": "%00" * 19}, "info_hash"),
        ({"info_hash": "%00" * 21}, "info_hash"),
        ({"info_hash": "<omit>"}, "info_hash"),
        ({"peer_id": "short"}, "peer_id"),
        ({"port": "0"}, "port"),
        ({"port": "65536"}, "port"),
        ({"port": "-1"}, "port"),
        ({"port": "+80"}, "port"),
        ({"port": "%D9%A3"}, "port"),
        ({"port": "٣"}, "ASCII"),
        ({"port": "<omit>"}, "port"),
        ({"left": "1" * 21}, "left"),
        ({"left": str(2**63)}, "left"),
        ({"event": "paused"}, "event"),
        ({"compact": "2"}, "compact"),
        ({"numwant": "lots"}, "numwant"),
    ],
)
def test_bad_queries(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(TrackerError, match=message):
        parse_announce_query(_query(**overrides))


def test_query_bounds_and_duplicates() -> None:
    with pytest.raises(TrackerError, match="longer"):
        parse_announce_query(_query(junk="x" * 5000))
    with pytest.raises(TrackerError, match="duplicate"):
        parse_announce_query(_query() + "&port=1")
    with pytest.raises(TrackerError, match="parameters"):
        parse_announce_query(_query() + "".join(f"&k{i}=1" for i in range(80)))


def test_query_defaults_and_form_encoding() -> None:
    request = parse_announce_query(
        "info_hash=" + "+" * 20 + "&peer_id=" + "B" * 20 + "&port=1&unknown=1"
    )
    assert request.info_hash == b" " * 20
    assert (request.left, request.numwant, request.compact, request.event) == (0, 50, True, None)


def test_builder_refuses_impossible_requests() -> None:
    with pytest.raises(LocalProtocolError):
        build_announce_query(AnnounceRequest(info_hash=b"x", peer_id=PID, port=1))
    with pytest.raises(LocalProtocolError):
        build_announce_query(AnnounceRequest(info_hash=H, peer_id=PID, port=0))
    with pytest.raises(LocalProtocolError):
        build_announce_query(AnnounceRequest(info_hash=H, peer_id=PID, port=1, left=-1))


def test_announce_url_keeps_an_existing_query() -> None:
    request = AnnounceRequest(info_hash=H, peer_id=PID, port=1)
    assert announce_url("http://t/announce", request).startswith("http://t/announce?info_hash=")
    assert announce_url("http://t/a?pk=1", request).startswith("http://t/a?pk=1&info_hash=")


# -- replies --------------------------------------------------------------------------

peers_v4 = st.lists(
    st.tuples(st.ip_addresses(v=4).map(str), st.integers(min_value=1, max_value=65535)),
    unique=True,
    max_size=30,
)


def _not_v4_mapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # Those are recorded as IPv4 (normalize_ip): not a round trip by design.
    return isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None


peers_v6 = st.lists(
    st.tuples(
        st.ip_addresses(v=6).filter(_not_v4_mapped).map(str),
        st.integers(min_value=1, max_value=65535),
    ),
    unique=True,
    max_size=10,
)


@given(peers_v4, peers_v6, st.booleans())
def test_reply_round_trip(
    v4: list[tuple[str, int]], v6: list[tuple[str, int]], compact: bool
) -> None:
    peers = [ReplyPeer(ip, port, PID) for ip, port in v4 + v6]
    body = build_announce_reply(
        interval=120, min_interval=60, peers=peers, complete=3, incomplete=4, compact=compact
    )
    result = parse_announce_reply(body)
    assert result.peers == v4 + v6
    assert (result.interval, result.min_interval, result.complete, result.incomplete) == (
        120,
        60,
        3,
        4,
    )
    if not compact:
        assert all(result.peer_ids[p] == PID for p in v4 + v6)


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_arbitrary_reply_raises_only_tracker_error(body: bytes) -> None:
    with contextlib.suppress(TrackerError):
        parse_announce_reply(body)


values = st.recursive(
    st.integers(min_value=-(10**20), max_value=10**20) | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    b"interval",
                    b"peers",
                    b"peers6",
                    b"ip",
                    b"port",
                    b"peer id",
                    b"min interval",
                    b"complete",
                    b"failure reason",
                    b"warning message",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@given(values)
def test_structured_reply_garbage_raises_only_tracker_error(value: bencoding.Value) -> None:
    with contextlib.suppress(TrackerError):
        parse_announce_reply(bencoding.encode(value))


def test_compact_peers() -> None:
    v4, v6 = encode_compact_peers([("10.0.0.1", 6881), ("::1", 80)])
    assert v4 == bytes([10, 0, 0, 1, 0x1A, 0xE1])
    assert len(v6) == 18
    assert decode_compact_peers(v4) == [("10.0.0.1", 6881)]
    assert decode_compact_peers(v6, ipv6=True) == [("::1", 80)]
    assert decode_compact_peers(bytes(6)) == []  # port 0 is dropped
    with pytest.raises(TrackerError, match="multiple of 6"):
        decode_compact_peers(bytes(7))


def test_reply_failures() -> None:
    with pytest.raises(TrackerError, match="not authorized"):
        parse_announce_reply(build_failure("not authorized"))
    assert failure_reason(build_failure("nope")) == "nope"
    assert failure_reason(b"<html>") is None
    for body in (b"", b"<html>", b"le", b"d8:intervali-1ee", b"de", b"d5:peers3:abce"):
        with pytest.raises(TrackerError):
            parse_announce_reply(body)
    # Unsorted keys are not canonical bencode: refused.
    with pytest.raises(TrackerError, match="bencode"):
        parse_announce_reply(b"d8:intervali1e5:peers0:8:completei1ee")


def test_dict_peers_only_ip_literals() -> None:
    body = bencoding.encode(
        {
            b"interval": 60,
            b"peers": [
                {b"ip": b"evil.example", b"port": 1},
                {b"ip": b"1.2.3.4", b"port": 0},
                {b"ip": b"::ffff:1.2.3.4", b"port": 5},
                {b"ip": b"1.2.3.4", b"port": 5},
            ],
            b"warning message": b"hi",
        }
    )
    result = parse_announce_reply(body)
    assert result.peers == [("1.2.3.4", 5)]
    assert result.warning == "hi"


# -- the swarm table ------------------------------------------------------------------


def _announce(
    table: SwarmTable,
    ip: str,
    port: int,
    now: float,
    *,
    info_hash: bytes = H,
    left: int = 1,
    event: str | None = None,
    numwant: int = 50,
) -> list[tuple[str, int]]:
    request = AnnounceRequest(
        info_hash=info_hash,
        peer_id=PID,
        port=port,
        left=left,
        event=event,  # type: ignore[arg-type]
        numwant=numwant,
    )
    return [(p.ip, p.port) for p in table.announce(request, ip, now).peers]


def test_table_peers_see_each_other_and_stop() -> None:
    table = SwarmTable(peer_ttl=100)
    assert _announce(table, "10.0.0.1", 1, 0) == []
    assert _announce(table, "10.0.0.2", 2, 1) == [("10.0.0.1", 1)]
    assert _announce(table, "10.0.0.1", 1, 2) == [("10.0.0.2", 2)]
    assert _announce(table, "10.0.0.2", 2, 3, event="stopped") == []
    assert _announce(table, "10.0.0.1", 1, 4) == []
    assert table.peer_count == 1
    _announce(table, "10.0.0.1", 1, 5, event="stopped")
    assert (table.peer_count, table.torrent_count) == (0, 0)


def test_table_stopped_from_another_address_does_not_remove() -> None:
    table = SwarmTable(peer_ttl=100)
    _announce(table, "10.0.0.1", 1, 0)
    _announce(table, "10.0.0.9", 1, 1, event="stopped")
    assert table.peers_of(H) == [("10.0.0.1", 1)]


def test_table_expiry_after_ttl() -> None:
    table = SwarmTable(peer_ttl=60)
    _announce(table, "10.0.0.1", 1, 0)
    _announce(table, "10.0.0.2", 2, 30)
    assert table.expire(59) == 0
    assert table.expire(60) == 1
    assert table.peers_of(H) == [("10.0.0.2", 2)]
    # An announce expires its own torrent lazily.
    assert _announce(table, "10.0.0.3", 3, 95) == []
    assert table.peer_count == 1


def test_table_seeders_get_only_leechers_and_counts() -> None:
    table = SwarmTable(peer_ttl=60)
    _announce(table, "10.0.0.1", 1, 0, left=0)
    _announce(table, "10.0.0.2", 2, 0, left=0)
    assert _announce(table, "10.0.0.3", 3, 0, left=0) == []
    request = AnnounceRequest(info_hash=H, peer_id=PID, port=4, left=5)
    reply = table.announce(request, "10.0.0.4", 0)
    assert (reply.complete, reply.incomplete, len(reply.peers)) == (3, 1, 3)
    # A leecher that completes becomes a seeder.
    done = AnnounceRequest(info_hash=H, peer_id=PID, port=4, left=0, event="completed")
    reply = table.announce(done, "10.0.0.4", 1)
    assert (reply.complete, reply.incomplete, reply.peers) == (4, 0, [])


def test_table_bounds_evict_oldest() -> None:
    table = SwarmTable(
        peer_ttl=1000,
        limits=SwarmLimits(
            max_torrents=3, max_peers_per_torrent=4, max_peers_total=6, max_numwant=2
        ),
        rng=random.Random(1),
    )
    for i in range(10):
        _announce(table, f"10.0.0.{i}", 1, i)
    assert table.peers_of(H) == [(f"10.0.0.{i}", 1) for i in range(6, 10)]
    assert len(_announce(table, "10.0.1.1", 1, 11, numwant=10**6)) == 2
    for t in range(5):
        _announce(table, "10.0.2.1", 1, 20 + t, info_hash=bytes([t + 1]) * 20)
    assert table.torrent_count == 3
    assert table.peer_count <= 6
    assert table.peers_of(H) == []  # the least recently announced torrent went first


@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),  # torrent
            st.integers(0, 5),  # peer
            st.sampled_from([None, "started", "completed", "stopped"]),
            st.integers(0, 1),  # left
            st.integers(0, 50),  # time step
        ),
        max_size=80,
    )
)
def test_table_invariants(ops: list[tuple[int, int, str | None, int, int]]) -> None:
    limits = SwarmLimits(max_torrents=3, max_peers_per_torrent=4, max_peers_total=7)
    table = SwarmTable(peer_ttl=40, limits=limits, rng=random.Random(0))
    now = 0
    for torrent, peer, event, left, step in ops:
        now += step
        info_hash = bytes([torrent]) * 20
        got = _announce(
            table, f"10.0.0.{peer}", 1, now, info_hash=info_hash, left=left, event=event
        )
        assert (f"10.0.0.{peer}", 1) not in got
        assert table.torrent_count <= limits.max_torrents
        assert table.peer_count <= limits.max_peers_total
        assert table.peer_count == sum(len(table.peers_of(bytes([t]) * 20)) for t in range(4))
        for t in range(4):
            assert len(table.peers_of(bytes([t]) * 20)) <= limits.max_peers_per_torrent
