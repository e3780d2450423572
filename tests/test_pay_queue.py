"""The voucher queue: signs or verifies, records, then delivers, in order and in batches; a
voucher is acted on only once it is in the ledger; nothing is lost to cancellation."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import trio

from thetadist.errors import InvalidTicket, StoreError
from thetadist.net.voucher_queue import FLUSH_BYTES, VoucherQueue, flush_bytes_for
from thetadist.pay.ledger import Role, VoucherLedger
from thetadist.pay.voucher import Domain, SignedVoucher, Voucher, VoucherSigner

DOMAIN = Domain(31337, b"\xcc" * 20)
PAYEE = b"\x0a" * 20


@pytest.fixture
def ledger(tmp_path: Path):
    with VoucherLedger(tmp_path / "vouchers.sqlite") as opened:
        yield opened


class Outcomes:
    """Records each delivery, checking that the ledger already holds what ``done`` gets."""

    def __init__(self, ledger: VoucherLedger, role: Role) -> None:
        self.ledger = ledger
        self.role = role
        self.done: list[tuple[int, int]] = []
        self.failed: list[Exception] = []

    def on_done(self, signed: SignedVoucher, amount: int) -> None:
        head = self.ledger.latest(self.role, DOMAIN, signed.payer, signed.payee, signed.epoch)
        assert head is not None and head.cumulative >= signed.cumulative  # committed first
        self.done.append((signed.cumulative, amount))

    def on_failed(self, error: InvalidTicket | StoreError) -> None:
        self.failed.append(error)


def sign(
    queue: VoucherQueue,
    signer: VoucherSigner,
    outcomes: Outcomes,
    amount: int,
    *,
    piece: int,
    nbytes: int,
    payee: bytes = PAYEE,
    flush_bytes: int = FLUSH_BYTES,
) -> None:
    """Queue ``signer``'s voucher for a cumulative ``amount`` to ``payee``; ``outcomes`` gets
    what the queue makes of it."""
    queue.sign(
        signer,
        Voucher(signer.address, payee, 0, amount),
        piece=piece,
        nbytes=nbytes,
        done=outcomes.on_done,
        failed=outcomes.on_failed,
        flush_bytes=flush_bytes,
    )


async def test_signed_vouchers_are_recorded_in_order_in_few_batches(
    ledger: VoucherLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    signer = VoucherSigner(os.urandom(32), DOMAIN)
    queue = VoucherQueue(ledger, linger=0.05)
    batches: list[int] = []
    record_batch = ledger.record_batch

    def counting(records, **kwargs):  # type: ignore[no-untyped-def]
        batches.append(len(records))
        return record_batch(records, **kwargs)

    monkeypatch.setattr(ledger, "record_batch", counting)
    outcomes = Outcomes(ledger, Role.SIGNED)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run)
        for step in range(1, 21):
            sign(queue, signer, outcomes, step * 100, piece=step, nbytes=1 << 20)
        while not queue.idle:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert outcomes.done == [(step * 100, 100) for step in range(1, 21)]
    assert not outcomes.failed
    assert sum(batches) == 20 and len(batches) <= 2  # submitted together, committed together
    entries = ledger.entries(limit=None)
    assert [e.piece for e in reversed(entries)] == list(range(1, 21))
    for entry in entries:  # real signatures, by the signer
        assert entry.signed.payer == signer.address


async def test_a_forged_or_replayed_voucher_fails_alone(ledger: VoucherLedger) -> None:
    payer = VoucherSigner(os.urandom(32), DOMAIN)
    good = [payer.sign(Voucher(payer.address, PAYEE, 0, amount)) for amount in (10, 20, 30)]
    forged = SignedVoucher(Voucher(payer.address, PAYEE, 0, 25), good[0].signature)
    queue = VoucherQueue(ledger)
    outcomes = Outcomes(ledger, Role.RECEIVED)
    for signed in (good[0], good[1], forged, good[1], good[2]):
        queue.verify(DOMAIN, signed, done=outcomes.on_done, failed=outcomes.on_failed)
    await queue.settle()  # without the runner: processed at once, on the caller's thread
    assert outcomes.done == [(10, 10), (20, 10), (30, 10)]
    assert len(outcomes.failed) == 2
    assert all(isinstance(error, InvalidTicket) for error in outcomes.failed)
    assert [e.cumulative for e in ledger.entries(limit=None)] == [30, 20, 10]


async def test_a_payers_last_voucher_in_a_batch_must_recover_it(ledger: VoucherLedger) -> None:
    """The others are checked against the payer's key, which does not look at v; the last
    becomes the ledger's head, the voucher that is redeemed, so its v must be right."""
    payer = VoucherSigner(os.urandom(32), DOMAIN)
    good = [payer.sign(Voucher(payer.address, PAYEE, 0, amount)) for amount in (10, 20, 30, 40)]

    def other_v(signed: SignedVoucher) -> SignedVoucher:
        return SignedVoucher(
            signed.voucher, signed.signature[:64] + bytes((55 - signed.signature[64],))
        )

    queue = VoucherQueue(ledger)
    outcomes = Outcomes(ledger, Role.RECEIVED)
    for signed in (good[0], other_v(good[1]), good[2]):
        queue.verify(DOMAIN, signed, done=outcomes.on_done, failed=outcomes.on_failed)
    await queue.settle()
    assert outcomes.done == [(10, 10), (20, 10), (30, 10)] and not outcomes.failed
    queue.verify(DOMAIN, other_v(good[3]), done=outcomes.on_done, failed=outcomes.on_failed)
    await queue.settle()
    assert len(outcomes.done) == 3
    assert len(outcomes.failed) == 1 and "recovers to" in str(outcomes.failed[0])
    assert ledger.latest(Role.RECEIVED, DOMAIN, payer.address, PAYEE, 0) == good[2]
    # one batch, two epochs: each epoch's last voucher is a head of its own
    newer = payer.sign(Voucher(payer.address, PAYEE, 1, 5))
    queue.verify(DOMAIN, other_v(good[3]), done=outcomes.on_done, failed=outcomes.on_failed)
    queue.verify(DOMAIN, newer, done=outcomes.on_done, failed=outcomes.on_failed)
    await queue.settle()
    assert outcomes.done[-1] == (5, 5) and len(outcomes.failed) == 2


async def test_an_unwritable_ledger_fails_every_job_and_acts_on_none(
    ledger: VoucherLedger,
) -> None:
    signer = VoucherSigner(os.urandom(32), DOMAIN)
    queue = VoucherQueue(ledger)
    outcomes = Outcomes(ledger, Role.SIGNED)
    ledger.close()
    for amount in (1, 2):
        sign(queue, signer, outcomes, amount, piece=0, nbytes=1)
    await queue.settle()
    assert outcomes.done == []
    assert [type(error) for error in outcomes.failed] == [StoreError, StoreError]


async def test_cancelling_the_runner_loses_no_job(ledger: VoucherLedger) -> None:
    """Cancelled while lingering or while the worker thread runs: what the thread committed
    is delivered, the rest stays queued and ``settle`` finishes it."""
    payer = VoucherSigner(os.urandom(32), DOMAIN)
    outcomes = Outcomes(ledger, Role.RECEIVED)
    queue = VoucherQueue(ledger, linger=0)
    amounts = range(1, 401)
    for amount in amounts:
        signed = payer.sign(Voucher(payer.address, PAYEE, 0, amount))
        queue.verify(DOMAIN, signed, done=outcomes.on_done, failed=outcomes.on_failed)
    with trio.move_on_after(0.002):
        await queue.run()  # cancelled mid-way through its batches
    with trio.CancelScope(shield=True):
        await queue.settle()
    assert queue.idle
    assert [cumulative for cumulative, _ in outcomes.done] == list(amounts)
    assert not outcomes.failed
    assert len(ledger.entries(limit=None)) == len(amounts)


async def test_a_batch_paying_for_flush_bytes_goes_without_lingering(
    ledger: VoucherLedger,
) -> None:
    """Signed but unsent vouchers are credit the payee extends: past ``flush_bytes`` they go
    at once, whatever the linger."""
    signer = VoucherSigner(os.urandom(32), DOMAIN)
    queue = VoucherQueue(ledger, linger=60, flush_bytes=3 << 20)
    outcomes = Outcomes(ledger, Role.SIGNED)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run)
        for amount in (1, 2):
            sign(queue, signer, outcomes, amount, piece=amount, nbytes=1 << 20)
        await trio.sleep(0.2)
        assert outcomes.done == []  # 2 MiB: still lingering
        sign(queue, signer, outcomes, 3, piece=3, nbytes=1 << 20)
        with trio.fail_after(10):
            while len(outcomes.done) < 3:
                await trio.sleep(0.01)
        assert [cumulative for cumulative, _ in outcomes.done] == [1, 2, 3]
        nursery.cancel_scope.cancel()


async def test_a_voucher_for_a_payee_with_a_small_window_goes_at_its_own_threshold(
    ledger: VoucherLedger,
) -> None:
    """A payee that serves 4 MiB ahead must not wait for the queue's 8 MiB: the job's own
    ``flush_bytes`` (a quarter of that window) starts the batch, with the vouchers queued
    before it for other payees."""
    signer = VoucherSigner(os.urandom(32), DOMAIN)
    queue = VoucherQueue(ledger, linger=60)
    outcomes = Outcomes(ledger, Role.SIGNED)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run)
        other = b"\x0b" * 20
        half_mib = 512 << 10
        sign(queue, signer, outcomes, 1, piece=1, nbytes=half_mib, payee=other)  # default window
        await trio.sleep(0.2)
        assert outcomes.done == []  # 512 KiB of 8 MiB: lingering
        threshold = flush_bytes_for(4 << 20)  # 1 MiB, queued with this one
        sign(queue, signer, outcomes, 2, piece=2, nbytes=half_mib, flush_bytes=threshold)
        with trio.fail_after(10):
            while len(outcomes.done) < 2:
                await trio.sleep(0.01)
        assert [cumulative for cumulative, _ in outcomes.done] == [1, 2]
        # the small threshold left with its batch
        sign(queue, signer, outcomes, 3, piece=3, nbytes=half_mib, payee=other)
        await trio.sleep(0.2)
        assert len(outcomes.done) == 2
        nursery.cancel_scope.cancel()


def test_flush_threshold_is_a_quarter_of_the_payees_window() -> None:
    assert flush_bytes_for(None) == FLUSH_BYTES  # terms that do not say
    assert flush_bytes_for(0) == 1  # stop-and-wait: every voucher at once
    assert flush_bytes_for(64 << 20) == FLUSH_BYTES  # capped by the queue's own
    assert flush_bytes_for(16 << 20) == 4 << 20
    assert flush_bytes_for(2) == 1  # every voucher at once, never "never"


async def test_flush_cuts_the_linger_short(ledger: VoucherLedger) -> None:
    payer = VoucherSigner(os.urandom(32), DOMAIN)
    queue = VoucherQueue(ledger, linger=60)
    outcomes = Outcomes(ledger, Role.RECEIVED)
    queue.flush()  # nothing queued: nothing to start
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run)
        signed = payer.sign(Voucher(payer.address, PAYEE, 0, 7))
        queue.verify(DOMAIN, signed, done=outcomes.on_done, failed=outcomes.on_failed)
        await trio.sleep(0.2)
        assert outcomes.done == []
        queue.flush()  # an upload waits for the credit this voucher gives
        with trio.fail_after(10):
            while not outcomes.done:
                await trio.sleep(0.01)
        assert outcomes.done == [(7, 7)]
        nursery.cancel_scope.cancel()


async def _sign_in_batches(queue: VoucherQueue, ledger: VoucherLedger, batches: int) -> None:
    """Submit ``batches`` vouchers, one batch each (the queue flushes past 1 byte)."""
    signer = VoucherSigner(os.urandom(32), DOMAIN)
    outcomes = Outcomes(ledger, Role.SIGNED)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run)
        for amount in range(1, batches + 1):
            sign(queue, signer, outcomes, amount, piece=amount, nbytes=1)
            with trio.fail_after(10):
                while len(outcomes.done) < amount:
                    await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    assert [cumulative for cumulative, _ in outcomes.done] == list(range(1, batches + 1))


async def test_batches_commit_on_the_loop_and_checkpoints_go_to_a_thread(
    ledger: VoucherLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("thetadist.net.voucher_queue.CHECKPOINT_EVERY", 2)
    loop_thread = threading.get_ident()
    processed_on: set[int] = set()
    checkpointed_on: list[int] = []
    queue = VoucherQueue(ledger, linger=60, flush_bytes=1)
    process, checkpoint = queue._process, ledger.checkpoint

    def spying_process(batch):  # type: ignore[no-untyped-def]
        processed_on.add(threading.get_ident())
        process(batch)

    def spying_checkpoint() -> None:
        checkpointed_on.append(threading.get_ident())
        checkpoint()

    monkeypatch.setattr(queue, "_process", spying_process)
    monkeypatch.setattr(ledger, "checkpoint", spying_checkpoint)
    await _sign_in_batches(queue, ledger, 6)
    assert processed_on == {loop_thread}
    assert checkpointed_on and loop_thread not in checkpointed_on
    assert ledger._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0


async def test_a_durable_ledger_commits_in_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One fsync per commit: never on the event loop."""
    with VoucherLedger(tmp_path / "durable.sqlite", durable=True) as ledger:
        queue = VoucherQueue(ledger, linger=60, flush_bytes=1)
        processed_on: set[int] = set()
        process = queue._process

        def spying_process(batch):  # type: ignore[no-untyped-def]
            processed_on.add(threading.get_ident())
            process(batch)

        monkeypatch.setattr(queue, "_process", spying_process)
        await _sign_in_batches(queue, ledger, 3)
        assert processed_on and threading.get_ident() not in processed_on


async def test_a_running_queue_on_a_broken_ledger_fails_the_jobs_not_the_node(
    ledger: VoucherLedger,
) -> None:
    signer = VoucherSigner(os.urandom(32), DOMAIN)
    queue = VoucherQueue(ledger, linger=0)
    outcomes = Outcomes(ledger, Role.SIGNED)
    ledger.close()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run)
        sign(queue, signer, outcomes, 1, piece=0, nbytes=1)
        with trio.fail_after(10):
            while not outcomes.failed:
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    assert outcomes.done == []
    assert [type(error) for error in outcomes.failed] == [StoreError]
