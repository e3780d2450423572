"""The Trio shell of the swarm: sockets, timers and tasks around the sans-I/O cores.

``PeerConnection`` (thetadist.wire) decides what is legal on one connection, ``PiecePicker``
(thetadist.swarm) decides what to ask whom for, the store verifies and writes.  This module
only moves bytes and time between them:

* one :class:`PeerSession` per TCP connection, in its own nursery: a reader (frames in,
  events dispatched), a writer (the only task that writes to the socket, draining an outbox),
  an uploader (reads requested pieces, verified, and queues them under the upload cap) and
  a keep-alive timer;
* one :class:`Swarm` holding the sessions, the listener, the dialers, the tracker announce
  loops and a ticker that expires stalled requests and reports progress.

Every network wait has a timeout; a peer that breaks the protocol, stalls or sends a corrupt
piece is dropped with a reason (and banned for this swarm if the data was corrupt); the
process itself never crashes on a peer's behalf.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from thetadist.errors import (
    IntegrityError,
    InvalidTicket,
    PeerTimeout,
    RemoteProtocolError,
    StoreError,
    ThetadistError,
    TrackerError,
)
from thetadist.events import (
    EventCallback,
    Listening,
    PaymentDeclined,
    PaymentRefused,
    PeerBanned,
    PeerConnected,
    PeerDisconnected,
    PieceServeFailed,
    SwarmProgress,
    TrackerAnnounced,
    TrackerFailed,
    ignore_event,
)
from thetadist.manifest.model import Manifest
from thetadist.net.payments import PayeeLink, PayerLink, Payments, PaymentStopped
from thetadist.net.source import PieceSource
from thetadist.store import PieceStore
from thetadist.swarm.picker import PiecePicker
from thetadist.swarm.ratelimit import TokenBucket
from thetadist.tracker.client import announce, tracker_client
from thetadist.tracker.protocol import AnnounceEvent, AnnounceResult
from thetadist.wire import (
    NEED_DATA,
    Bitfield,
    Cancel,
    Capability,
    ChunkRun,
    ConnectionClosed,
    Goodbye,
    Handshake,
    Have,
    KeepAlive,
    Message,
    PayloadPool,
    PeerConnection,
    Piece,
    Reject,
    RejectReason,
    Request,
    State,
    Voucher,
    piece_frame_size,
)

if TYPE_CHECKING:
    import httpx

RECEIVE_SIZE = 256 * 1024
#: How long a HAVE may wait for others to go out with it.  One frame per stored piece per
#: peer cost 1 -> 8 fetchers 1.5-2 s of CPU between them (a write and a peer's wake-up each).
HAVE_DELAY = 0.05
#: Until the peer's handshake is in, a stranger gets a small buffer (floods cost little).
HANDSHAKE_RECEIVE_SIZE = 4 * 1024
HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 120.0
KEEPALIVE_INTERVAL = 30.0
SEND_TIMEOUT = 60.0
#: How long a closing session may take to send what it had queued.
FLUSH_TIMEOUT = 0.5
CONNECT_TIMEOUT = 10.0
REDIAL_INTERVAL = 5.0
TICK = 0.25
#: Pieces a peer may have waiting to be hashed and written at once (memory bound).
STORING_PER_PEER = 4
#: Piece payload bytes an uploader may have queued ahead of the socket.
UPLOAD_AHEAD = 2
#: Stalls after which a peer is dropped rather than given more chances.
MAX_STALLS = 3

Address = tuple[str, int]


@dataclass
class SwarmConfig:
    listen: Address | None = None
    max_peers: int = 50
    max_upload_rate: int = 0
    max_download_rate: int = 0
    max_outstanding_requests: int = 64
    super_seed: bool = False


@dataclass
class Totals:
    downloaded: int = 0
    uploaded: int = 0
    downloaded_by_peer: dict[str, int] = field(default_factory=dict)
    uploaded_by_peer: dict[str, int] = field(default_factory=dict)
    #: Wei promised in vouchers we signed, and credited by vouchers we received.
    paid: int = 0
    received: int = 0


class _Dropped(Exception):
    """Ends a session on purpose, with the reason to log."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError | OSError):
        return "connection lost"
    if isinstance(exc, RemoteProtocolError):
        return f"protocol error: {exc}"
    if isinstance(exc, ThetadistError | _Dropped):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class PeerSession:
    """One connection to one peer."""

    def __init__(self, swarm: Swarm, stream: trio.SocketStream, address: str, outgoing: bool):
        self.swarm = swarm
        self.stream = stream
        self.address = address
        self.outgoing = outgoing
        self.label = address
        self.conn = PeerConnection(
            swarm.handshake,
            piece_count=len(swarm.manifest.pieces),
            piece_chunk_sizes=swarm.piece_chunk_sizes,
            payload_pool=swarm.payload_pool,
        )
        self.peer_id = b""
        self.listen_address: Address | None = None
        self.joined = False
        self.established = False
        self.downloaded = 0
        self.uploaded = 0
        self.their_pieces = bytearray(len(swarm.manifest.pieces))
        #: Pieces we answered BUSY (super-seeding) and must re-offer when that phase ends.
        self.busy_rejected: set[int] = set()
        self.sent_pieces = bytearray(len(swarm.manifest.pieces))
        self._outbox: deque[bytes | memoryview] = deque()
        self._outbox_ready = trio.Event()
        #: The writer is inside send_all: a cancelled send leaves a partial frame behind.
        self._mid_send = False
        self._queued_payloads = 0
        self._payload_sent = trio.Event()
        self._uploads: deque[ChunkRun] = deque()
        self._uploads_ready = trio.Event()
        #: Pieces to announce (HAVE), sent together a moment later or with the next message.
        self._haves: list[int] = []
        self._haves_ready = trio.Event()
        self._storing = trio.Semaphore(STORING_PER_PEER)
        #: Bytes a read may bring into the connection's receive area (a large PIECE payload
        #: is read straight into its own buffer instead).
        self._receive_size = HANDSHAKE_RECEIVE_SIZE
        self._last_sent = trio.current_time()
        self._nursery: trio.Nursery | None = None
        self._end_reason: str | None = None
        #: Charging this peer (we are its seeder and ask a price).
        self.payee_link: PayeeLink | None = None
        #: Paying this peer (it charges and we accepted its terms).
        self.payer_link: PayerLink | None = None
        #: Why we will not pay this peer: we request nothing from it.
        self.declined: str | None = None

    # ------------------------------------------------------------------ life cycle

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._guarded, self._main)
                nursery.start_soon(self._guarded, self._writer)
        finally:
            self._release_payment()
            self.swarm.session_ended(self, self._end_reason or "closed")
            with trio.CancelScope(shield=True), trio.move_on_after(FLUSH_TIMEOUT):
                if self.swarm.payments is not None:
                    await self.swarm.payments.settle()  # the last piece's voucher, say
                await self._flush()
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.stream.aclose()

    def end(self, reason: str) -> None:
        if self._end_reason is None:
            self._end_reason = reason
        # A replacement connection to the same payee may start paying at once.
        self._release_payment()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _release_payment(self) -> None:
        if self.payer_link is not None:
            self.payer_link.close()

    async def _flush(self) -> None:
        """Send what is queued (a voucher for the last piece, say) before closing, unless
        the writer was stopped halfway through a frame or the connection is gone."""
        if self._mid_send or not self._outbox:
            return
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            while self._outbox:
                await self.stream.send_all(self._outbox.popleft())

    def spawn(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run ``task`` beside the connection's own tasks; an error in it ends the session."""
        if self._nursery is not None:
            self._nursery.start_soon(self._guarded, task, False)

    async def _guarded(
        self, task: Callable[[], Awaitable[None]], ends_session: bool = True
    ) -> None:
        """Run one of the session's tasks: an error ends the session, and so does the task's
        return when ``ends_session`` (the reader, the writer, the uploader…)."""
        try:
            await task()
            if ends_session:
                self.end("closed")
        except Exception as exc:
            self.end(_describe(exc))

    async def _main(self) -> None:
        self.send(self.swarm.handshake)
        with trio.move_on_after(HANDSHAKE_TIMEOUT) as scope:
            first = await self._next_event(HANDSHAKE_TIMEOUT)
        if scope.cancelled_caught:
            raise PeerTimeout("no handshake")
        assert isinstance(first, Handshake)
        self.peer_id = first.peer_id
        host = self.address.rsplit(":", 1)[0]
        if first.listen_port:
            self.listen_address = (host, first.listen_port)
            self.label = f"{host}:{first.listen_port}"
        self.swarm.session_established(self)
        self.established = True
        self._set_up_payments(first)
        self._receive_size = RECEIVE_SIZE
        self.send(Bitfield(self.swarm.source.bitfield()))
        assert self._nursery is not None
        self._nursery.start_soon(self._guarded, self._uploader)
        self._nursery.start_soon(self._guarded, self._keepalive)
        self._nursery.start_soon(self._guarded, self._have_sender)
        while True:
            event = await self._next_event(IDLE_TIMEOUT)
            if isinstance(event, ConnectionClosed):
                return
            await self._handle(event)

    def _set_up_payments(self, their: Handshake) -> None:
        payments = self.swarm.payments
        if payments is None:
            return
        self.payee_link = payments.payee_link(self)
        try:
            self.payer_link = payments.payer_link(self, their, self.swarm.emit)
        except PaymentStopped as exc:
            self.declined = str(exc)
            self.swarm.emit(PaymentDeclined(self.label, self.declined))

    async def _next_event(self, timeout: float) -> object:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is not NEED_DATA:
                return event
            # recv_into where the connection wants the bytes: the rest of a large PIECE
            # payload's own buffer, else its receive area (no copy, no allocation per read).
            with trio.move_on_after(timeout) as scope:
                received = await self.stream.socket.recv_into(
                    conn.receive_buffer(self._receive_size)
                )
            if scope.cancelled_caught:
                raise PeerTimeout(f"peer silent for {timeout:.0f} s")
            conn.received(received)
            if received:
                delay = self.swarm.download_bucket.reserve(received, trio.current_time())
                if delay > 0:
                    await trio.sleep(delay)

    # ------------------------------------------------------------------ incoming

    async def _handle(self, event: object) -> None:
        swarm = self.swarm
        if not self.joined and not isinstance(event, Bitfield):
            self._join(())
        match event:
            case Bitfield():
                pieces = list(event.pieces())
                self._join(pieces)
            case Have(piece=piece):
                self.their_pieces[piece] = 1
                swarm.on_have(self, piece)
            case Request():
                swarm.on_request(self, event.run)
            case Cancel():
                run = event.run
                if run in self._uploads:
                    self._uploads.remove(run)
                    self.send(Reject(*run, RejectReason.CANCELLED))
            case Piece():
                await self._storing.acquire()
                assert self._nursery is not None
                self._nursery.start_soon(self._store, event)
            case Reject():
                swarm.on_reject(self, event)
            case Voucher(payload=payload):
                self._on_voucher(payload)
            case Goodbye(reason=reason, text=text):
                raise _Dropped(f"peer said goodbye ({reason}: {text})")

    def _on_voucher(self, payload: bytes) -> None:
        if self.payee_link is None:
            return  # we charge nothing; a voucher is the peer's gift to nobody
        try:
            self.payee_link.on_voucher(payload)
        except InvalidTicket as exc:
            self.swarm.emit(PaymentRefused(self.label, f"bad voucher: {exc}"))
            raise _Dropped(f"bad voucher: {exc}") from None

    def _join(self, pieces: Sequence[int]) -> None:
        for piece in pieces:
            self.their_pieces[piece] = 1
        self.joined = True
        self.swarm.on_joined(self, pieces)

    async def _store(self, piece: Piece) -> None:
        try:
            await self.swarm.on_piece(self, piece)
        except _Dropped as exc:
            self.end(str(exc))
        finally:
            self._storing.release()
        if isinstance(piece.data, bytearray):
            # stored (or refused) and referenced nowhere else: refill it for a later piece
            self.swarm.payload_pool.give_back(piece.data)

    # ------------------------------------------------------------------ outgoing

    def send(self, message: Message) -> None:
        """Encode ``message`` now (so the connection's state moves at once) and queue it,
        with any HAVE waiting to go.  Once we said GOODBYE nothing more goes out (another
        task may still ask, e.g. to CANCEL a duplicate request): the session is ending."""
        if self._said_goodbye():
            return
        self._outbox.append(self.conn.send(message))
        if self._haves and not self._said_goodbye():
            self._send_haves()
        self._outbox_ready.set()

    def _said_goodbye(self) -> bool:
        return self.conn.our_state is State.CLOSED

    def announce(self, piece: int) -> None:
        """Tell the peer we have ``piece``, within HAVE_DELAY: HAVEs for pieces stored close
        together go out in one write, and the peer reads them in one wake-up."""
        self._haves.append(piece)
        self._haves_ready.set()

    def _send_haves(self) -> None:
        haves, self._haves = self._haves, []
        for piece in haves:
            self._outbox.append(self.conn.send(Have(piece)))

    async def _have_sender(self) -> None:
        while True:
            if not self._haves:
                self._haves_ready = trio.Event()
                await self._haves_ready.wait()
            await trio.sleep(HAVE_DELAY)
            # a message sent meanwhile may have taken them along, or said GOODBYE
            if self._haves and not self._said_goodbye():
                self._send_haves()
                self._outbox_ready.set()
            self._haves.clear()

    def queue_upload(self, run: ChunkRun) -> None:
        self._uploads.append(run)
        self._uploads_ready.set()

    async def _writer(self) -> None:
        outbox = self._outbox
        stream = self.stream
        while True:
            if not outbox:
                self._outbox_ready = trio.Event()
                await self._outbox_ready.wait()
            # Small frames go out together in one write; a piece payload on its own.
            batch: list[bytes | memoryview] = []
            while outbox and len(batch) < 256:
                item = outbox[0]
                if isinstance(item, memoryview):
                    if not batch:
                        batch.append(outbox.popleft())
                    break
                batch.append(outbox.popleft())
            data = batch[0] if len(batch) == 1 else b"".join(batch)
            self._mid_send = True
            with trio.move_on_after(SEND_TIMEOUT) as scope:
                await stream.send_all(data)
            self._mid_send = False
            if scope.cancelled_caught:
                raise PeerTimeout(f"peer took no data for {SEND_TIMEOUT:.0f} s")
            self._last_sent = trio.current_time()
            if isinstance(data, memoryview):
                self._queued_payloads -= 1
                self._payload_sent.set()
                owner = data.obj
                del data, batch  # dropped first: the pool refills only a buffer nobody views
                if isinstance(owner, bytearray):
                    self.swarm.payload_pool.give_back(owner)

    async def _uploader(self) -> None:
        swarm = self.swarm
        while True:
            if not self._uploads:
                self._uploads_ready = trio.Event()
                await self._uploads_ready.wait()
            while self._queued_payloads >= UPLOAD_AHEAD:
                self._payload_sent = trio.Event()
                await self._payload_sent.wait()
            if not self._uploads:
                continue  # a CANCEL took the only queued run while we waited for the socket
            run = self._uploads.popleft()
            if swarm.reject_if_held_back(self, run):
                continue  # decided when sending, not when asked: another copy may be out now
            # Claimed before the read: a second uploader must see this copy as on its way.
            self.sent_pieces[run.piece] = 1
            try:
                data = await swarm.source.read_piece(run.piece, swarm.payload_pool)
            except (IntegrityError, StoreError) as exc:
                self.sent_pieces[run.piece] = 0
                swarm.emit(PieceServeFailed(run.piece, str(exc)))
                self.send(Reject(*run, RejectReason.NOT_AVAILABLE))
                continue
            payload = memoryview(data)
            sizes = swarm.piece_chunk_sizes(run.piece)
            if run.first_chunk or run.chunk_count != len(sizes):
                start = sum(sizes[: run.first_chunk])
                payload = payload[
                    start : start + sum(sizes[run.first_chunk : run.first_chunk + run.chunk_count])
                ]
            if self.payee_link is not None:
                try:
                    await self.payee_link.clearance(len(payload))
                except PaymentStopped as exc:
                    swarm.emit(PaymentRefused(self.label, str(exc)))
                    raise _Dropped(str(exc)) from None
            delay = swarm.upload_bucket.reserve(len(payload), trio.current_time())
            if delay > 0:
                await trio.sleep(delay)
            header, body = self.conn.send_piece_parts(Piece(*run, payload))
            self._outbox.append(header)
            self._outbox.append(body)
            self._queued_payloads += 1
            self._outbox_ready.set()
            self.uploaded += len(body)
            swarm.on_uploaded(self, run, len(body))
            del data, payload, body  # the writer's view is the last: it gives the buffer back

    async def _keepalive(self) -> None:
        while True:
            await trio.sleep(KEEPALIVE_INTERVAL / 2)
            if trio.current_time() - self._last_sent >= KEEPALIVE_INTERVAL:
                self.send(KeepAlive())

    def fill_pipeline(self) -> None:
        picker = self.swarm.picker
        if (
            picker is None
            or not self.joined
            or self.declined is not None
            or self._end_reason is not None
        ):
            return
        requests_sent = self.conn.requests_sent
        for run in picker.pick(self.peer_id, trio.current_time()):
            # A run taken back from this peer (its queue stalled) and picked for it again
            # while the CANCEL is on its way: the peer's answer to the first REQUEST, the
            # piece or a REJECT, settles this one too; asking twice is a protocol error.
            if run not in requests_sent:
                self.send(Request(*run))


class Swarm:
    """Peers exchanging the pieces of one manifest.  ``picker`` is None when only seeding."""

    def __init__(
        self,
        manifest: Manifest,
        source: PieceSource,
        *,
        config: SwarmConfig | None = None,
        store: PieceStore | None = None,
        picker: PiecePicker[bytes] | None = None,
        bytes_present: int = 0,
        on_event: EventCallback = ignore_event,
        peer_id: bytes | None = None,
        payments: Payments | None = None,
    ) -> None:
        self.manifest = manifest
        self.payments = payments
        self.source = source
        self.config = config or SwarmConfig()
        self.store = store
        self.picker = picker
        self.emit = on_event
        self.peer_id = peer_id or b"-TD0100-" + os.urandom(12)
        self.totals = Totals()
        self.bytes_done = bytes_present
        self.port = 0
        self.sessions: dict[bytes, PeerSession] = {}
        #: PIECE payload buffers of every connection, reused once stored.
        self.payload_pool = PayloadPool()
        self._all_sessions: set[PeerSession] = set()
        self._dialing: set[Address] = set()
        self._own_addresses: set[Address] = set()
        self.banned_ids: set[bytes] = set()
        self.banned_addresses: set[Address] = set()
        self.download_complete = trio.Event()
        #: Set when the fetch completed or failed: what the caller waits for.
        self.done = trio.Event()
        self.failure: BaseException | None = None
        self.upload_bucket = TokenBucket(
            self.config.max_upload_rate or None, now=trio.current_time()
        )
        self.download_bucket = TokenBucket(
            self.config.max_download_rate or None, now=trio.current_time()
        )
        self._chunk_sizes = manifest.chunk_sizes
        self._pieces = manifest.pieces
        largest = max((p.size for p in self._pieces), default=0)
        self._max_frame = max(piece_frame_size(largest), 64 * 1024)
        self.handshake = self._make_handshake()
        self._nursery: trio.Nursery | None = None
        self._rate_marks: deque[tuple[float, int, int]] = deque(maxlen=16)
        self._writes_in_flight = 0

    def _make_handshake(self) -> Handshake:
        payments = self.payments
        terms = payments.terms if payments is not None else None
        pays = payments is not None and payments.payer is not None
        return Handshake(
            manifest_id=self.manifest.id,
            peer_id=self.peer_id,
            listen_port=self.port,
            capabilities=Capability.VOUCHERS if terms is not None or pays else 0,
            payment_terms=terms,
            max_frame=self._max_frame,
            max_outstanding_requests=self.config.max_outstanding_requests,
        )

    def piece_chunk_sizes(self, index: int) -> Sequence[int]:
        piece = self._pieces[index]
        return self._chunk_sizes[piece.first_chunk : piece.first_chunk + piece.chunk_count]

    @property
    def fetching(self) -> bool:
        return self.picker is not None and not self.download_complete.is_set()

    # ------------------------------------------------------------------ running

    async def run(
        self,
        peers: Iterable[Address] = (),
        trackers: Iterable[str] = (),
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen, dial, announce and exchange pieces until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.config.listen is not None:
                host, port = self.config.listen
                listeners = await trio.open_tcp_listeners(port, host=host or None)
                self.port = listeners[0].socket.getsockname()[1]
                self.handshake = self._make_handshake()
                self.emit(Listening(host or "0.0.0.0", self.port))
                nursery.start_soon(trio.serve_listeners, self._accept, listeners)
            for address in peers:
                nursery.start_soon(self._keep_dialing, address)
            for url in trackers:
                nursery.start_soon(self._announce_loop, url)
            nursery.start_soon(self._ticker)
            if self.payments is not None:
                nursery.start_soon(self.payments.run)
            task_status.started(self.port)

    async def _accept(self, stream: trio.SocketStream) -> None:
        try:
            host, port = stream.socket.getpeername()[:2]
        except OSError:
            await stream.aclose()
            return
        if len(self._all_sessions) >= self.config.max_peers:
            await stream.aclose()  # a flood of connections costs us one accept each
            return
        await self._serve(stream, f"{host}:{port}")

    async def _serve(
        self, stream: trio.SocketStream, address: str, *, dialled: Address | None = None
    ) -> None:
        session = PeerSession(self, stream, address, dialled is not None)
        session.listen_address = dialled
        self._all_sessions.add(session)
        await session.run()

    async def _keep_dialing(self, address: Address) -> None:
        """Keep a connection to a peer named on the command line."""
        while True:
            if address not in self.banned_addresses and not self._connected_to(address):
                await self.dial(address)
            await trio.sleep(REDIAL_INTERVAL)

    def _connected_to(self, address: Address) -> bool:
        return any(s.listen_address == address for s in self._all_sessions) or (
            address in self._own_addresses
        )

    async def dial(self, address: Address) -> None:
        if (
            address in self._dialing
            or self._connected_to(address)
            or address in self.banned_addresses
            or len(self._all_sessions) >= self.config.max_peers
        ):
            return
        self._dialing.add(address)
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                stream = await trio.open_tcp_stream(*address)
        except (OSError, trio.TooSlowError):
            return
        finally:
            self._dialing.discard(address)
        await self._serve(stream, f"{address[0]}:{address[1]}", dialled=address)

    def dial_soon(self, address: Address) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self.dial, address)

    async def _announce(
        self, url: str, event: AnnounceEvent | None, client: httpx.AsyncClient
    ) -> AnnounceResult:
        return await announce(
            url,
            info_hash=self.manifest.info_hash,
            peer_id=self.peer_id,
            port=self.port,
            uploaded=self.totals.uploaded,
            downloaded=self.totals.downloaded,
            left=self.manifest.total_size - self.bytes_done,
            event=event,
            client=client,
        )

    async def _announce_loop(self, url: str) -> None:
        event: AnnounceEvent | None = "started"
        completed_sent = not self.fetching
        client = tracker_client(url)
        try:
            while True:
                interval = 15
                try:
                    result = await self._announce(url, event, client)
                except TrackerError as exc:
                    self.emit(TrackerFailed(url, str(exc)))
                else:
                    event = None
                    interval = min(max(int(result.interval), 5), 1800)
                    self.emit(TrackerAnnounced(url, len(result.peers), interval))
                    for address in result.peers:
                        self.dial_soon((str(address[0]), int(address[1])))
                if completed_sent:
                    await trio.sleep(interval)
                else:
                    with trio.move_on_after(interval):
                        await self.download_complete.wait()
                if not completed_sent and self.download_complete.is_set():
                    event, completed_sent = "completed", True
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                with suppress(TrackerError):
                    await self._announce(url, "stopped", client)
                await client.aclose()

    async def _ticker(self) -> None:
        last_report = 0.0
        while True:
            await trio.sleep(TICK)
            now = trio.current_time()
            if self.picker is not None and self.fetching:
                for peer_id, run in self.picker.timeouts(now):
                    session = self.sessions.get(peer_id)
                    if session is None:
                        continue
                    if self.picker.stalls(peer_id) >= MAX_STALLS:
                        session.end("stalled repeatedly")
                    elif run in session.conn.requests_sent:
                        session.send(Cancel(*run))
                for session in list(self.sessions.values()):
                    session.fill_pipeline()
            if self.config.super_seed:
                self._reoffer_orphans()
            if now - last_report >= 1.0:
                last_report = now
                self.emit(self.progress(now))

    def progress(self, now: float) -> SwarmProgress:
        marks = self._rate_marks
        marks.append((now, self.totals.downloaded, self.totals.uploaded))
        first = marks[0]
        span = now - first[0]
        down = (self.totals.downloaded - first[1]) / span if span > 0 else 0.0
        up = (self.totals.uploaded - first[2]) / span if span > 0 else 0.0
        return SwarmProgress(
            self.bytes_done,
            self.manifest.total_size,
            round(down),
            round(up),
            self.totals.uploaded,
            len(self.sessions),
            self.totals.paid,
            self.totals.received,
        )

    # ------------------------------------------------------------------ session events

    def session_established(self, session: PeerSession) -> None:
        peer_id = session.peer_id
        if peer_id == self.peer_id:
            if session.listen_address is not None:
                self._own_addresses.add(session.listen_address)
            raise _Dropped("connected to ourselves")
        if peer_id in self.banned_ids:
            raise _Dropped("banned peer")
        other = self.sessions.get(peer_id)
        if other is not None:
            # Both ends keep the connection dialled by the smaller peer id.
            keep_outgoing = self.peer_id < peer_id
            if session.outgoing != keep_outgoing:
                raise _Dropped("duplicate connection")
            other.end("duplicate connection")
        self.sessions[peer_id] = session
        self.emit(PeerConnected(session.label, peer_id.hex(), "out" if session.outgoing else "in"))

    def session_ended(self, session: PeerSession, reason: str) -> None:
        self._all_sessions.discard(session)
        if session.established and self.sessions.get(session.peer_id) is session:
            del self.sessions[session.peer_id]
            if self.picker is not None and session.joined and session.declined is None:
                self.picker.peer_left(session.peer_id)
                for other in list(self.sessions.values()):
                    other.fill_pipeline()
        if session.established:
            self.emit(PeerDisconnected(session.label, reason, session.downloaded, session.uploaded))

    def on_joined(self, session: PeerSession, pieces: Sequence[int]) -> None:
        if self.picker is not None and session.declined is None:
            self.picker.peer_joined(
                session.peer_id,
                pieces,
                max_outstanding=session.conn.their_handshake.max_outstanding_requests
                if session.conn.their_handshake is not None
                else 0,
            )
            session.fill_pipeline()

    def on_have(self, session: PeerSession, piece: int) -> None:
        if (
            self.picker is not None
            and self.fetching
            and session.declined is None
            and self.picker.peer_has(session.peer_id, piece)
        ):
            session.fill_pipeline()

    def on_request(self, session: PeerSession, run: ChunkRun) -> None:
        if not self.source.has_piece(run.piece):
            session.send(Reject(*run, RejectReason.NOT_AVAILABLE))
        elif session.payee_link is not None and not session.payee_link.peer_pays:
            session.send(Reject(*run, RejectReason.PAYMENT_REQUIRED))
        elif not self.reject_if_held_back(session, run):
            session.queue_upload(run)

    def reject_if_held_back(self, session: PeerSession, run: ChunkRun) -> bool:
        if not (self.config.super_seed and self._held_back(session, run.piece)):
            return False
        session.busy_rejected.add(run.piece)
        session.send(Reject(*run, RejectReason.BUSY))
        return True

    def _held_back(self, session: PeerSession, piece: int) -> bool:
        """Super-seeding: do not upload a piece to one peer while another connected peer has it
        or is being sent it — the requester can get it there, and the origin's upload goes to
        pieces nobody has yet."""
        return any(
            other is not session and (other.their_pieces[piece] or other.sent_pieces[piece])
            for other in self.sessions.values()
        )

    def _reoffer_orphans(self) -> None:
        """Re-announce pieces we answered BUSY once no other connected peer has them (their
        holder left), so no requester is left without a source."""
        for session in list(self.sessions.values()):
            orphans = [p for p in session.busy_rejected if not self._held_back(session, p)]
            for piece in sorted(orphans):
                session.busy_rejected.discard(piece)
                session.send(Have(piece))

    def on_uploaded(self, session: PeerSession, run: ChunkRun, size: int) -> None:
        self.totals.uploaded += size
        by_peer = self.totals.uploaded_by_peer
        by_peer[session.label] = by_peer.get(session.label, 0) + size

    def on_reject(self, session: PeerSession, reject: Reject) -> None:
        if self.picker is None:
            return
        lacks = reject.reason in (
            RejectReason.NOT_AVAILABLE,
            RejectReason.BUSY,
            RejectReason.PAYMENT_REQUIRED,
        )
        self.picker.on_rejected(
            session.peer_id, reject.run, trio.current_time(), peer_lacks_piece=lacks
        )
        session.fill_pipeline()

    async def on_piece(self, session: PeerSession, piece: Piece) -> None:
        picker, store = self.picker, self.store
        if picker is None or store is None:
            return  # a seeder asked for nothing; the connection already checked it
        run = piece.run
        now = trio.current_time()
        self._writes_in_flight += 1
        # The store skips (without hashing) a piece already present when the write starts.
        unverified_twin = store.has_piece(run.piece)
        try:
            if run.first_chunk == 0 and run.chunk_count == self._pieces[run.piece].chunk_count:
                stored = await store.write_piece(run.piece, piece.data, source=session.label)
            else:  # the rest of a piece whose other chunks were found locally
                stored = await store.write_run(
                    run.piece, run.first_chunk, piece.data, source=session.label
                )
            if unverified_twin and session.payer_link is not None:
                # an endgame twin the store skipped: never pay for bytes nobody checked
                await trio.to_thread.run_sync(
                    self.manifest.check_run,
                    self._pieces[run.piece],
                    run.first_chunk,
                    run.chunk_count,
                    piece.data,
                )
        except IntegrityError as exc:
            picker.on_failed(session.peer_id, run, now)
            self.ban(session, f"sent a corrupt piece ({exc})")
            raise _Dropped(f"banned: sent a corrupt piece {run.piece}") from None
        except (StoreError, OSError) as exc:
            self.fail(exc if isinstance(exc, StoreError) else StoreError(str(exc)))
            return
        finally:
            self._writes_in_flight -= 1
        size = len(piece.data)
        session.downloaded += size
        self.totals.downloaded += size
        by_peer = self.totals.downloaded_by_peer
        by_peer[session.label] = by_peer.get(session.label, 0) + size
        for other_id, other_run in picker.on_received(
            session.peer_id, run, trio.current_time(), size
        ):
            other = self.sessions.get(other_id)
            if other is not None and other_run in other.conn.requests_sent:
                other.send(Cancel(*other_run))
        payment_stopped = None
        if session.payer_link is not None:
            try:
                session.payer_link.pay_for(run.piece, size)
            except PaymentStopped as exc:
                payment_stopped = str(exc)
                self.emit(PaymentDeclined(session.label, payment_stopped))
        if stored:
            self.bytes_done = store.bytes_present
            # Seeds get HAVEs too: a super-seeding origin learns where its pieces went.
            for other in list(self.sessions.values()):
                if other.established:
                    other.announce(run.piece)
        if picker.complete:
            # An endgame duplicate can complete the picker while the first copy is still being
            # written (and its file renamed): finish only when no write is in flight.
            if self._writes_in_flight == 0:
                self.download_complete.set()
                self.done.set()
        elif payment_stopped is None:
            session.fill_pipeline()
        if payment_stopped is not None:
            raise _Dropped(f"payment stopped: {payment_stopped}")

    def ban(self, session: PeerSession, reason: str) -> None:
        if session.peer_id in self.banned_ids:
            return  # several of its pieces were being hashed at once: one ban, one event
        self.banned_ids.add(session.peer_id)
        if session.listen_address is not None:
            self.banned_addresses.add(session.listen_address)
        self.emit(PeerBanned(session.label, reason))

    def fail(self, exc: BaseException) -> None:
        """A local failure (disk full, say) that ends the whole fetch."""
        if self.failure is None:
            self.failure = exc
        self.done.set()
