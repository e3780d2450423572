"""SANS-I/O core of the BitTorrent HTTP tracker protocol (BEP 3, BEP 23, BEP 7 ``peers6``).

Nothing here touches a socket, a clock or a random source of its own: the server and the
client feed bytes and ``now`` in and get values or bytes out.

* :func:`build_announce_query` / :func:`parse_announce_query` — the announce query string,
  with raw bytes (``info_hash``, ``peer_id``) percent-encoded byte by byte.
* :func:`build_announce_reply` / :func:`build_failure` / :func:`parse_announce_reply` — the
  bencoded reply, compact (6-byte IPv4 entries in ``peers``, 18-byte IPv6 entries in
  ``peers6``) or the original list of dictionaries.
* :class:`SwarmTable` — the tracker's memory: torrents → peers, bounded, expiring.

Untrusted input raises :class:`~thetadist.errors.TrackerError` and nothing else; a caller
passing impossible values to a builder gets :class:`~thetadist.errors.LocalProtocolError`.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote_from_bytes, unquote_to_bytes

from thetadist.errors import LocalProtocolError, ManifestError, TrackerError
from thetadist.manifest import bencoding

AnnounceEvent = Literal["started", "completed", "stopped"]
EVENTS: frozenset[str] = frozenset({"started", "completed", "stopped"})

INFO_HASH_SIZE = 20
PEER_ID_SIZE = 20
DEFAULT_INTERVAL = 300
DEFAULT_NUMWANT = 50
MAX_NUMWANT = 200
#: Longest query string the parser looks at (a real announce is ~250 bytes).
MAX_QUERY_BYTES = 4096
MAX_QUERY_PARAMS = 64
#: uploaded / downloaded / left must fit a signed 64-bit integer (what libtorrent sends).
MAX_COUNTER = 2**63 - 1
MAX_REPLY_INTERVAL = 7 * 24 * 3600
MAX_FAILURE_REASON = 1024

Peer = tuple[str, int]


# -- requests -------------------------------------------------------------------------


@dataclass(frozen=True)
class AnnounceRequest:
    """One announce, as a client sends it and the tracker reads it."""

    info_hash: bytes
    peer_id: bytes
    port: int
    uploaded: int = 0
    downloaded: int = 0
    left: int = 0
    event: AnnounceEvent | None = None
    numwant: int = DEFAULT_NUMWANT
    compact: bool = True
    no_peer_id: bool = False
    ip: str | None = None
    key: bytes | None = None

    def validate(self) -> None:
        """Raise :class:`LocalProtocolError` if this request cannot be sent as is."""
        if len(self.info_hash) != INFO_HASH_SIZE:
            raise LocalProtocolError(f"info_hash must be {INFO_HASH_SIZE} bytes")
        if len(self.peer_id) != PEER_ID_SIZE:
            raise LocalProtocolError(f"peer_id must be {PEER_ID_SIZE} bytes")
        if not 1 <= self.port <= 65535:
            raise LocalProtocolError(f"port {self.port} is not in 1..65535")
        for name in ("uploaded", "downloaded", "left"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_COUNTER:
                raise LocalProtocolError(f"{name}={value} is out of range")
        if not 0 <= self.numwant <= 10_000:
            raise LocalProtocolError(f"numwant={self.numwant} is out of range")
        if self.event is not None and self.event not in EVENTS:
            raise LocalProtocolError(f"unknown event {self.event!r}")
        if self.key is not None and len(self.key) > 64:
            raise LocalProtocolError("key is longer than 64 bytes")


def _q(value: bytes | str) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return quote_from_bytes(raw, safe="")


def build_announce_query(request: AnnounceRequest) -> str:
    """The query string (without ``?``) for ``request``; every byte outside the RFC 3986
    unreserved set is percent-encoded, so trackers that do not treat ``+`` as a space agree."""
    request.validate()
    parts = [
        ("info_hash", _q(request.info_hash)),
        ("peer_id", _q(request.peer_id)),
        ("port", str(request.port)),
        ("uploaded", str(request.uploaded)),
        ("downloaded", str(request.downloaded)),
        ("left", str(request.left)),
        ("compact", "1" if request.compact else "0"),
        ("numwant", str(request.numwant)),
    ]
    if request.no_peer_id:
        parts.append(("no_peer_id", "1"))
    if request.event is not None:
        parts.append(("event", request.event))
    if request.ip is not None:
        parts.append(("ip", _q(request.ip)))
    if request.key is not None:
        parts.append(("key", _q(request.key)))
    return "&".join(f"{k}={v}" for k, v in parts)


def announce_url(base: str, request: AnnounceRequest) -> str:
    """``base`` (which may already carry a query, e.g. a passkey) plus the announce query."""
    separator = "&" if "?" in base else "?"
    if base.endswith(("?", "&")):
        separator = ""
    return base + separator + build_announce_query(request)


def _unquote(raw: bytes) -> bytes:
    # Form encoding: '+' is a space.  Our builder never sends a bare '+'.
    return unquote_to_bytes(raw.replace(b"+", b" "))


def _split_query(query: bytes) -> dict[bytes, bytes]:
    if len(query) > MAX_QUERY_BYTES:
        raise TrackerError(f"query longer than {MAX_QUERY_BYTES} bytes")
    pairs = [p for p in query.split(b"&") if p]
    if len(pairs) > MAX_QUERY_PARAMS:
        raise TrackerError(f"more than {MAX_QUERY_PARAMS} query parameters")
    params: dict[bytes, bytes] = {}
    for pair in pairs:
        raw_key, _, raw_value = pair.partition(b"=")
        key = _unquote(raw_key)
        if key in params:
            raise TrackerError(f"duplicate query parameter {key[:32]!r}")
        params[key] = _unquote(raw_value)
    return params


def _int_param(params: dict[bytes, bytes], name: str, default: int | None, limit: int) -> int:
    raw = params.get(name.encode())
    if raw is None:
        if default is None:
            raise TrackerError(f"missing {name}")
        return default
    # ASCII digits only (int() would also take '+', '_', spaces and other scripts' digits).
    if not raw or len(raw) > 20 or not all(0x30 <= b <= 0x39 for b in raw):
        raise TrackerError(f"{name} is not a non-negative integer")
    value = int(raw)
    if value > limit:
        raise TrackerError(f"{name} is out of range")
    return value


def _flag_param(params: dict[bytes, bytes], name: str, default: bool) -> bool:
    raw = params.get(name.encode())
    if raw is None or raw == b"":
        return default
    if raw in (b"0", b"1"):
        return raw == b"1"
    raise TrackerError(f"{name} must be 0 or 1")


def parse_announce_query(query: bytes | str) -> AnnounceRequest:
    """Parse an announce query string (the part after ``?``).

    Required: ``info_hash`` (20 bytes), ``peer_id`` (20 bytes), ``port`` (1..65535).
    Optional: ``uploaded``/``downloaded``/``left`` (default 0), ``event`` (``started``,
    ``completed``, ``stopped`` or empty), ``numwant`` (default 50, not clamped here),
    ``compact`` (default 1), ``no_peer_id``, ``ip``, ``key``.  Unknown parameters are ignored.
    """
    if isinstance(query, str):
        try:
            query = query.encode("ascii")
        except UnicodeEncodeError:
            raise TrackerError("query is not ASCII") from None
    params = _split_query(query)
    info_hash = params.get(b"info_hash")
    if info_hash is None or len(info_hash) != INFO_HASH_SIZE:
        raise TrackerError(f"info_hash must be {INFO_HASH_SIZE} bytes")
    peer_id = params.get(b"peer_id")
    if peer_id is None or len(peer_id) != PEER_ID_SIZE:
        raise TrackerError(f"peer_id must be {PEER_ID_SIZE} bytes")
    port = _int_param(params, "port", None, 65535)
    if port == 0:
        raise TrackerError("port 0 is not a listening port")
    raw_event = params.get(b"event", b"")
    event: AnnounceEvent | None
    if raw_event == b"":
        event = None
    elif raw_event == b"started":
        event = "started"
    elif raw_event == b"completed":
        event = "completed"
    elif raw_event == b"stopped":
        event = "stopped"
    else:
        raise TrackerError("unknown event")
    ip: str | None = None
    raw_ip = params.get(b"ip")
    if raw_ip:
        ip = raw_ip.decode("latin-1")
    key = params.get(b"key")
    if key is not None and len(key) > 64:
        raise TrackerError("key is longer than 64 bytes")
    return AnnounceRequest(
        info_hash=info_hash,
        peer_id=peer_id,
        port=port,
        uploaded=_int_param(params, "uploaded", 0, MAX_COUNTER),
        downloaded=_int_param(params, "downloaded", 0, MAX_COUNTER),
        left=_int_param(params, "left", 0, MAX_COUNTER),
        event=event,
        numwant=_int_param(params, "numwant", DEFAULT_NUMWANT, 10**9),
        compact=_flag_param(params, "compact", True),
        no_peer_id=_flag_param(params, "no_peer_id", False),
        ip=ip,
        key=key,
    )


# -- addresses ------------------------------------------------------------------------


def normalize_ip(text: str) -> str | None:
    """The canonical text of an IP literal (IPv4-mapped IPv6 becomes IPv4), else ``None``."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def encode_compact_peers(peers: Iterable[Peer]) -> tuple[bytes, bytes]:
    """``(peers, peers6)``: 6-byte IPv4 and 18-byte IPv6 entries (address, big-endian port)."""
    v4 = bytearray()
    v6 = bytearray()
    for host, port in peers:
        address = ipaddress.ip_address(host)
        if isinstance(address, ipaddress.IPv4Address):
            v4 += address.packed + struct.pack(">H", port)
        else:
            v6 += address.packed + struct.pack(">H", port)
    return bytes(v4), bytes(v6)


def decode_compact_peers(data: bytes, *, ipv6: bool = False) -> list[Peer]:
    """Entries with port 0 are dropped; a length that is not a multiple raises."""
    size = 18 if ipv6 else 6
    if len(data) % size:
        raise TrackerError(
            f"compact peers{'6' if ipv6 else ''} length {len(data)} is not a multiple of {size}"
        )
    peers: list[Peer] = []
    for offset in range(0, len(data), size):
        raw = data[offset : offset + size - 2]
        (port,) = struct.unpack_from(">H", data, offset + size - 2)
        if port == 0:
            continue
        address = ipaddress.IPv6Address(raw) if ipv6 else ipaddress.IPv4Address(raw)
        peers.append((str(address), port))
    return peers


# -- replies --------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyPeer:
    ip: str
    port: int
    peer_id: bytes


@dataclass(frozen=True)
class AnnounceResult:
    """What a tracker answered.  ``peers`` may include the announcing peer itself (some
    trackers, e.g. opentracker, echo it); filter by your own address if it matters."""

    interval: int
    peers: list[Peer]
    min_interval: int | None = None
    complete: int | None = None
    incomplete: int | None = None
    warning: str | None = None
    tracker_id: bytes | None = None
    peer_ids: dict[Peer, bytes] = field(default_factory=dict)


def build_failure(reason: str) -> bytes:
    """A BEP 3 failure reply: ``d14:failure reason<len>:<reason>e``."""
    return bencoding.encode({b"failure reason": reason.encode()[:MAX_FAILURE_REASON]})


def build_announce_reply(
    *,
    interval: int,
    peers: Sequence[ReplyPeer],
    complete: int,
    incomplete: int,
    compact: bool = True,
    no_peer_id: bool = False,
    min_interval: int | None = None,
) -> bytes:
    reply: dict[bytes, bencoding.Value] = {
        b"interval": interval,
        b"complete": complete,
        b"incomplete": incomplete,
    }
    if min_interval is not None:
        reply[b"min interval"] = min_interval
    if compact:
        v4, v6 = encode_compact_peers((p.ip, p.port) for p in peers)
        reply[b"peers"] = v4
        if v6:
            reply[b"peers6"] = v6
    else:
        entries: list[bencoding.Value] = []
        for p in peers:
            entry: dict[bytes, bencoding.Value] = {b"ip": p.ip.encode(), b"port": p.port}
            if not no_peer_id:
                entry[b"peer id"] = p.peer_id
            entries.append(entry)
        reply[b"peers"] = entries
    return bencoding.encode(reply)


_REPLY_LIMITS = bencoding.DecodeLimits(max_depth=4, max_int_digits=20, max_items=200_000)


def _text(value: bencoding.Value, name: str, limit: int = MAX_FAILURE_REASON) -> str:
    if not isinstance(value, bytes):
        raise TrackerError(f"tracker reply: {name} is not a string")
    return value[:limit].decode("utf-8", "replace")


def _count(reply: dict[bytes, bencoding.Value], key: bytes) -> int | None:
    value = reply.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or value < 0:
        raise TrackerError(f"tracker reply: {key.decode()} is not a non-negative integer")
    return value


def _dict_peers(items: list[bencoding.Value], peer_ids: dict[Peer, bytes]) -> list[Peer]:
    peers: list[Peer] = []
    for item in items:
        if not isinstance(item, dict):
            raise TrackerError("tracker reply: a peer entry is not a dictionary")
        raw_ip, port, peer_id = item.get(b"ip"), item.get(b"port"), item.get(b"peer id")
        if not isinstance(raw_ip, bytes) or not isinstance(port, int):
            raise TrackerError("tracker reply: a peer entry lacks ip or port")
        # Only IP literals: a tracker must not make us resolve (or probe) names it chose.
        ip = normalize_ip(raw_ip.decode("ascii", "replace")) if len(raw_ip) <= 64 else None
        if ip is None or not 1 <= port <= 65535:
            continue
        peers.append((ip, port))
        if isinstance(peer_id, bytes) and len(peer_id) == PEER_ID_SIZE:
            peer_ids[(ip, port)] = peer_id
    return peers


def failure_reason(body: bytes) -> str | None:
    """The ``failure reason`` in ``body`` if it is a bencoded failure reply, else ``None``."""
    try:
        reply = bencoding.decode(body, _REPLY_LIMITS)
    except ManifestError:
        return None
    if isinstance(reply, dict) and isinstance(reply.get(b"failure reason"), bytes):
        return _text(reply[b"failure reason"], "failure reason")
    return None


def parse_announce_reply(body: bytes) -> AnnounceResult:
    """Decode a tracker's reply strictly; a ``failure reason`` raises :class:`TrackerError`."""
    try:
        reply = bencoding.decode(body, _REPLY_LIMITS)
    except ManifestError as problem:
        raise TrackerError(f"tracker reply is not valid bencode: {problem}") from None
    if not isinstance(reply, dict):
        raise TrackerError("tracker reply is not a dictionary")
    if b"failure reason" in reply:
        reason = _text(reply[b"failure reason"], "failure reason")
        raise TrackerError(f"tracker refused the announce: {reason}")
    interval = _count(reply, b"interval")
    if interval is None:
        raise TrackerError("tracker reply has no interval")
    interval = max(1, min(interval, MAX_REPLY_INTERVAL))
    min_interval = _count(reply, b"min interval")
    if min_interval is not None:
        min_interval = max(1, min(min_interval, MAX_REPLY_INTERVAL))
    peer_ids: dict[Peer, bytes] = {}
    raw_peers = reply.get(b"peers", b"")
    if isinstance(raw_peers, bytes):
        peers = decode_compact_peers(raw_peers)
    elif isinstance(raw_peers, list):
        peers = _dict_peers(raw_peers, peer_ids)
    else:
        raise TrackerError("tracker reply: peers is neither a string nor a list")
    raw_peers6 = reply.get(b"peers6")
    if raw_peers6 is not None:
        if not isinstance(raw_peers6, bytes):
            raise TrackerError("tracker reply: peers6 is not a string")
        peers += decode_compact_peers(raw_peers6, ipv6=True)
    warning = reply.get(b"warning message")
    tracker_id = reply.get(b"tracker id")
    return AnnounceResult(
        interval=interval,
        peers=list(dict.fromkeys(peers)),
        min_interval=min_interval,
        complete=_count(reply, b"complete"),
        incomplete=_count(reply, b"incomplete"),
        warning=None if warning is None else _text(warning, "warning message"),
        tracker_id=tracker_id if isinstance(tracker_id, bytes) else None,
        peer_ids=peer_ids,
    )


# -- the tracker's memory -------------------------------------------------------------


@dataclass(frozen=True)
class SwarmLimits:
    """Bounds on the tracker's memory; the oldest entry is evicted when one is reached."""

    max_torrents: int = 10_000
    max_peers_per_torrent: int = 2_000
    max_peers_total: int = 200_000
    max_numwant: int = MAX_NUMWANT


@dataclass
class _PeerEntry:
    peer_id: bytes
    seeder: bool
    last_seen: float


@dataclass
class _Torrent:
    # Keyed by (ip, port) and ordered by last announce: the first entry is the stalest.
    peers: OrderedDict[Peer, _PeerEntry] = field(default_factory=OrderedDict)
    seeders: int = 0
    completed: int = 0


@dataclass(frozen=True)
class SwarmReply:
    peers: list[ReplyPeer]
    complete: int
    incomplete: int


class SwarmTable:
    """Torrents and their peers, bounded and expiring; pure (``now`` is an argument).

    Peers are keyed by ``(ip, port)``, not by peer id: peer ids are public (non-compact
    replies carry them), so keying by them would let anyone stop or move someone else's
    entry.  A peer that has not announced for ``peer_ttl`` seconds (2 × interval) is gone.
    """

    def __init__(
        self,
        *,
        peer_ttl: float,
        limits: SwarmLimits = SwarmLimits(),
        rng: random.Random | None = None,
    ) -> None:
        self.peer_ttl = peer_ttl
        self.limits = limits
        self._rng = rng or random.Random()
        # Ordered by last announce: the first torrent is the one announced least recently.
        self._torrents: OrderedDict[bytes, _Torrent] = OrderedDict()
        self._total = 0

    # -- queries ----------------------------------------------------------------------

    @property
    def torrent_count(self) -> int:
        return len(self._torrents)

    @property
    def peer_count(self) -> int:
        return self._total

    def peers_of(self, info_hash: bytes) -> list[Peer]:
        torrent = self._torrents.get(info_hash)
        return list(torrent.peers) if torrent else []

    # -- updates ----------------------------------------------------------------------

    def announce(self, request: AnnounceRequest, ip: str, now: float) -> SwarmReply:
        """Record ``request`` from ``ip`` and choose up to ``numwant`` other peers.

        ``event=stopped`` removes the peer and returns no peers.  A seeder (``left=0``) is
        only sent leechers.  ``numwant`` is clamped to ``limits.max_numwant``.
        """
        self._expire_torrent(request.info_hash, now)
        key = (ip, request.port)
        torrent = self._torrents.get(request.info_hash)
        if request.event == "stopped":
            if torrent is not None:
                self._remove(request.info_hash, torrent, key)
                torrent = self._torrents.get(request.info_hash)
            return SwarmReply([], *self._counts(torrent))
        if torrent is None:
            torrent = _Torrent()
            self._torrents[request.info_hash] = torrent
        else:
            self._torrents.move_to_end(request.info_hash)
        seeder = request.left == 0
        entry = torrent.peers.get(key)
        if entry is None:
            torrent.peers[key] = _PeerEntry(request.peer_id, seeder, now)
            self._total += 1
            torrent.seeders += seeder
        else:
            torrent.seeders += seeder - entry.seeder
            entry.peer_id, entry.seeder, entry.last_seen = request.peer_id, seeder, now
            torrent.peers.move_to_end(key)
        if request.event == "completed":
            torrent.completed += 1
        self._enforce_limits(request.info_hash)
        wanted = min(request.numwant, self.limits.max_numwant)
        return SwarmReply(self._choose(torrent, key, seeder, wanted), *self._counts(torrent))

    def expire(self, now: float) -> int:
        """Drop every peer not seen for ``peer_ttl`` seconds; return how many.

        :meth:`announce` expires the announced torrent itself; call this periodically to
        sweep the others."""
        return sum(self._expire_torrent(info_hash, now) for info_hash in list(self._torrents))

    def _expire_torrent(self, info_hash: bytes, now: float) -> int:
        torrent = self._torrents.get(info_hash)
        if torrent is None:
            return 0
        cutoff = now - self.peer_ttl
        dropped = 0
        while torrent.peers:
            key, entry = next(iter(torrent.peers.items()))
            if entry.last_seen > cutoff:
                break
            self._remove(info_hash, torrent, key)
            dropped += 1
        return dropped

    # -- internals --------------------------------------------------------------------

    @staticmethod
    def _counts(torrent: _Torrent | None) -> tuple[int, int]:
        if torrent is None:
            return 0, 0
        return torrent.seeders, len(torrent.peers) - torrent.seeders

    def _remove(self, info_hash: bytes, torrent: _Torrent, key: Peer) -> None:
        entry = torrent.peers.pop(key, None)
        if entry is not None:
            self._total -= 1
            torrent.seeders -= entry.seeder
        if not torrent.peers:
            self._torrents.pop(info_hash, None)

    def _evict_oldest_peer(self, info_hash: bytes) -> None:
        torrent = self._torrents[info_hash]
        self._remove(info_hash, torrent, next(iter(torrent.peers)))

    def _enforce_limits(self, current: bytes) -> None:
        torrent = self._torrents[current]
        while len(torrent.peers) > self.limits.max_peers_per_torrent:
            self._evict_oldest_peer(current)
        while len(self._torrents) > self.limits.max_torrents:
            oldest = next(iter(self._torrents))
            self._total -= len(self._torrents.pop(oldest).peers)
        while self._total > self.limits.max_peers_total:
            # The least recently announced torrent gives up its stalest peer.
            self._evict_oldest_peer(next(iter(self._torrents)))

    def _choose(self, torrent: _Torrent, me: Peer, seeder: bool, wanted: int) -> list[ReplyPeer]:
        if wanted <= 0:
            return []
        candidates = [
            ReplyPeer(ip, port, entry.peer_id)
            for (ip, port), entry in torrent.peers.items()
            if (ip, port) != me and not (seeder and entry.seeder)
        ]
        if len(candidates) > wanted:
            candidates = self._rng.sample(candidates, wanted)
        return candidates
