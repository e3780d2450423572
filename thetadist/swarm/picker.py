"""The piece picker: which run of chunks to request from which peer, and when to give up.

Sans-I/O: nothing here reads a clock, a socket or a file.  Every method that needs the time
takes ``now`` (seconds on any monotonic clock); randomness comes from an injected
:class:`random.Random`, so a test replays a swarm exactly.

Units of work
    The picker is built from the *needed runs*: for each piece still missing, the maximal runs
    of consecutive chunks not available locally (:func:`split_runs`).  A piece with no local
    chunks is one run (a whole ~1 MiB request); a piece whose middle chunks were copied from an
    old version yields two runs.  A run is the unit of a REQUEST (docs/protocol.md §4) and never
    changes shape.  Each run is in exactly one state:

    * *pickable* — not done and requested from nobody;
    * *outstanding* — requested from one peer (from up to ``endgame_max_requesters`` peers in
      endgame);
    * *done* — received and verified (:meth:`PiecePicker.on_received`).

Order of picking (:meth:`PiecePicker.pick`), for one peer, among pieces that peer has:

    1. pieces with a deadline (:meth:`set_deadline`, streaming), earliest deadline first;
    2. *partial* pieces — some runs outstanding or done, some still pickable — so the number of
       incomplete pieces stays small (strict priority, oldest partial first);
    3. rarest first: the pieces with the fewest peers that have them, ties broken at random.
       Pieces with pickable runs live in availability buckets, so a pick from a peer that has
       most pieces costs O(1) expected; for a peer holding few pieces the picker scans that
       peer's own pieces instead (whichever is cheaper, see ``_pick_rarest``).
    4. endgame: once no run is pickable any more (every missing run is outstanding), a peer
       with free slots is given runs already outstanding elsewhere, at most
       ``endgame_max_requesters`` peers per run, fewest requesters and oldest request first.
       When one copy arrives, :meth:`on_received` returns the other requests to CANCEL.

Pipeline depth (:meth:`desired_outstanding`)::

    queue_time = max(min_queue_time, 2 × latency)
    desired    = clamp(ceil(rate × queue_time / run_bytes), min_outstanding, max_outstanding)

``rate`` is the peer's delivery rate over the last ``rate_window`` seconds measured over *busy
time* only (bytes ÷ seconds during which a request was waiting at the peer, so a peer we had
nothing to ask is not rated slow); ``latency`` is a moving average of the service time of
requests sent into an empty pipeline minus their transfer time at ``rate`` (round trip plus
the peer's disk and hashing); ``run_bytes`` is the mean size of this peer's recent runs;
``max_outstanding`` is what the peer advertised in its handshake.  Keeping rate × queue_time
bytes in flight keeps the pipe full; the factor 2 and the floor absorb event-loop jitter.
Before the first delivery the depth is ``initial_outstanding``.

Timeouts (:meth:`timeouts`)
    Peers serve requests in order, so the request at the head of a peer's queue is the one
    being served; its wait counts from when it was sent or from the peer's last delivery,
    whichever is later.  When that wait exceeds ::

        timeout = clamp(timeout_factor × head_run_bytes / rate, min_timeout, max_timeout)

    (``max_timeout`` while the rate is unknown) the peer is stalled and *all* its outstanding
    runs are taken back (pickable again, unless still outstanding elsewhere in endgame) and
    reported so the caller sends CANCEL.  Independently, any single request older than
    ``max_request_age`` is taken back, so a peer that ignores one request while answering the
    others cannot hold a run forever.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import deque
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from thetadist.wire.messages import DEFAULT_MAX_OUTSTANDING_REQUESTS, ChunkRun

if TYPE_CHECKING:
    from thetadist.manifest.model import Manifest

__all__ = [
    "NeededRun",
    "PeerRate",
    "PickerConfig",
    "PiecePicker",
    "RequestRun",
    "split_runs",
]

P = TypeVar("P", bound=Hashable)

#: What a REQUEST names: ``(piece, first_chunk, chunk_count)``, chunks relative to the piece.
RequestRun = ChunkRun
#: A needed run and its size in bytes.
NeededRun = tuple[ChunkRun, int]

_INF = math.inf


@dataclass(frozen=True)
class PickerConfig:
    """Tunables of :class:`PiecePicker`; the defaults suit ~1 MiB pieces on a LAN or WAN."""

    #: In endgame, how many peers may have the same run outstanding at once (≥ 1).
    endgame_max_requesters: int = 2
    #: Pipeline depth bounds and the depth used before a peer's rate is known.
    min_outstanding: int = 2
    initial_outstanding: int = 4
    #: Seconds of data to keep in flight, at least (see the module docstring).
    min_queue_time: float = 0.5
    #: Window of the delivery-rate estimate, seconds.
    rate_window: float = 10.0
    #: Stall timeout = clamp(timeout_factor × run time at the peer's rate, min, max).
    timeout_factor: float = 4.0
    min_timeout: float = 5.0
    max_timeout: float = 30.0
    #: Any single request older than this is taken back.
    max_request_age: float = 120.0

    def __post_init__(self) -> None:
        if self.endgame_max_requesters < 1:
            raise ValueError("endgame_max_requesters must be at least 1")
        if not 1 <= self.min_outstanding <= self.initial_outstanding:
            raise ValueError("need 1 <= min_outstanding <= initial_outstanding")
        if not 0 < self.min_timeout <= self.max_timeout <= self.max_request_age:
            raise ValueError("need 0 < min_timeout <= max_timeout <= max_request_age")
        if self.rate_window <= 0 or self.min_queue_time <= 0 or self.timeout_factor <= 0:
            raise ValueError("rate_window, min_queue_time and timeout_factor must be positive")


class PeerRate:
    """Delivery rate of one peer over a sliding window of *busy* time, plus a latency estimate.

    Each delivery is a sample ``(when, bytes, busy seconds)``: the busy seconds are the time the
    request spent at the head of the peer's queue.  ``rate = Σ bytes ÷ Σ busy`` over the samples
    of the last ``window`` seconds (the newest sample is always kept, so a peer that went quiet
    keeps its last known rate).  ``latency`` is an exponential moving average (α = 1/4).
    """

    __slots__ = ("_busy", "_bytes", "_samples", "latency", "total_bytes", "window")

    _MIN_BUSY = 1e-3
    _ALPHA = 0.25

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, int, float]] = deque()
        self._bytes = 0
        self._busy = 0.0
        self.total_bytes = 0
        self.latency: float | None = None

    def add(self, now: float, nbytes: int, busy: float) -> None:
        busy = max(busy, 0.0)
        self._samples.append((now, nbytes, busy))
        self._bytes += nbytes
        self._busy += busy
        self.total_bytes += nbytes
        self._expire(now)

    def observe_latency(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        if self.latency is None:
            self.latency = seconds
        else:
            self.latency += self._ALPHA * (seconds - self.latency)

    def _expire(self, now: float) -> None:
        samples = self._samples
        horizon = now - self.window
        while len(samples) > 1 and samples[0][0] < horizon:
            _, nbytes, busy = samples.popleft()
            self._bytes -= nbytes
            self._busy -= busy
        if len(samples) == 1:  # re-anchor the float sum
            self._busy = samples[0][2]

    def rate(self, now: float) -> float | None:
        """Bytes per second of busy time, or None before the first sample."""
        if not self._samples:
            return None
        self._expire(now)
        return self._bytes / max(self._busy, self._MIN_BUSY)

    def mean_sample_bytes(self) -> float | None:
        if not self._samples:
            return None
        return self._bytes / len(self._samples)


def split_runs(
    piece: int, needed_chunks: Iterable[int], chunk_sizes: Sequence[int]
) -> list[NeededRun]:
    """Cut the needed chunks of one piece (indices inside the piece) into maximal runs of
    consecutive chunks, each with its size in bytes."""
    runs: list[NeededRun] = []
    count = len(chunk_sizes)
    first = -1
    previous = -2
    size = 0
    for chunk in sorted(set(needed_chunks)):
        if not 0 <= chunk < count:
            raise ValueError(f"chunk {chunk} out of range for piece {piece} of {count} chunks")
        if chunk != previous + 1:
            if first >= 0:
                runs.append((ChunkRun(piece, first, previous - first + 1), size))
            first, size = chunk, 0
        size += chunk_sizes[chunk]
        previous = chunk
    if first >= 0:
        runs.append((ChunkRun(piece, first, previous - first + 1), size))
    return runs


class _Levels:
    """Pieces grouped by availability: ``buckets[a]`` holds the pieces that ``a`` peers have,
    in no order; ``where`` maps a piece to its index in its bucket (swap-remove, O(1))."""

    __slots__ = ("buckets", "where")

    def __init__(self) -> None:
        self.buckets: list[list[int]] = [[]]
        self.where: dict[int, int] = {}

    def add(self, piece: int, level: int) -> None:
        buckets = self.buckets
        while len(buckets) <= level:
            buckets.append([])
        bucket = buckets[level]
        self.where[piece] = len(bucket)
        bucket.append(piece)

    def remove(self, piece: int, level: int) -> None:
        bucket = self.buckets[level]
        index = self.where.pop(piece)
        last = bucket.pop()
        if last != piece:
            bucket[index] = last
            self.where[last] = index

    def rarest(self, rng: random.Random) -> int | None:
        """A random piece among those with the lowest availability ≥ 1."""
        buckets = self.buckets
        for level in range(1, len(buckets)):
            bucket = buckets[level]
            if bucket:
                return bucket[rng.randrange(len(bucket))] if len(bucket) > 1 else bucket[0]
        return None


class _Peer:
    __slots__ = (
        "bits",
        "have_count",
        "last_progress",
        "levels",
        "max_outstanding",
        "outstanding",
        "rate",
        "stalls",
    )

    def __init__(self, piece_count: int, max_outstanding: int, window: float) -> None:
        self.bits = bytearray(piece_count)
        self.have_count = 0
        #: the open pieces this peer has, by availability; None for a peer that has every
        #: piece (a seed), which picks from the picker's global levels instead
        self.levels: _Levels | None = _Levels()
        self.max_outstanding = max_outstanding
        #: run id -> (time sent, sent into an empty pipeline); insertion order = send order
        self.outstanding: dict[int, tuple[float, bool]] = {}
        self.last_progress = -_INF
        self.rate = PeerRate(window)
        self.stalls = 0


class PiecePicker(Generic[P]):
    """Rarest-first / deadline / endgame piece picker (see the module docstring).

    ``P`` is the type of peer ids (any hashable, e.g. the 20-byte wire peer id).
    """

    def __init__(
        self,
        piece_count: int,
        runs: Iterable[NeededRun],
        *,
        rng: random.Random | None = None,
        config: PickerConfig | None = None,
    ) -> None:
        if piece_count < 0:
            raise ValueError("piece_count must be >= 0")
        self.piece_count = piece_count
        self.config = config or PickerConfig()
        self._rng = rng or random.Random()
        self._runs: list[ChunkRun] = []
        self._run_size: list[int] = []
        self._run_ids: dict[ChunkRun, int] = {}
        piece_runs: dict[int, list[int]] = {}
        for run, size in runs:
            piece, first, count = run
            if not 0 <= piece < piece_count:
                raise ValueError(f"piece {piece} out of range for {piece_count} pieces")
            if first < 0 or count < 1 or size < 0:
                raise ValueError(f"bad run {run} of {size} bytes")
            run = ChunkRun(piece, first, count)
            if run in self._run_ids:
                raise ValueError(f"run {run} given twice")
            self._run_ids[run] = len(self._runs)
            piece_runs.setdefault(piece, []).append(len(self._runs))
            self._runs.append(run)
            self._run_size.append(size)
        for ids in piece_runs.values():
            ids.sort(key=lambda rid: self._runs[rid].first_chunk)
            for a, b in itertools.pairwise(ids):
                ra, rb = self._runs[a], self._runs[b]
                if ra.first_chunk + ra.chunk_count > rb.first_chunk:
                    raise ValueError(f"runs {ra} and {rb} overlap")
        self._piece_runs: dict[int, tuple[int, ...]] = {p: tuple(v) for p, v in piece_runs.items()}
        self._done = bytearray(len(self._runs))
        self._remaining = len(self._runs)
        self._mean_run_bytes = (sum(self._run_size) / len(self._runs)) if self._runs else 1.0
        #: per piece: pickable runs (0 for pieces with no needed run)
        self._n_pickable = [0] * piece_count
        for piece, piece_ids in self._piece_runs.items():
            self._n_pickable[piece] = len(piece_ids)
        self._pickable_total = len(self._runs)
        #: run id -> peers it is outstanding at (present iff outstanding)
        self._requesters: dict[int, list[P]] = {}
        #: availability buckets of the *open* pieces (those with a pickable run)
        self._avail = [0] * piece_count
        self._levels = _Levels()
        for piece in self._piece_runs:
            self._levels.add(piece, 0)
        #: peers that are not seeds: each keeps its own levels, updated with the global ones
        self._partial_peers: dict[P, _Peer] = {}
        #: open pieces with a run outstanding or done (insertion ordered set)
        self._partial: dict[int, None] = {}
        self._deadlines: dict[int, float] = {}
        self._deadline_order: list[tuple[float, int]] | None = []
        self._peers: dict[P, _Peer] = {}

    @classmethod
    def from_manifest(
        cls,
        manifest: Manifest,
        needed: Mapping[int, Iterable[int] | None] | Iterable[int],
        *,
        rng: random.Random | None = None,
        config: PickerConfig | None = None,
    ) -> PiecePicker[P]:
        """Build from a manifest and the chunks still needed: either a mapping ``piece ->
        needed chunk indices inside the piece`` (``None`` = all of them) or an iterable of
        pieces needed whole."""
        pieces = manifest.pieces
        sizes = manifest.chunk_sizes
        items: Iterable[tuple[int, Iterable[int] | None]]
        if isinstance(needed, Mapping):
            items = needed.items()
        else:
            items = ((piece, None) for piece in needed)
        runs: list[NeededRun] = []
        for index, chunks in items:
            if not 0 <= index < len(pieces):
                raise ValueError(f"piece {index} out of range")
            piece = pieces[index]
            if chunks is None:
                runs.append((ChunkRun(index, 0, piece.chunk_count), piece.size))
            else:
                piece_sizes = sizes[piece.first_chunk : piece.first_chunk + piece.chunk_count]
                runs.extend(split_runs(index, chunks, piece_sizes))
        return cls(len(pieces), runs, rng=rng, config=config)

    # ------------------------------------------------------------------ inspection

    @property
    def complete(self) -> bool:
        """Every needed run has been received."""
        return self._remaining == 0

    @property
    def endgame(self) -> bool:
        """No run is pickable, yet some are not done: duplicates are allowed."""
        return self._pickable_total == 0 and self._remaining > 0

    @property
    def remaining_runs(self) -> int:
        return self._remaining

    @property
    def pickable_runs(self) -> int:
        return self._pickable_total

    @property
    def peers(self) -> list[P]:
        return list(self._peers)

    def needed_runs(self) -> Iterator[ChunkRun]:
        """Runs not yet received."""
        for rid, run in enumerate(self._runs):
            if not self._done[rid]:
                yield run

    def run_size(self, run: ChunkRun) -> int:
        return self._run_size[self._rid(run)]

    def is_done(self, run: ChunkRun) -> bool:
        return bool(self._done[self._rid(run)])

    def is_pickable(self, run: ChunkRun) -> bool:
        rid = self._rid(run)
        return not self._done[rid] and rid not in self._requesters

    def requesters(self, run: ChunkRun) -> tuple[P, ...]:
        """Peers the run is outstanding at."""
        return tuple(self._requesters.get(self._rid(run), ()))

    def outstanding(self, peer_id: P) -> list[ChunkRun]:
        """Runs outstanding at a peer, oldest first."""
        return [self._runs[rid] for rid in self._peer(peer_id).outstanding]

    def availability(self, piece: int) -> int:
        return self._avail[piece]

    def peer_has_piece(self, peer_id: P, piece: int) -> bool:
        return bool(self._peer(peer_id).bits[piece])

    def is_interesting(self, peer_id: P) -> bool:
        """The peer has a piece with a pickable run (or, in endgame, an outstanding one)."""
        peer = self._peer(peer_id)
        if self._interesting(peer):
            return True
        if self.endgame:
            return any(peer.bits[self._runs[rid].piece] for rid in self._requesters)
        return False

    # ------------------------------------------------------------------ peers

    def peer_joined(
        self,
        peer_id: P,
        pieces: Iterable[int] = (),
        *,
        max_outstanding: int = DEFAULT_MAX_OUTSTANDING_REQUESTS,
    ) -> None:
        """A peer finished its handshake; ``pieces`` is its bitfield, ``max_outstanding`` the
        ``max_outstanding_requests`` it advertised (0: never request from it)."""
        if peer_id in self._peers:
            raise ValueError(f"peer {peer_id!r} already joined")
        if max_outstanding < 0:
            raise ValueError("max_outstanding must be >= 0")
        peer = _Peer(self.piece_count, max_outstanding, self.config.rate_window)
        self._peers[peer_id] = peer
        wanted = pieces if isinstance(pieces, range | set | frozenset) else set(pieces)
        if self.piece_count and len(wanted) == self.piece_count:  # a seed: no own levels
            for piece in wanted:
                if not 0 <= piece < self.piece_count:
                    raise ValueError(f"piece {piece} out of range")
            peer.levels = None
            peer.bits[:] = b"\x01" * self.piece_count
            peer.have_count = self.piece_count
            levels, avail = self._levels, self._avail
            for piece in range(self.piece_count):
                if piece in levels.where:
                    levels.remove(piece, avail[piece])
                    avail[piece] += 1
                    levels.add(piece, avail[piece])
                else:
                    avail[piece] += 1
            self._refresh_partial_peers(peer_id, peer)
            return
        self._partial_peers[peer_id] = peer
        for piece in wanted:
            self.peer_has(peer_id, piece)

    def peer_has(self, peer_id: P, piece: int) -> bool:
        """The peer announced a piece (HAVE).  Returns True when it has a run we can pick."""
        peer = self._peer(peer_id)
        if not 0 <= piece < self.piece_count:
            raise ValueError(f"piece {piece} out of range for {self.piece_count} pieces")
        if peer.bits[piece]:
            return False
        open_ = self._n_pickable[piece] > 0
        if open_:
            self._levels_remove(piece)
        peer.bits[piece] = 1
        peer.have_count += 1
        self._avail[piece] += 1
        if open_:
            self._levels_add(piece)
        if peer.levels is not None and peer.have_count == self.piece_count:
            peer.levels = None  # became a seed
            del self._partial_peers[peer_id]
        return open_

    def _refresh_partial_peers(self, peer_id: P, peer: _Peer) -> None:
        # Other partial peers' levels track availability: the seed's join moved every open
        # piece one level up in them too.
        for other in self._partial_peers.values():
            levels = other.levels
            assert levels is not None
            moved = [(piece, self._avail[piece]) for piece in levels.where]
            for piece, level in moved:
                levels.remove(piece, level - 1)
                levels.add(piece, level)

    def peer_lacks(self, peer_id: P, piece: int) -> None:
        """Forget that the peer has a piece (it answered REJECT NOT_AVAILABLE)."""
        peer = self._peer(peer_id)
        if not 0 <= piece < self.piece_count or not peer.bits[piece]:
            return
        if peer.levels is None:  # a seed no more: build its own levels
            levels = _Levels()
            for level, bucket in enumerate(self._levels.buckets):
                for open_piece in bucket:
                    levels.add(open_piece, level)
            peer.levels = levels
            self._partial_peers[peer_id] = peer
        self._forget_piece(peer, piece)

    def _forget_piece(self, peer: _Peer, piece: int) -> None:
        open_ = self._n_pickable[piece] > 0
        if open_:
            self._levels_remove(piece)
        peer.bits[piece] = 0
        peer.have_count -= 1
        self._avail[piece] -= 1
        if open_:
            self._levels_add(piece)

    def peer_left(self, peer_id: P) -> list[ChunkRun]:
        """The peer disconnected (or was banned).  Its outstanding runs become pickable again
        (unless still outstanding elsewhere in endgame); they are returned."""
        peer = self._peers.get(peer_id)
        if peer is None:
            return []
        released = [self._runs[rid] for rid in peer.outstanding]
        for rid in list(peer.outstanding):
            del peer.outstanding[rid]
            self._unassign(rid, peer_id)
        # Stop maintaining its own levels first: forgetting its pieces then costs O(peers) each.
        self._partial_peers.pop(peer_id, None)
        peer.levels = None
        bits = peer.bits
        piece = bits.find(1)
        while piece >= 0:
            self._forget_piece(peer, piece)
            piece = bits.find(1, piece + 1)
        del self._peers[peer_id]
        return released

    # ------------------------------------------------------------------ deadlines

    def set_deadline(self, piece: int, deadline: float) -> None:
        """Pick this piece before any piece without a deadline, in deadline order (streaming:
        the pieces just ahead of the playback position).  Ignored for pieces not needed."""
        if piece not in self._piece_runs or self._piece_done(piece):
            return
        self._deadlines[piece] = deadline
        self._deadline_order = None

    def clear_deadline(self, piece: int) -> None:
        if self._deadlines.pop(piece, None) is not None:
            self._deadline_order = None

    def clear_deadlines(self) -> None:
        """Forget every deadline (a seek, or the buffer is healthy: back to rarest-first)."""
        self._deadlines.clear()
        self._deadline_order = []

    # ------------------------------------------------------------------ picking

    def desired_outstanding(self, peer_id: P, now: float) -> int:
        """Pipeline depth for this peer (formula in the module docstring)."""
        peer = self._peer(peer_id)
        cfg = self.config
        ceiling = peer.max_outstanding
        rate = peer.rate.rate(now)
        if rate is None:
            depth = cfg.initial_outstanding
        else:
            latency = peer.rate.latency or 0.0
            queue_time = max(cfg.min_queue_time, 2.0 * latency)
            run_bytes = peer.rate.mean_sample_bytes() or self._mean_run_bytes
            depth = math.ceil(rate * queue_time / max(run_bytes, 1.0))
        return min(max(depth, cfg.min_outstanding), ceiling)

    def pick(self, peer_id: P, now: float, max_requests: int | None = None) -> list[ChunkRun]:
        """Choose up to ``max_requests`` runs to request from the peer now, and record them as
        outstanding there.  ``None`` fills the pipeline up to :meth:`desired_outstanding`."""
        peer = self._peer(peer_id)
        if max_requests is None:
            max_requests = self.desired_outstanding(peer_id, now) - len(peer.outstanding)
        max_requests = min(max_requests, peer.max_outstanding - len(peer.outstanding))
        picked: list[ChunkRun] = []
        while len(picked) < max_requests:
            if self._pickable_total == 0:
                if self._remaining:
                    picked += self._pick_endgame(peer_id, peer, max_requests - len(picked), now)
                break
            rid = self._pick_one(peer)
            if rid is None:
                break
            self._assign(rid, peer_id, peer, now)
            picked.append(self._runs[rid])
        return picked

    def _pick_one(self, peer: _Peer) -> int | None:
        bits = peer.bits
        n_pickable = self._n_pickable
        if self._deadlines:
            if self._deadline_order is None:
                self._deadline_order = sorted((d, p) for p, d in self._deadlines.items())
            for _, piece in self._deadline_order:
                if n_pickable[piece] and bits[piece]:
                    return self._pickable_run(piece)
        for piece in self._partial:
            if bits[piece]:
                return self._pickable_run(piece)
        rarest = self._pick_rarest(peer)
        return None if rarest is None else self._pickable_run(rarest)

    def _pick_rarest(self, peer: _Peer) -> int | None:
        levels = self._levels if peer.levels is None else peer.levels
        return levels.rarest(self._rng)

    def _interesting(self, peer: _Peer) -> int:
        """How many open pieces the peer has."""
        if peer.levels is None:
            return len(self._levels.where) - len(self._levels.buckets[0])
        return len(peer.levels.where)

    def _pick_endgame(self, peer_id: P, peer: _Peer, count: int, now: float) -> list[ChunkRun]:
        limit = self.config.endgame_max_requesters
        bits = peer.bits
        deadlines = self._deadlines
        candidates: list[tuple[float, int, float, int]] = []
        for rid, requesters in self._requesters.items():
            if len(requesters) >= limit or peer_id in requesters:
                continue
            piece = self._runs[rid].piece
            if not bits[piece]:
                continue
            first_sent = self._peers[requesters[0]].outstanding[rid][0]
            candidates.append((deadlines.get(piece, _INF), len(requesters), first_sent, rid))
        candidates.sort()
        picked: list[ChunkRun] = []
        for *_, rid in candidates[:count]:
            self._assign(rid, peer_id, peer, now)
            picked.append(self._runs[rid])
        return picked

    # ------------------------------------------------------------------ answers

    def on_received(
        self, peer_id: P, run: ChunkRun, now: float, size: int | None = None
    ) -> list[tuple[P, ChunkRun]]:
        """A run arrived from the peer and verified.  Returns the duplicate requests of the
        same run at other peers (endgame, or a late answer to a timed-out request), which the
        caller should CANCEL; the picker already forgets them.  A late or duplicate copy of a
        run already done is accepted and returns no cancels."""
        rid = self._rid(run)
        peer = self._peers.get(peer_id)
        if peer is not None:
            entry = peer.outstanding.pop(rid, None)
            if entry is not None:
                sent, into_idle = entry
                nbytes = self._run_size[rid] if size is None else size
                busy = now - max(sent, peer.last_progress)
                rate = peer.rate
                if into_idle:
                    known = rate.rate(now)
                    transfer = nbytes / known if known else 0.0
                    rate.observe_latency(busy - transfer)
                rate.add(now, nbytes, busy)
            peer.last_progress = now
        if self._done[rid]:
            return []
        cancels: list[tuple[P, ChunkRun]] = []
        requesters = self._requesters.pop(rid, None)
        piece = run.piece
        if requesters is None:
            self._take_pickable(piece)  # a late answer after a timeout released it
        else:
            for other in requesters:
                if other != peer_id:
                    self._peers[other].outstanding.pop(rid, None)
                    cancels.append((other, self._runs[rid]))
        self._done[rid] = 1
        self._remaining -= 1
        if self._piece_done(piece):
            self._partial.pop(piece, None)
            self.clear_deadline(piece)
        else:
            self._refresh_partial(piece)
        return cancels

    def on_rejected(
        self, peer_id: P, run: ChunkRun, now: float, *, peer_lacks_piece: bool = False
    ) -> None:
        """The peer answered REJECT.  The run is pickable again (unless outstanding elsewhere).
        Pass ``peer_lacks_piece=True`` for NOT_AVAILABLE so the piece is not asked of it again;
        BUSY / PAYMENT_REQUIRED back-off is the caller's business."""
        self._take_back(peer_id, run, now)
        if peer_lacks_piece and peer_id in self._peers:
            self.peer_lacks(peer_id, run.piece)

    def on_failed(self, peer_id: P, run: ChunkRun, now: float) -> None:
        """The run's data failed its hash.  The run is pickable again; banning the peer (and
        calling :meth:`peer_left`) is the caller's business."""
        self._take_back(peer_id, run, now)

    def cancel(self, peer_id: P, run: ChunkRun) -> None:
        """Take back a request the caller decided to CANCEL on its own (a seek, say)."""
        peer = self._peer(peer_id)
        rid = self._rid(run)
        if peer.outstanding.pop(rid, None) is not None:
            self._unassign(rid, peer_id)

    def _take_back(self, peer_id: P, run: ChunkRun, now: float) -> None:
        rid = self._rid(run)
        peer = self._peers.get(peer_id)
        if peer is None or peer.outstanding.pop(rid, None) is None:
            return
        peer.last_progress = now
        self._unassign(rid, peer_id)

    # ------------------------------------------------------------------ timeouts

    def request_timeout(self, peer_id: P, now: float, run_bytes: int | None = None) -> float:
        """How long the head of this peer's queue may wait (formula in the module docstring)."""
        peer = self._peer(peer_id)
        cfg = self.config
        rate = peer.rate.rate(now)
        if not rate:
            return cfg.max_timeout
        nbytes = self._mean_run_bytes if run_bytes is None else run_bytes
        return min(max(cfg.timeout_factor * nbytes / rate, cfg.min_timeout), cfg.max_timeout)

    def timeouts(self, now: float) -> list[tuple[P, ChunkRun]]:
        """Take back the requests of stalled peers (see the module docstring) and return them,
        so the caller sends CANCEL.  The runs are pickable again."""
        expired: list[tuple[P, ChunkRun]] = []
        max_age = self.config.max_request_age
        for peer_id, peer in self._peers.items():
            outstanding = peer.outstanding
            if not outstanding:
                continue
            head = next(iter(outstanding))
            sent = outstanding[head][0]
            wait = now - max(sent, peer.last_progress)
            if wait > self.request_timeout(peer_id, now, self._run_size[head]):
                victims = list(outstanding)
                peer.stalls += 1
            else:
                victims = []
                for rid, (sent, _) in outstanding.items():
                    if now - sent <= max_age:
                        break
                    victims.append(rid)
            for rid in victims:
                del outstanding[rid]
                self._unassign(rid, peer_id)
                expired.append((peer_id, self._runs[rid]))
        return expired

    def stalls(self, peer_id: P) -> int:
        """How many times this peer's queue timed out."""
        return self._peer(peer_id).stalls

    # ------------------------------------------------------------------ internals

    def _peer(self, peer_id: P) -> _Peer:
        try:
            return self._peers[peer_id]
        except KeyError:
            raise KeyError(f"unknown peer {peer_id!r}: call peer_joined first") from None

    def _rid(self, run: ChunkRun) -> int:
        try:
            return self._run_ids[run]
        except KeyError:
            raise ValueError(f"{run} is not a run this picker was built with") from None

    def _piece_done(self, piece: int) -> bool:
        return all(self._done[rid] for rid in self._piece_runs[piece])

    def _pickable_run(self, piece: int) -> int:
        requesters = self._requesters
        done = self._done
        for rid in self._piece_runs[piece]:
            if not done[rid] and rid not in requesters:
                return rid
        raise AssertionError(f"piece {piece} has no pickable run")  # pragma: no cover

    def _assign(self, rid: int, peer_id: P, peer: _Peer, now: float) -> None:
        requesters = self._requesters.get(rid)
        if requesters is None:
            self._requesters[rid] = [peer_id]
            self._take_pickable(self._runs[rid].piece)
        else:
            requesters.append(peer_id)
        peer.outstanding[rid] = (now, not peer.outstanding)

    def _unassign(self, rid: int, peer_id: P) -> None:
        """``peer_id`` no longer has ``rid`` outstanding (already removed from its dict)."""
        requesters = self._requesters.get(rid)
        if requesters is None:
            return
        requesters.remove(peer_id)
        if not requesters:
            del self._requesters[rid]
            if not self._done[rid]:
                self._give_pickable(self._runs[rid].piece)

    def _take_pickable(self, piece: int) -> None:
        self._n_pickable[piece] -= 1
        self._pickable_total -= 1
        if self._n_pickable[piece] == 0:
            self._levels_remove(piece)
            self._partial.pop(piece, None)
        else:
            self._refresh_partial(piece)

    def _give_pickable(self, piece: int) -> None:
        self._n_pickable[piece] += 1
        self._pickable_total += 1
        if self._n_pickable[piece] == 1:
            self._levels_add(piece)
        self._refresh_partial(piece)

    def _refresh_partial(self, piece: int) -> None:
        pickable = self._n_pickable[piece]
        if 0 < pickable < len(self._piece_runs[piece]):
            self._partial.setdefault(piece, None)
        else:
            self._partial.pop(piece, None)

    def _levels_add(self, piece: int) -> None:
        """Enter an open piece at its availability in the global levels and in the levels of
        every partial peer that has it: O(peers)."""
        level = self._avail[piece]
        self._levels.add(piece, level)
        for peer in self._partial_peers.values():
            if peer.bits[piece]:
                assert peer.levels is not None
                peer.levels.add(piece, level)

    def _levels_remove(self, piece: int) -> None:
        level = self._avail[piece]
        self._levels.remove(piece, level)
        for peer in self._partial_peers.values():
            if peer.bits[piece]:
                assert peer.levels is not None
                peer.levels.remove(piece, level)

    def check_invariants(self) -> None:
        """Assert the internal indexes agree with each other (for tests; O(pieces × peers))."""
        requesters = self._requesters
        pickable_total = 0
        for piece, rids in self._piece_runs.items():
            pickable = sum(1 for r in rids if not self._done[r] and r not in requesters)
            assert self._n_pickable[piece] == pickable, piece
            pickable_total += pickable
            partial = 0 < pickable < len(rids)
            assert (piece in self._partial) == partial, piece
        assert self._pickable_total == pickable_total
        assert self._remaining == len(self._runs) - sum(self._done)
        for piece in range(self.piece_count):
            assert self._avail[piece] == sum(p.bits[piece] for p in self._peers.values())
        expected = {p: self._avail[p] for p in self._piece_runs if self._n_pickable[p]}
        assert {p: level for level, b in enumerate(self._levels.buckets) for p in b} == expected
        for peer_id, peer in self._peers.items():
            assert peer.have_count == sum(peer.bits)
            assert (peer.levels is None) == (peer_id not in self._partial_peers)
            if peer.levels is None:
                assert peer.have_count == self.piece_count
            else:
                own = {p: lv for lv, b in enumerate(peer.levels.buckets) for p in b}
                assert own == {p: lv for p, lv in expected.items() if peer.bits[p]}
                assert all(
                    peer.levels.where[p] == b.index(p) for b in peer.levels.buckets for p in b
                )
            for rid in peer.outstanding:
                assert peer_id in requesters[rid]
        for rid, holders in requesters.items():
            assert holders and not self._done[rid]
            assert len(set(holders)) == len(holders)
            for holder in holders:
                assert rid in self._peers[holder].outstanding
