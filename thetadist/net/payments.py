"""The Trio shell of per-piece payments: wires the sans-I/O accounts into peer sessions.

``thetadist.pay.accounts`` decides (sign now? serve now? refuse?), ``thetadist.pay.ledger``
remembers, the chain says what a payer's pool holds.  This module only moves those decisions
in and out of :class:`thetadist.net.swarm.PeerSession`:

* a node that charges (:class:`Payee`) puts its terms in the handshake, parks each upload until
  its :class:`PayeeLink` clears it, persists each voucher before counting it, and reads payers'
  pools from the chain through one cache (never per piece);
* a node that pays (:class:`Payer`) checks each seeder's terms, signs one cumulative voucher per
  verified piece and records it in its ledger before sending it; it never requests from a peer
  it will not pay.

Signatures, their checks and the ledger's commits go through one
:class:`~thetadist.net.voucher_queue.VoucherQueue` per role, which does them in batches (on
the event loop; a durable ledger's in a worker thread); a voucher is sent (payer) or counted
(payee) only when its batch committed.

One node may be both: a paying fetcher that also charges for what it relays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import trio

from thetadist.errors import (
    ChainError,
    InsufficientFunds,
    InvalidTicket,
    LocalProtocolError,
    PaymentError,
    StoreError,
)
from thetadist.events import (
    EventCallback,
    PaymentDeclined,
    PaymentRefused,
    VoucherReceived,
    VoucherSigned,
)
from thetadist.net.voucher_queue import PAYER_LINGER, VoucherQueue, flush_bytes_for
from thetadist.pay.accounts import (
    DEFAULT_CREDIT_WINDOW,
    DEFAULT_POOL_REFRESH,
    DEFAULT_VOUCHER_TIMEOUT,
    Action,
    Budget,
    PayeeSession,
    PayerSession,
    PoolView,
    check_terms,
)
from thetadist.pay.ledger import Role, VoucherLedger
from thetadist.pay.voucher import Domain, SignedVoucher, VoucherSigner, hex_address
from thetadist.wire import Capability, Goodbye, GoodbyeReason, Handshake, PaymentTerms, Voucher

if TYPE_CHECKING:
    from thetadist.net.swarm import PeerSession

#: A pool read that failed is retried after this long (the chain node may be restarting).
POOL_RETRY = 2.0
#: Payers' pools remembered per node (each was read for a payer that signed a voucher).
MAX_CACHED_POOLS = 10_000
#: Longest a parked upload sleeps before asking its link again (timeouts are checked then).
RECHECK = 1.0

PoolReader = Callable[[bytes], PoolView]


class PaymentStopped(Exception):
    """Ends a session whose payments cannot go on; the message is the logged reason."""


@dataclass
class Payee:
    """What a charging node needs: its terms, its ledger and a way to read payers' pools.

    ``read_pool`` is blocking (a JSON-RPC call); it runs in a worker thread.
    """

    ledger: VoucherLedger
    domain: Domain
    address: bytes
    price_per_mib: int
    read_pool: PoolReader
    credit_window: int = DEFAULT_CREDIT_WINDOW
    pool_refresh: float = DEFAULT_POOL_REFRESH
    #: A payer that leaves us waiting this long for a voucher while it owes is refused.
    voucher_timeout: float = DEFAULT_VOUCHER_TIMEOUT
    _pools: dict[bytes, tuple[PoolView, float]] = field(default_factory=dict)
    _reading: dict[bytes, trio.Event] = field(default_factory=dict)
    queue: VoucherQueue = field(init=False)

    def __post_init__(self) -> None:
        self.queue = VoucherQueue(self.ledger)

    @property
    def terms(self) -> PaymentTerms:
        return PaymentTerms(
            self.address,
            self.price_per_mib,
            self.domain.chain_id,
            self.domain.contract,
            credit_window=self.credit_window,
        )

    async def pool(self, payer: bytes) -> tuple[PoolView, float] | None:
        """The payer's pool and when it was read, refreshed when older than ``pool_refresh``;
        one read per payer at a time however many connections ask.  None when unreadable."""
        cached = self._pools.get(payer)
        now = trio.current_time()
        if cached is not None and now - cached[1] < self.pool_refresh:
            return cached
        reading = self._reading.get(payer)
        if reading is not None:
            await reading.wait()
            return self._pools.get(payer)
        self._reading[payer] = reading = trio.Event()
        try:
            # abandoned if the asking session ends: a read nobody waits for must not hold up
            # its teardown (the chain's answer would be dropped anyway)
            state = await trio.to_thread.run_sync(self.read_pool, payer, abandon_on_cancel=True)
            self._pools.pop(payer, None)  # re-inserted below: the dict stays in read order
            if len(self._pools) >= MAX_CACHED_POOLS:  # strangers' keys cost nothing to make
                del self._pools[next(iter(self._pools))]  # the oldest read
            self._pools[payer] = (state, trio.current_time())
        except ChainError:
            pass  # keep the stale copy, if any; the link waits and asks again
        finally:
            del self._reading[payer]
            reading.set()
        return self._pools.get(payer)


@dataclass
class Payer:
    """What a paying node needs: its signer, pool epoch, budget, price limit and ledger."""

    ledger: VoucherLedger
    signer: VoucherSigner
    epoch: int
    budget: Budget
    max_price_per_mib: int
    #: One live paying session per payee: two would sign overlapping cumulative amounts.
    _active: set[bytes] = field(default_factory=set)
    #: The last cumulative promised to each payee this run, signed or still in the queue: a
    #: replacement connection goes on from here, not from the ledger (which may lag by a batch).
    _promised: dict[bytes, int] = field(default_factory=dict)
    queue: VoucherQueue = field(init=False)

    def __post_init__(self) -> None:
        self.queue = VoucherQueue(self.ledger, linger=PAYER_LINGER)

    @property
    def domain(self) -> Domain:
        return self.signer.domain

    def promised(self, payee: bytes) -> int:
        """The cumulative amount promised to ``payee`` so far (this run, else the ledger's)."""
        if payee not in self._promised:
            latest = self.ledger.latest(
                Role.SIGNED, self.domain, self.signer.address, payee, self.epoch
            )
            self._promised[payee] = latest.cumulative if latest is not None else 0
        return self._promised[payee]


@dataclass
class Payments:
    """The payment roles of one swarm node: ``payee`` when it charges, ``payer`` when it pays."""

    payee: Payee | None = None
    payer: Payer | None = None

    @property
    def terms(self) -> PaymentTerms | None:
        return self.payee.terms if self.payee is not None and self.payee.price_per_mib else None

    def _queues(self) -> list[VoucherQueue]:
        return [role.queue for role in (self.payee, self.payer) if role is not None]

    @property
    def idle(self) -> bool:
        """No voucher waits to be signed, verified, recorded or acted on."""
        return all(queue.idle for queue in self._queues())

    async def run(self) -> None:
        """The voucher queues' batches; the swarm runs this in its nursery."""
        async with trio.open_nursery() as nursery:
            for queue in self._queues():
                nursery.start_soon(queue.run)

    async def settle(self) -> None:
        """Sign, verify, record and deliver every voucher queued so far (a closing session's
        last voucher goes out before its outbox is flushed)."""
        for queue in self._queues():
            await queue.settle()

    def payee_link(self, session: PeerSession) -> PayeeLink | None:
        if self.terms is None or self.payee is None:
            return None
        return PayeeLink(self.payee, session)

    def payer_link(
        self, session: PeerSession, their: Handshake, emit: EventCallback
    ) -> PayerLink | None:
        """The link that pays this peer, or None when it serves for free.  Raises
        :class:`PaymentStopped` when it charges and we will not pay it (do not request)."""
        terms = their.payment_terms
        if terms is None or terms.price_per_mib_wei == 0:
            return None
        payer = self.payer
        if payer is None:
            raise PaymentStopped("charges for pieces and we have no wallet (fetch --wallet)")
        try:
            check_terms(
                terms,
                max_price_per_mib=payer.max_price_per_mib,
                chain_id=payer.domain.chain_id,
                contract=payer.domain.contract,
            )
        except PaymentError as exc:
            raise PaymentStopped(str(exc)) from None
        if terms.payee in payer._active:
            raise PaymentStopped(f"already paying {hex_address(terms.payee)} on another connection")
        return PayerLink(payer, terms, session, emit)


class PayerLink:
    """Pays one seeder: a voucher after each verified piece, recorded before it is sent."""

    def __init__(
        self, payer: Payer, terms: PaymentTerms, session: PeerSession, emit: EventCallback
    ) -> None:
        self.payer = payer
        self.session = session
        self.emit = emit
        self.payee = terms.payee
        #: Vouchers go out at least this often (in bytes paid), so the payee never waits long.
        self.flush_bytes = flush_bytes_for(terms.credit_window)
        self.accounts = PayerSession(
            payer.signer,
            terms.payee,
            terms.price_per_mib_wei,
            payer.epoch,
            payer.promised(terms.payee),
            payer.budget,
        )
        payer._active.add(terms.payee)
        self._closed = False

    def close(self) -> None:
        """Let another connection pay this payee (idempotent: a second call must not free
        the slot a newer link has taken since)."""
        if not self._closed:
            self._closed = True
            self.payer._active.discard(self.payee)

    def pay_for(self, piece: int, nbytes: int) -> None:
        """Call only after the piece verified.  Queues the voucher (signed, recorded, then
        sent in order); raises :class:`PaymentStopped` when the deposit cannot pay (nothing is
        promised then)."""
        try:
            voucher = self.accounts.on_verified(nbytes)
        except InsufficientFunds as exc:
            raise PaymentStopped(str(exc)) from None
        if voucher is None:
            return
        self.payer._promised[self.payee] = voucher.cumulative
        self.payer.queue.sign(
            self.payer.signer,
            voucher,
            piece=piece,
            nbytes=nbytes,
            done=partial(self._send, piece, nbytes),
            failed=self._stop,
            flush_bytes=self.flush_bytes,
        )

    def _send(self, piece: int, nbytes: int, signed: SignedVoucher, step: int) -> None:
        session = self.session
        try:
            session.send(Voucher(signed.encode()))
        except LocalProtocolError:
            return  # the connection said goodbye meanwhile: recorded, never sent
        session.swarm.totals.paid += step
        self.emit(VoucherSigned(session.label, piece, nbytes, step, signed.cumulative))

    def _stop(self, error: InvalidTicket | StoreError) -> None:
        reason = f"cannot record a voucher: {error}"
        self.emit(PaymentDeclined(self.session.label, reason))
        self.session.end(f"payment stopped: {reason}")


class PayeeLink:
    """Charges one peer: clears each upload against the vouchers it has sent."""

    def __init__(self, payee: Payee, session: PeerSession) -> None:
        self.payee = payee
        self.session = session
        self.accounts = PayeeSession(
            payee.domain,
            payee.address,
            payee.price_per_mib,
            credit_window=payee.credit_window,
            pool_refresh=payee.pool_refresh,
            voucher_timeout=payee.voucher_timeout,
        )
        self._changed = trio.Event()
        self._pool_reading = False
        self._peer_pays: bool | None = None
        #: An upload is parked until a voucher (or a pool read) clears it.
        self._waiting = False

    @property
    def peer_pays(self) -> bool:
        """Whether the peer offered vouchers in its handshake (else it is never served)."""
        if self._peer_pays is None:
            their = self.session.conn.their_handshake
            if their is None:
                return False
            self._peer_pays = bool(their.capabilities & Capability.VOUCHERS)
        return self._peer_pays

    async def clearance(self, nbytes: int) -> None:
        """Return when ``nbytes`` may be sent to the peer now (and count them as served);
        raise :class:`PaymentStopped` when the peer is refused."""
        accounts = self.accounts
        while True:
            now = trio.current_time()
            if accounts.needs_pool(now) and not self._pool_reading:
                # In the background: uploads the credit window (or a pool read not too long
                # ago) covers go on meanwhile; decide() waits only when it needs the pool.
                self._pool_reading = True
                self.session.spawn(self._refresh_pool)
            decision = accounts.decide(nbytes, now)
            if decision.action is Action.SERVE:
                return
            if decision.action is Action.REFUSE:
                self.session.send(Goodbye(GoodbyeReason.PAYMENT_REQUIRED, decision.reason[:200]))
                raise PaymentStopped(f"refused: {decision.reason}")
            self.payee.queue.flush()  # a voucher we hold may be what clears it
            self._changed = trio.Event()
            self._waiting = True  # and so may one that arrives meanwhile: see on_voucher
            try:
                with trio.move_on_after(RECHECK):
                    await self._changed.wait()
            finally:
                self._waiting = False

    async def _refresh_pool(self) -> None:
        try:
            payer = self.accounts.payer
            if payer is None:
                return
            found = await self.payee.pool(payer)
            if found is None:
                await trio.sleep(POOL_RETRY)  # unreadable: ask again, not at once
                return
            state, read_at = found
            self.accounts.set_pool(state, read_at)
        finally:
            self._pool_reading = False
            self._changed.set()

    def on_voucher(self, payload: bytes) -> None:
        """Check a voucher and queue it to be verified, persisted, then counted; raises
        :class:`InvalidTicket` (drop the peer) for anything malformed, misaddressed or
        replayed.  A forged signature ends the session when its batch is verified."""
        accounts = self.accounts
        ledger, domain = self.payee.ledger, self.payee.domain
        signed = SignedVoucher.decode(payload)
        if accounts.payer is None:  # verified at once: it names who pays
            previous = ledger.latest(
                Role.RECEIVED, domain, signed.payer, self.payee.address, signed.epoch
            )
            accounts.bind(
                signed,
                previous=previous.cumulative if previous is not None else 0,
                redeemed=ledger.redeemed(domain, signed.payer, self.payee.address, signed.epoch),
            )
        accounts.accept(signed, check_signature=False)  # a replay or lower voucher raises
        queue = self.payee.queue
        queue.verify(domain, signed, done=self._count, failed=self._refuse)
        if self._waiting:
            # An upload waits for credit: verify now, not after the queue's linger (with a
            # small window that linger was most of the time the seeder spent).
            queue.flush()

    def _count(self, signed: SignedVoucher, step: int) -> None:
        self.accounts.credit(signed)
        self._changed.set()
        swarm = self.session.swarm
        swarm.totals.received += step
        swarm.emit(
            VoucherReceived(self.session.label, hex_address(signed.payer), step, signed.cumulative)
        )

    def _refuse(self, error: InvalidTicket | StoreError) -> None:
        reason = f"bad voucher: {error}" if isinstance(error, InvalidTicket) else str(error)
        self.session.swarm.emit(PaymentRefused(self.session.label, reason))
        self.session.end(reason)
