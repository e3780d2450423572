"""The sans-I/O payment state machines: explicit ``now`` values, no sockets, no clock.

The centre is a RuleBasedStateMachine that joins a PayerSession and a PayeeSession through
queues of pieces and vouchers in flight, as h11's tests join two connections."""

from __future__ import annotations

import threading
from collections import deque
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from thetadist.errors import InsufficientFunds, InvalidTicket, LocalProtocolError, PaymentError
from thetadist.pay.accounts import (
    DEFAULT_CREDIT_WINDOW,
    MIB,
    SERVE,
    Action,
    Budget,
    PayeeSession,
    PayerSession,
    check_terms,
    price_of,
)
from thetadist.pay.ledger import Role, VoucherLedger
from thetadist.pay.voucher import Domain, SignedVoucher, Voucher, VoucherSigner
from thetadist.wire.messages import PaymentTerms

CONTRACT = b"\xcc" * 20
DOMAIN = Domain(31337, CONTRACT)
PAYER_KEY = (0x1234).to_bytes(32, "big")
OTHER_KEY = (0x5678).to_bytes(32, "big")
PAYEE = b"\x0a" * 20
PAYEE2 = b"\x0b" * 20
PRICE = 10**12  # wei per MiB
WINDOW = 4 * MIB


@dataclass(frozen=True)
class Pool:
    """Stands in for thetadist.pay.chain.PoolState."""

    deposit: int
    epoch: int = 0
    unlock_at: int = 0
    flagged: bool = False


def payer_session(
    budget: Budget, *, payee: bytes = PAYEE, price: int = PRICE, base: int = 0, epoch: int = 0
) -> PayerSession:
    return PayerSession(VoucherSigner(PAYER_KEY, DOMAIN), payee, price, epoch, base, budget)


def paid_for(session: PayerSession, nbytes: int) -> SignedVoucher | None:
    """The session's voucher for ``nbytes`` more verified bytes, signed as the shell signs it."""
    voucher = session.on_verified(nbytes)
    return None if voucher is None else session.signer.sign(voucher)


def payee_session(**options: object) -> PayeeSession:
    return PayeeSession(DOMAIN, PAYEE, PRICE, credit_window=WINDOW, **options)  # type: ignore[arg-type]


def pay(payer: PayerSession, payee: PayeeSession, nbytes: int, *, previous: int = 0) -> int:
    """The shell's voucher path, minus the ledger: returns the credited amount."""
    signed = paid_for(payer, nbytes)
    assert signed is not None
    if payee.payer is None:
        payee.bind(signed, previous=previous)
    delta = payee.accept(signed)
    payee.credit(signed)
    return delta


# -- price_of and terms --------------------------------------------------------------------


def test_price_of() -> None:
    assert price_of(MIB, 1000) == 1000
    assert price_of(MIB // 2, 1001) == 500  # rounded down
    assert price_of(0, 10**30) == 0
    assert price_of(3, 10**18) == 3 * 10**18 // MIB


@given(a=st.integers(0, 2**40), b=st.integers(0, 2**40), price=st.integers(0, 10**24))
def test_cumulative_pricing_never_loses_to_per_piece_rounding(a: int, b: int, price: int) -> None:
    assert price_of(a, price) + price_of(b, price) <= price_of(a + b, price)
    assert price_of(a + b, price) - price_of(a, price) - price_of(b, price) <= 1


def test_check_terms() -> None:
    good = PaymentTerms(PAYEE, 100, 31337, CONTRACT)
    check_terms(good, max_price_per_mib=100, chain_id=31337, contract=CONTRACT)
    for terms, reason in [
        (PaymentTerms(PAYEE, 101, 31337, CONTRACT), "above --max-price"),
        (PaymentTerms(PAYEE, 1, 1, CONTRACT), "chain 1"),
        (PaymentTerms(PAYEE, 1, 31337, b"\xdd" * 20), "contract 0xdddd"),
        (PaymentTerms(bytes(20), 1, 31337, CONTRACT), "payee address"),
        (PaymentTerms(b"\x01", 1, 31337, CONTRACT), "payee address"),
    ]:
        with pytest.raises(PaymentError, match=reason):
            check_terms(terms, max_price_per_mib=100, chain_id=31337, contract=CONTRACT)


# -- payer -----------------------------------------------------------------------------------


def test_budget_reserve_is_all_or_nothing() -> None:
    budget = Budget(100, committed=30)
    budget.reserve(70)
    with pytest.raises(InsufficientFunds, match="top up"):
        budget.reserve(1)
    assert (budget.committed, budget.available) == (100, 0)
    budget.set_deposit(150)
    budget.reserve(50)
    assert budget.available == 0
    with pytest.raises(ValueError):
        Budget(-1)


def test_budget_is_thread_safe() -> None:
    budget = Budget(5000)
    granted = []

    def spend() -> None:
        count = 0
        for _ in range(2000):
            try:
                budget.reserve(1)
                count += 1
            except InsufficientFunds:
                pass
        granted.append(count)

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 5000 == budget.committed


def test_payer_signs_cumulative_amounts_from_cumulative_bytes() -> None:
    session = payer_session(Budget(10**18), price=1001, base=5)
    first = paid_for(session, MIB // 2)
    second = paid_for(session, MIB // 2)
    assert first is not None and second is not None
    assert (first.cumulative, second.cumulative) == (5 + 500, 5 + 1001)
    assert second.payee == PAYEE and second.epoch == 0 and second.payer == session.signer.address
    assert paid_for(session, 0) is None
    assert paid_for(session, 1) is None  # a sliver worth under one wei: nothing to sign
    assert session.verified_bytes == MIB + 1
    assert session.budget.committed == 1001


def test_payer_never_signs_past_the_deposit() -> None:
    budget = Budget(price_of(3 * MIB, PRICE))
    session = payer_session(budget)
    for _ in range(3):
        assert session.affordable(MIB)
        paid_for(session, MIB)
    assert not session.affordable(MIB) and session.affordable(0)
    with pytest.raises(InsufficientFunds):
        paid_for(session, MIB)
    assert (session.cumulative, session.verified_bytes) == (price_of(3 * MIB, PRICE), 3 * MIB)
    budget.set_deposit(budget.deposit + price_of(MIB, PRICE))  # a top-up
    signed = paid_for(session, MIB)
    assert signed is not None and signed.cumulative == price_of(4 * MIB, PRICE)


@settings(max_examples=50, deadline=None)
@given(
    deposit=st.integers(0, 10**7),
    steps=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3 * MIB)), max_size=40),
)
def test_one_budget_across_connections(deposit: int, steps: list[tuple[int, int]]) -> None:
    budget = Budget(deposit)
    sessions = [payer_session(budget, payee=bytes([i + 1]) * 20, price=1000) for i in range(3)]
    for index, nbytes in steps:
        with suppress(InsufficientFunds):
            paid_for(sessions[index], nbytes)
        assert budget.committed == sum(session.cumulative for session in sessions) <= deposit


def test_a_killed_fetcher_never_overspends(tmp_path: Path) -> None:
    """Kill the fetcher at each point of the shell's order (sign → record → send) and restart
    it from its ledger: what the payees hold never exceeds the deposit."""
    deposit = price_of(10 * MIB, PRICE)
    ledger = VoucherLedger(tmp_path / "vouchers.sqlite")
    signer = VoucherSigner(PAYER_KEY, DOMAIN)
    received: dict[bytes, int] = {PAYEE: 0, PAYEE2: 0}

    def start(payee: bytes, budget: Budget) -> PayerSession:
        base = ledger.latest(Role.SIGNED, DOMAIN, signer.address, payee, 0)
        return PayerSession(signer, payee, PRICE, 0, base.cumulative if base else 0, budget)

    for crash_point in ["after sign", "after record", None] * 3:
        budget = Budget(deposit, ledger.committed(DOMAIN, signer.address, 0))
        sessions = [start(PAYEE, budget), start(PAYEE2, budget)]
        try:
            for round_ in range(4):
                for session in sessions:
                    signed = paid_for(session, MIB)
                    assert signed is not None
                    if crash_point == "after sign" and round_ == 2:
                        raise SystemExit  # the voucher never reached the ledger or the wire
                    ledger.record_signed(DOMAIN, signed, nbytes=MIB)
                    if crash_point == "after record" and round_ == 2:
                        raise SystemExit  # recorded, never sent
                    received[signed.payee] = signed.cumulative
        except (SystemExit, InsufficientFunds):
            pass
        assert sum(received.values()) <= deposit
        assert ledger.committed(DOMAIN, signer.address, 0) <= deposit
    assert sum(received.values()) > deposit - 2 * price_of(MIB, PRICE)  # it did spend
    ledger.close()


# -- payee -----------------------------------------------------------------------------------


def test_first_window_is_free_then_a_voucher_is_needed() -> None:
    payee = payee_session(voucher_timeout=10.0)
    for _ in range(4):
        assert payee.decide(MIB, 0.0) is SERVE
    waiting = payee.decide(1, 0.0)
    assert waiting.action is Action.WAIT and "first voucher" in waiting.reason
    assert payee.deadline == 10.0
    assert payee.decide(1, 10.0).action is Action.WAIT
    refused = payee.decide(1, 10.5)
    assert refused.action is Action.REFUSE and "no voucher" in refused.reason
    assert payee.served == 4 * MIB  # nothing unserved was counted


def test_a_window_smaller_than_a_piece_serves_one_piece_at_a_time() -> None:
    """A piece always goes once everything before it is paid (the seeder risks that one
    piece): a window below the piece size means stop-and-wait, not a deadlock."""
    payer = payer_session(Budget(10**30))
    payee = PayeeSession(DOMAIN, PAYEE, PRICE, credit_window=256 << 10, voucher_timeout=10.0)
    assert payee.decide(MIB, 0.0) is SERVE  # the first piece, on credit
    assert payee.decide(MIB, 0.0).reason == "waiting for the payer's first voucher"
    pay(payer, payee, MIB)
    payee.set_pool(Pool(deposit=10**30), 0.0)
    assert payee.decide(MIB, 0.0) is SERVE  # paid up: the next one
    waiting = payee.decide(1, 0.0)
    assert waiting.action is Action.WAIT and waiting.reason == "waiting for a voucher"
    pay(payer, payee, MIB)
    assert payee.decide(MIB, 0.0) is SERVE
    assert payee.unpaid == price_of(MIB, PRICE)  # never more than that one piece


def test_payee_serves_while_paid_within_the_window() -> None:
    payer, payee = payer_session(Budget(10**30)), payee_session()
    for _ in range(4):
        assert payee.decide(MIB, 0.0) is SERVE
    assert not payee.needs_pool(0.0)
    assert pay(payer, payee, MIB) == price_of(MIB, PRICE)
    assert payee.payer == payer.signer.address and payee.needs_pool(0.0)
    # beyond the first window the pool must be known
    assert payee.decide(MIB, 1.0).reason == "waiting for a fresh read of the payer's pool"
    payee.set_pool(Pool(deposit=10**30), 1.0)
    assert not payee.needs_pool(1.0) and payee.needs_pool(31.0)
    assert payee.decide(MIB, 1.0) is SERVE
    assert payee.unpaid == price_of(4 * MIB, PRICE)
    # a pool read older than the maximum age makes it wait again
    assert payee.decide(MIB, 200.0).action is Action.WAIT
    payee.set_pool(Pool(deposit=10**30), 200.0)
    # now 4 MiB behind: the window is full
    assert payee.decide(1, 200.0).reason == "waiting for a voucher"
    pay(payer, payee, MIB)
    assert payee.decide(MIB, 200.0) is SERVE
    assert payee.deadline is None


def test_accept_counts_nothing_until_credit() -> None:
    payer, payee = payer_session(Budget(10**30)), payee_session()
    first = paid_for(payer, MIB)
    assert first is not None
    with pytest.raises(LocalProtocolError, match="bind"):
        payee.accept(first)
    payee.bind(first, previous=0)
    assert payee.accept(first) == price_of(MIB, PRICE)
    assert payee.paid == 0
    payee.credit(first)
    assert payee.paid == first.cumulative
    with pytest.raises(InvalidTicket, match="not above"):
        payee.accept(first)  # a replay
    with pytest.raises(LocalProtocolError, match="already bound"):
        payee.bind(first)


def test_accept_without_the_signature_still_orders_vouchers_before_credit() -> None:
    """A shell that verifies in batches accepts the next voucher before the last one is
    credited: each must be above the last accepted, so a replay in flight is caught."""
    payer, payee = payer_session(Budget(10**30)), payee_session()
    first, second = paid_for(payer, MIB), paid_for(payer, MIB)
    assert first is not None and second is not None
    payee.bind(first, previous=0)
    forged = SignedVoucher(Voucher(first.payer, first.payee, first.epoch, 10**20), first.signature)
    assert payee.accept(first, check_signature=False) == price_of(MIB, PRICE)
    with pytest.raises(InvalidTicket, match="not above"):
        payee.accept(first, check_signature=False)  # replayed before the first is credited
    assert payee.accept(second, check_signature=False) == price_of(MIB, PRICE)
    assert payee.paid == 0  # nothing counted yet
    payee.credit(first)
    payee.credit(second)
    assert payee.paid == second.cumulative
    assert payee.accept(forged, check_signature=False) > 0  # the shell's batch must verify it
    with pytest.raises(InvalidTicket):
        payee_for_forged = payee_session()
        payee_for_forged.bind(first, previous=0)
        payee_for_forged.accept(forged)  # checked here by default


def test_a_new_session_continues_from_the_ledger() -> None:
    """owed = previous + this session's bytes; paid starts at previous."""
    payer = payer_session(Budget(10**30), base=777)
    payee = payee_session()
    assert payee.decide(MIB, 0.0) is SERVE
    pay(payer, payee, MIB, previous=777)
    assert (payee.owed, payee.paid, payee.unpaid) == (777 + price_of(MIB, PRICE),) * 2 + (0,)


@pytest.mark.parametrize(
    ("signed_by", "payee", "epoch", "reason"),
    [
        (OTHER_KEY, PAYEE, 0, "recovers to"),  # a forged payer
        (PAYER_KEY, PAYEE2, 0, "not this seeder"),
        (PAYER_KEY, PAYEE, 9, "pool is at epoch 0"),
    ],
)
def test_bind_rejects(signed_by: bytes, payee: bytes, epoch: int, reason: str) -> None:
    signer = VoucherSigner(signed_by, DOMAIN)
    signed = signer.sign(Voucher(signer.address, payee, epoch, 1))
    claimed = SignedVoucher(
        Voucher(VoucherSigner(PAYER_KEY, DOMAIN).address, payee, epoch, 1), signed.signature
    )
    session = payee_session()
    session.pool = Pool(deposit=1)  # as if read before
    with pytest.raises(InvalidTicket, match=reason):
        session.bind(claimed)
    assert session.payer is None


def test_accept_rejects() -> None:
    payer, payee = payer_session(Budget(10**30)), payee_session()
    pay(payer, payee, MIB)
    other = VoucherSigner(OTHER_KEY, DOMAIN)
    cases = [
        (other.sign(Voucher(other.address, PAYEE, 0, 10**20)), "on a connection paid by"),
        (paid_for(payer_session(Budget(10**30), epoch=1), 2 * MIB), "session is in 0"),
        (paid_for(payer_session(Budget(10**30), payee=PAYEE2), 2 * MIB), "not this seeder"),
        (paid_for(payer_session(Budget(10**30)), MIB // 2), "not above"),
        (
            VoucherSigner(PAYER_KEY, Domain(1, CONTRACT)).sign(
                Voucher(payer.signer.address, PAYEE, 0, 10**20)
            ),
            "recovers to",
        ),
    ]
    for signed, reason in cases:
        assert signed is not None
        with pytest.raises(InvalidTicket, match=reason):
            payee.accept(signed)
    payee.set_pool(Pool(deposit=10**30, epoch=4), 0.0)
    with pytest.raises(InvalidTicket, match="pool is at epoch 4"):
        payee.accept(paid_for(payer_session(Budget(10**30)), 3 * MIB))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        payee.credit(cases[0][0])  # type: ignore[arg-type]


def test_overpaying_is_accepted() -> None:
    payer, payee = payer_session(Budget(10**30), base=10**9), payee_session()
    pay(payer, payee, MIB)  # the payee's ledger had nothing: the payer pays more than owed
    assert payee.paid > payee.owed and payee.unpaid == 0


@pytest.mark.parametrize(
    ("pool", "reason"),
    [
        (Pool(deposit=10**30, flagged=True), "flagged"),
        (Pool(deposit=10**30, unlock_at=1_700_000_000), "withdrawing"),
        (Pool(deposit=10**30, epoch=1), "epoch 1"),
        (Pool(deposit=price_of(2 * MIB, PRICE) - 1), "cannot cover"),
    ],
)
def test_pool_refusals(pool: Pool, reason: str) -> None:
    payer, payee = payer_session(Budget(10**30)), payee_session()
    assert payee.decide(MIB, 0.0) is SERVE
    pay(payer, payee, MIB)
    payee.set_pool(pool, 0.0)
    decision = payee.decide(MIB, 0.0)  # even inside the first window
    assert decision.action is Action.REFUSE and reason in decision.reason


def test_redeemed_amounts_count_against_the_deposit() -> None:
    payer, payee = payer_session(Budget(10**30)), payee_session()
    payee.decide(2 * MIB, 0.0)
    pay(payer, payee, 2 * MIB)
    payee.set_pool(Pool(deposit=price_of(2 * MIB, PRICE)), 0.0)
    assert payee.decide(MIB, 0.0).action is Action.REFUSE
    payee.set_redeemed(price_of(MIB, PRICE))  # what we redeemed left the deposit already
    assert payee.decide(MIB, 0.0) is SERVE


def test_free_content_is_always_served() -> None:
    payee = PayeeSession(DOMAIN, PAYEE, 0, credit_window=0)
    assert all(payee.decide(MIB, float(t)) is SERVE for t in range(100))


def test_default_credit_window() -> None:
    assert DEFAULT_CREDIT_WINDOW == 64 * MIB
    assert PayeeSession(DOMAIN, PAYEE, PRICE).credit_window == DEFAULT_CREDIT_WINDOW


# -- payer and payee together ----------------------------------------------------------------


class PaymentExchange(RuleBasedStateMachine):
    """A payer and a payee joined by pieces and vouchers in flight, with a pool read whenever
    the payee asks, time moving on, and sometimes vouchers lost (or a payer that cheats)."""

    @initialize(
        price=st.sampled_from([1, 999, PRICE, 10**18]),
        window=st.sampled_from([MIB, 3 * MIB, 8 * MIB]),
        deposit_mib=st.sampled_from([0, 1, 2]) | st.integers(0, 40),
    )
    def setup(self, price: int, window: int, deposit_mib: int) -> None:
        self.price = price
        self.window = window
        self.deposit = price_of(deposit_mib * MIB, price)
        self.budget = Budget(self.deposit)
        self.payer = payer_session(self.budget, price=price)
        self.payee = PayeeSession(DOMAIN, PAYEE, price, credit_window=window)
        self.pool = Pool(deposit=self.deposit)
        self.pieces: deque[int] = deque()
        self.vouchers: deque[SignedVoucher] = deque()
        self.now = 0.0
        self.delivered = 0
        self.broke = False  # the payer ran out of deposit
        self.lost = False  # a voucher never arrived
        self.refused = False
        #: The dearest piece (what it added to the owed total) served while everything before it
        #: was paid for: it may exceed the window (a window smaller than a piece must not
        #: deadlock).
        self.largest_lone_piece = 0

    @rule(size=st.integers(1, 3 * MIB // 2) | st.sampled_from([MIB, 2 * MIB]))
    def request(self, size: int) -> None:
        if self.refused:
            return
        owed_before = self.payee.owed
        all_paid = owed_before <= self.payee.paid
        decision = self.payee.decide(size, self.now)
        event(f"decide: {decision.action.value} {decision.reason}")
        if decision is SERVE:
            if all_paid:
                # its marginal price: the owed total is priced as a whole and rounded down, so
                # a piece after a sliver priced at 0 can add one wei more than it costs alone
                marginal = self.payee.owed - owed_before
                self.largest_lone_piece = max(self.largest_lone_piece, marginal)
            self.pieces.append(size)
            if self.payee.pool is not None:  # a known pool bounds what is served on credit
                assert self.payee.owed <= self.deposit
        elif decision.action is Action.REFUSE:
            self.refused = True

    @precondition(lambda self: self.pieces)
    @rule()
    def deliver_piece(self) -> None:
        size = self.pieces.popleft()
        self.delivered += size
        try:
            signed = paid_for(self.payer, size)
        except InsufficientFunds:
            event("payer out of deposit")
            self.broke = True
            return
        if signed is not None:
            self.vouchers.append(signed)

    @precondition(lambda self: self.vouchers)
    @rule(lose=st.integers(0, 9).map(lambda n: n == 0))  # one voucher in ten is lost
    def deliver_voucher(self, lose: bool) -> None:
        signed = self.vouchers.popleft()
        if lose:
            self.lost = True
            return
        if self.payee.payer is None:
            self.payee.bind(signed)
        self.payee.accept(signed)
        self.payee.credit(signed)

    @rule(dt=st.sampled_from([0.5, 10.0, 45.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        if self.payee.needs_pool(self.now):
            self.payee.set_pool(self.pool, self.now)

    @rule()
    def quiesce(self) -> None:
        while self.pieces:
            self.deliver_piece()
        while self.vouchers:
            self.deliver_voucher(False)
        if not self.broke:
            assert self.payer.cumulative == price_of(self.delivered, self.price)
        if not (self.broke or self.lost):
            assert self.payee.paid == self.payer.cumulative == self.payee.owed

    @invariant()
    def payee_is_never_more_than_a_window_or_one_piece_behind(self) -> None:
        allowed = max(price_of(self.window, self.price), self.largest_lone_piece)
        assert self.payee.owed - self.payee.paid <= allowed

    @invariant()
    def payer_never_commits_beyond_its_deposit(self) -> None:
        assert self.budget.committed == self.payer.cumulative <= self.deposit

    @invariant()
    def nobody_is_paid_for_what_was_not_served(self) -> None:
        assert self.payee.paid <= self.payer.cumulative <= self.payee.owed


TestPaymentExchange = PaymentExchange.TestCase
TestPaymentExchange.settings = settings(
    max_examples=150,
    stateful_step_count=80,
    deadline=None,
)
