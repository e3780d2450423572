"""Sans-I/O payment accounting: who owes what, when to sign, when to serve.

No sockets, no clocks, no disk: time comes in as numbers and the shell (``thetadist.net``)
does the I/O — the ledger, the chain reads, the wire — in the order documented on each class.
Both sides derive amounts from *cumulative bytes* with one function, :func:`price_of`, rather
than by summing rounded per-piece prices, so payer and payee agree on every voucher exactly.

Payer side (fetcher):

* one :class:`Budget` per fetcher, shared by all its connections, so the total it promises
  across seeders never passes its deposit;
* one :class:`PayerSession` per paying connection: after each verified piece,
  :meth:`PayerSession.on_verified` reserves the increment in the budget and returns the
  voucher to sign.  The shell signs it and records it in the ledger, *then* sends it.  A
  fetcher killed between signing and recording has sent nothing; one killed after recording
  has its promise counted on restart (the budget starts from ``VoucherLedger.committed``).
  Either way it never overspends.

Payee side (seeder): one :class:`PayeeSession` per paying connection tracks bytes served
against vouchers received, and :meth:`PayeeSession.decide` says, per piece, SERVE, WAIT (for a
voucher, or for a fresh read of the payer's pool) or REFUSE.  Its exposure to a payer that
never pays is one credit window; beyond the first window it also wants the payer's on-chain
pool (read by the shell, cached and refreshed every ``pool_refresh`` seconds, never per piece).
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from typing import Protocol

from thetadist.errors import InsufficientFunds, InvalidTicket, LocalProtocolError, PaymentError
from thetadist.pay.voucher import (
    ADDRESS_SIZE,
    Domain,
    SignedVoucher,
    Voucher,
    VoucherSigner,
    hex_address,
    verify,
)
from thetadist.wire.messages import PaymentTerms

MIB = 1 << 20

#: How far (in bytes) a seeder serves ahead of the vouchers it has.  A fetcher pays only after
#: a piece arrived and verified, so at full speed the window must cover every byte between
#: "served" and "its voucher counted": the seeder's outbox and both socket buffers (several
#: MiB each on Linux, loopback included), the fetcher's pieces waiting to be hashed, the
#: payer's voucher batch (up to 16 MiB or 50 ms) and the payee's (25 ms), plus the RTT.
#: Measured on loopback at 500+ MB/s: with 32 MiB a seeder paused 60–90 times per GiB waiting
#: for vouchers already on their way, with 64 MiB never.  The risk is bounded by
#: ``price_of(window)`` per payer, a few thousandths of a cent at CDN-like prices.
DEFAULT_CREDIT_WINDOW = 64 * MIB
#: How often a seeder re-reads a payer's pool while serving it (one chain call per payer).
DEFAULT_POOL_REFRESH = 30.0
#: Beyond the first credit window, a pool read older than this makes the seeder WAIT.
DEFAULT_POOL_MAX_AGE = 120.0
#: A payer that leaves the seeder waiting for a voucher this long is refused.
DEFAULT_VOUCHER_TIMEOUT = 30.0


def price_of(nbytes: int, price_per_mib_wei: int) -> int:
    """``floor(nbytes * price / 2**20)``: the price of ``nbytes`` (always of a running total)."""
    return (nbytes * price_per_mib_wei) >> 20


def check_terms(
    terms: PaymentTerms, *, max_price_per_mib: int, chain_id: int, contract: bytes
) -> None:
    """A fetcher's check of a seeder's terms; raises :class:`PaymentError` saying why not."""
    if len(terms.payee) != ADDRESS_SIZE or terms.payee == bytes(ADDRESS_SIZE):
        raise PaymentError("seeder's payee address is invalid")
    if terms.price_per_mib_wei > max_price_per_mib:
        raise PaymentError(
            f"seeder asks {terms.price_per_mib_wei} wei/MiB, above --max-price "
            f"{max_price_per_mib} wei/MiB"
        )
    if terms.chain_id != chain_id or terms.contract != contract:
        raise PaymentError(
            f"seeder is paid on chain {terms.chain_id} contract {hex_address(terms.contract)}; "
            f"our pool is on chain {chain_id} contract {hex_address(contract)}"
        )


# -- payer ----------------------------------------------------------------------------


class Budget:
    """What one fetcher may still promise in one pool epoch, shared by all its connections.

    ``deposit`` is the total the payer may promise in the epoch: the pool's deposit plus what
    payees already redeemed from it in this epoch (or just the deposit, to be conservative).
    ``committed`` starts at ``VoucherLedger.committed(domain, payer, epoch)``.  Thread-safe.
    """

    def __init__(self, deposit: int, committed: int = 0) -> None:
        if deposit < 0 or committed < 0:
            raise ValueError("deposit and committed are never negative")
        self._lock = threading.Lock()
        self._deposit = deposit
        self._committed = committed

    @property
    def deposit(self) -> int:
        return self._deposit

    @property
    def committed(self) -> int:
        return self._committed

    @property
    def available(self) -> int:
        return max(0, self._deposit - self._committed)

    def set_deposit(self, deposit: int) -> None:
        """After a top-up, or a pool re-read that changed the deposit."""
        with self._lock:
            self._deposit = deposit

    def reserve(self, amount: int) -> None:
        """Count ``amount`` as promised, or raise :class:`InsufficientFunds` changing nothing."""
        with self._lock:
            if self._committed + amount > self._deposit:
                raise InsufficientFunds(
                    f"paying {amount} wei more would promise {self._committed + amount} wei, "
                    f"above the deposit of {self._deposit} wei; top up the pool"
                )
            self._committed += amount


class PayerSession:
    """The fetcher's side of one paying connection.

    ``base_cumulative`` is the latest cumulative this payer signed for this payee and epoch
    (``VoucherLedger.latest(Role.SIGNED, ...)``), so a new connection continues the same
    cumulative sequence.  Keep at most one live session per (payee, epoch): two would sign
    overlapping cumulatives and the payee would take only the higher.

    Shell order, per piece, *only after the piece verified* (the fetcher never pays for data
    it has not checked)::

        voucher = session.on_verified(len(piece))  # reserves in the budget
        if voucher is not None:
            signed = session.signer.sign(voucher)
            ledger.record_signed(domain, signed, piece=index, nbytes=len(piece))  # first
            connection.send(Voucher(signed.encode()))                              # then

    The signature is the shell's to make, so that it can sign and record a batch of vouchers
    off the event loop; the amounts and the budget are settled here, in order.
    """

    def __init__(
        self,
        signer: VoucherSigner,
        payee: bytes,
        price_per_mib: int,
        epoch: int,
        base_cumulative: int,
        budget: Budget,
    ) -> None:
        if price_per_mib < 0 or base_cumulative < 0:
            raise ValueError("price and base are never negative")
        self.signer = signer
        self.payee = payee
        self.price_per_mib = price_per_mib
        self.epoch = epoch
        self.base = base_cumulative
        self.budget = budget
        self.cumulative = base_cumulative
        self.verified_bytes = 0

    def _target(self, verified_bytes: int) -> int:
        return self.base + price_of(verified_bytes, self.price_per_mib)

    def affordable(self, nbytes: int) -> bool:
        """Whether the budget can pay for ``nbytes`` more (ask before requesting them)."""
        return self._target(self.verified_bytes + nbytes) - self.cumulative <= (
            self.budget.available
        )

    def on_verified(self, nbytes: int) -> Voucher | None:
        """The voucher (to sign) that pays for ``nbytes`` more verified bytes, or None when they
        do not raise the cumulative amount (a sliver at a tiny price; the next piece pays).

        Raises :class:`InsufficientFunds` (and counts nothing) when the budget cannot pay; the
        bytes stay owed and a later call after a top-up pays for them.
        """
        if nbytes < 0:
            raise ValueError("nbytes is never negative")
        verified = self.verified_bytes + nbytes
        target = self._target(verified)
        if target == self.cumulative:
            self.verified_bytes = verified
            return None
        # reserved before it exists: a voucher that is signed is always inside the budget
        self.budget.reserve(target - self.cumulative)
        self.verified_bytes = verified
        self.cumulative = target
        return Voucher(self.signer.address, self.payee, self.epoch, target)


# -- payee ----------------------------------------------------------------------------


class PoolView(Protocol):
    """What the seeder needs of a payer's pool (``thetadist.pay.chain.PoolState`` has it)."""

    @property
    def deposit(self) -> int: ...
    @property
    def epoch(self) -> int: ...
    @property
    def unlock_at(self) -> int: ...
    @property
    def flagged(self) -> bool: ...


class Action(enum.Enum):
    SERVE = "serve"
    WAIT = "wait"  # for a voucher, or for a fresh read of the payer's pool
    REFUSE = "refuse"  # say goodbye (PAYMENT_REQUIRED) with the reason


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str = ""


SERVE = Decision(Action.SERVE)


class PayeeSession:
    """The seeder's side of one paying connection.

    Shell order:

    * per request, right before sending: ``decision = session.decide(len(piece), now)``.
      SERVE counts the bytes as served (so two tasks cannot both spend the last credit); WAIT
      parks the request until ``credit`` or ``set_pool`` changes things or ``deadline``
      passes (decide again then); REFUSE ends the connection with the reason.
    * when ``session.needs_pool(now)``: read the payer's pool (cached per payer across
      connections), then ``session.set_pool(pool, now)``.  Never per piece.
    * per VOUCHER message::

          signed = SignedVoucher.decode(payload)                 # InvalidTicket: drop
          if session.payer is None:                              # the first voucher
              previous = ledger.latest(Role.RECEIVED, domain, signed.payer, me, signed.epoch)
              session.bind(signed,
                           previous=previous.cumulative if previous else 0,
                           redeemed=ledger.redeemed(domain, signed.payer, me, signed.epoch))
          delta = session.accept(signed)                         # verifies; counts nothing
          ledger.record_received(domain, signed, piece=..., nbytes=...)   # persist first
          session.credit(signed)                                 # then count it

    A shell that verifies and records vouchers in batches off the event loop passes
    ``check_signature=False`` to ``accept`` (which still orders them: each must be above the
    last one accepted) and calls ``credit`` once the batch verified and committed.

    Owed and paid are cumulative amounts for (payer, us, epoch): owed is ``previous`` (the best
    voucher from earlier sessions) plus the price of the bytes served in this session; paid is
    the latest voucher.  Overpaying is the payer's business and is accepted.
    """

    def __init__(
        self,
        domain: Domain,
        payee: bytes,
        price_per_mib: int,
        *,
        credit_window: int = DEFAULT_CREDIT_WINDOW,
        pool_refresh: float = DEFAULT_POOL_REFRESH,
        pool_max_age: float = DEFAULT_POOL_MAX_AGE,
        voucher_timeout: float = DEFAULT_VOUCHER_TIMEOUT,
    ) -> None:
        if price_per_mib < 0 or credit_window < 0:
            raise ValueError("price and credit window are never negative")
        self.domain = domain
        self.payee = payee
        self.price_per_mib = price_per_mib
        self.credit_window = credit_window
        self.pool_refresh = pool_refresh
        self.pool_max_age = pool_max_age
        self.voucher_timeout = voucher_timeout
        self.payer: bytes | None = None
        self.epoch: int | None = None
        self.served = 0
        self.base = 0
        self.paid = 0
        #: The highest voucher accepted (paid, or on its way through verification and the
        #: ledger): the next one must be above it.
        self.accepted = 0
        self.redeemed = 0
        self.pool: PoolView | None = None
        self._pool_read_at = 0.0
        self._waiting_since: float | None = None

    @property
    def owed(self) -> int:
        return self.base + price_of(self.served, self.price_per_mib)

    @property
    def unpaid(self) -> int:
        return max(0, self.owed - self.paid)

    @property
    def deadline(self) -> float | None:
        """While waiting for a voucher: when :meth:`decide` turns the wait into REFUSE (the
        shell decides again then if nothing arrived)."""
        if self._waiting_since is None:
            return None
        return self._waiting_since + self.voucher_timeout

    # -- vouchers --------------------------------------------------------------------------

    def bind(self, first: SignedVoucher, *, previous: int = 0, redeemed: int = 0) -> None:
        """Learn who pays from the first voucher (verified here, so the identity is real) and
        continue from the ledger's ``previous`` best voucher and ``redeemed`` amount."""
        if self.payer is not None:
            raise LocalProtocolError("payee session already bound to a payer")
        self._check(first)
        verify(first, self.domain)
        self.payer = first.payer
        self.epoch = first.epoch
        self.base = self.paid = self.accepted = previous
        self.redeemed = redeemed

    def _check(self, signed: SignedVoucher) -> None:
        if signed.payee != self.payee:
            raise InvalidTicket(
                f"voucher pays {hex_address(signed.payee)}, not this seeder "
                f"{hex_address(self.payee)}"
            )
        if self.pool is not None and signed.epoch != self.pool.epoch:
            raise InvalidTicket(
                f"voucher for epoch {signed.epoch}, but the payer's pool is at epoch "
                f"{self.pool.epoch}"
            )

    def accept(self, signed: SignedVoucher, *, check_signature: bool = True) -> int:
        """Validate ``signed`` and return the amount it adds; counts nothing (see ``credit``).

        Cheap checks first, the signature last (unless the shell checks it itself);
        raises :class:`InvalidTicket`.
        """
        if self.payer is None:
            raise LocalProtocolError("bind the payer before accepting its vouchers")
        self._check(signed)
        if signed.payer != self.payer:
            raise InvalidTicket(
                f"voucher from {hex_address(signed.payer)} on a connection paid by "
                f"{hex_address(self.payer)}"
            )
        if signed.epoch != self.epoch:
            raise InvalidTicket(f"voucher for epoch {signed.epoch}, session is in {self.epoch}")
        if signed.cumulative <= self.accepted:
            raise InvalidTicket(
                f"voucher cumulative {signed.cumulative} is not above {self.accepted} already paid"
            )
        if check_signature:
            verify(signed, self.domain)
        amount = signed.cumulative - self.accepted
        self.accepted = signed.cumulative
        return amount

    def credit(self, signed: SignedVoucher) -> None:
        """Count a voucher that :meth:`accept` passed and the ledger has recorded."""
        if signed.payer != self.payer or signed.epoch != self.epoch:
            raise LocalProtocolError("credit() of a voucher this session did not accept")
        if signed.cumulative > self.paid:
            self.paid = signed.cumulative
            self._waiting_since = None

    def set_redeemed(self, redeemed: int) -> None:
        """After redeeming this payer's voucher on-chain during the session."""
        self.redeemed = max(self.redeemed, redeemed)

    # -- the pool --------------------------------------------------------------------------

    def needs_pool(self, now: float) -> bool:
        """Whether the shell should (re)read the payer's pool now."""
        return self.payer is not None and (
            self.pool is None or now - self._pool_read_at >= self.pool_refresh
        )

    def set_pool(self, pool: PoolView, now: float) -> None:
        self.pool = pool
        self._pool_read_at = now

    # -- serving ---------------------------------------------------------------------------

    def decide(self, nbytes: int, now: float) -> Decision:
        """Whether to send ``nbytes`` more now; SERVE counts them as served."""
        if self.price_per_mib == 0:
            self.served += nbytes
            return SERVE
        # When everything served so far is paid for, the next piece goes whatever its size:
        # the seeder risks that one piece, and a window smaller than a piece cannot deadlock.
        all_paid = self.owed <= self.paid
        served = self.served + nbytes
        owed = self.base + price_of(served, self.price_per_mib)
        refusal = self._pool_refusal(owed)
        if refusal is not None:
            return refusal
        if served > self.credit_window:
            if self.payer is None and not all_paid:
                return self._wait_for_voucher(now, "waiting for the payer's first voucher")
            if self.payer is not None and (
                self.pool is None or now - self._pool_read_at > self.pool_max_age
            ):
                return Decision(Action.WAIT, "waiting for a fresh read of the payer's pool")
        if not all_paid and owed - self.paid > price_of(self.credit_window, self.price_per_mib):
            return self._wait_for_voucher(now, "waiting for a voucher")
        self._waiting_since = None
        self.served = served
        return SERVE

    def _pool_refusal(self, owed: int) -> Decision | None:
        pool = self.pool
        if pool is None:
            return None
        if pool.flagged:
            return Decision(Action.REFUSE, "payer's pool is flagged (it failed to cover a voucher)")
        if pool.unlock_at != 0:
            return Decision(Action.REFUSE, "payer started withdrawing its pool")
        if self.epoch is not None and pool.epoch != self.epoch:
            return Decision(
                Action.REFUSE, f"payer's pool is at epoch {pool.epoch}, vouchers at {self.epoch}"
            )
        if owed - self.redeemed > pool.deposit:
            return Decision(Action.REFUSE, "payer's deposit cannot cover what it owes")
        return None

    def _wait_for_voucher(self, now: float, reason: str) -> Decision:
        if self._waiting_since is None:
            self._waiting_since = now
        elif now - self._waiting_since > self.voucher_timeout:
            return Decision(
                Action.REFUSE, f"no voucher for {self.voucher_timeout:.0f} s while owed"
            )
        return Decision(Action.WAIT, reason)
