"""Group commit for per-piece vouchers: sign or verify, then record, in batches.

A paying fetcher signs a voucher after each verified piece and records it before sending it;
a charging seeder verifies each voucher and records it before counting it.  One by one that
is 350 µs a voucher on each side (an ECDSA operation, 30–50 µs, an SQLite transaction and
the glue around them), spent in the middle of the transfer.

The queue keeps the rules and shares the costs: the vouchers of a short interval (``linger``,
cut short once a payer's queued vouchers pay for ``flush_bytes`` or when :meth:`flush` says an
upload waits for its credit) are signed or verified together and recorded in the ledger in
one transaction.  Then each job's ``done`` (or ``failed``) runs, in submission order; only then
is a voucher sent, or counted.  A process killed before the commit has sent nothing and
counted nothing.

Where a batch runs: on the event loop.  A batch of 8–16 vouchers takes 0.5–1.5 ms there; in a
worker thread it cost more than that in CPU (the round trip alone ~170 µs) and the thread's
Python contended for the GIL with the loop and the hashing threads — measured on a 1 GiB paid
transfer, the loop was 3–6 % faster end to end.  Only what can block goes to threads: the WAL
checkpoint (its fsync can take seconds behind a big download; see
:meth:`VoucherLedger.defer_checkpoints`), and every commit of a ``durable`` ledger (one fsync
each).

Jobs run in submission order, one batch at a time, so a payee's vouchers are signed, recorded
and sent in cumulative order.  A closing session calls :meth:`VoucherQueue.settle` so that the
voucher for its last piece still goes out (the session flushes its outbox afterwards).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trio

from thetadist.errors import InvalidTicket, StoreError
from thetadist.pay.ledger import Role, VoucherLedger, VoucherRecord
from thetadist.pay.voucher import Domain, PayerKeys, SignedVoucher, Voucher, VoucherSigner

#: How long the first job of a batch waits for others.  A batch's transaction and wake-up
#: cost the same for 1 voucher or 16: at full speed (500+ vouchers a second) this makes
#: batches of 10 or more.
LINGER = 0.025
#: A payer's batches wait longer: at full speed ``FLUSH_BYTES`` starts them first (16 MiB is
#: ~30 ms at 500 MB/s); slower, a payee extending a 64 MiB window loses nothing by it.
PAYER_LINGER = 0.05
#: A batch goes at once when its vouchers pay for this many bytes: a payer's signed-but-unsent
#: vouchers are credit its payee extends meanwhile (a payee's window is 64 MiB by default;
#: a smaller one lowers this, see :func:`flush_bytes_for`).  16 MiB rather than 8 halves the
#: payer's batches (and so its payee's): paid ÷ free on 1 GiB went from 1.064 to 1.007, the
#: medians of 12 paired rounds in one run (docs/benchmarks.md).
FLUSH_BYTES = 16 * 1024 * 1024
#: Jobs per batch (one ledger transaction): a full batch holds the event loop ~5 ms.
MAX_BATCH = 64
#: Batches committed between two WAL checkpoints (a batch writes a few 1 KiB pages).
CHECKPOINT_EVERY = 256

Done = Callable[[SignedVoucher, int], None]
Failed = Callable[[InvalidTicket | StoreError], None]


def flush_bytes_for(credit_window: int | None) -> int:
    """How many bytes of a payer's queued vouchers start their batch at once, for a payee that
    serves ``credit_window`` bytes ahead of payment (None: it did not say).

    A quarter of the window: the rest has to cover what is in flight meanwhile (the payee's
    outbox, both socket buffers, the pieces being hashed) and the payee's own batch.  Held
    longer, the vouchers are what the payee waits for: with an 8 MiB window and 8 MiB batches a
    1 GiB transfer took 7.9 s instead of 2.0 s.
    """
    if credit_window is None:
        return FLUSH_BYTES
    return max(1, min(FLUSH_BYTES, credit_window // 4))


@dataclass(slots=True, eq=False)
class VoucherJob:
    """One voucher to sign (``signer`` set) or verify (``signed`` set), then record.

    ``done(signed, amount)`` runs on the event loop once it is committed (``amount``: the step
    over the ledger's previous head); ``failed(error)`` instead when the signature is bad, the
    ledger refuses it as not above its head, or the ledger cannot be written.
    """

    role: Role
    domain: Domain
    done: Done
    failed: Failed
    voucher: Voucher | None = None
    signer: VoucherSigner | None = None
    signed: SignedVoucher | None = None
    piece: int | None = None
    nbytes: int = 0
    #: Start the batch as soon as the queued vouchers pay for this many bytes.
    flush_bytes: int = FLUSH_BYTES
    outcome: int | InvalidTicket | StoreError | None = None


def _head_key(domain: Domain, signed: SignedVoucher) -> tuple[object, ...]:
    return (domain, signed.payer, signed.payee, signed.epoch)


class VoucherQueue:
    """Batches the voucher jobs of one ledger; run :meth:`run` in a nursery."""

    def __init__(
        self, ledger: VoucherLedger, *, linger: float = LINGER, flush_bytes: int = FLUSH_BYTES
    ) -> None:
        self.ledger = ledger
        self.linger = linger
        self.flush_bytes = flush_bytes
        self._pending: list[VoucherJob] = []
        self._pending_bytes = 0
        self._flush_at = flush_bytes  # the lowest flush_bytes of the pending jobs
        self._wakeup = trio.Event()
        self._urgent = trio.Event()
        self._in_flight = False
        self._landed = trio.Event()
        self._checkpointing = False
        #: Payers' keys: a received voucher is checked against its payer's key once known.
        self.payer_keys = PayerKeys()

    def sign(
        self,
        signer: VoucherSigner,
        voucher: Voucher,
        *,
        piece: int | None,
        nbytes: int,
        done: Done,
        failed: Failed,
        flush_bytes: int = FLUSH_BYTES,
    ) -> None:
        """Sign ``voucher`` and record it (Role.SIGNED); ``done`` sends it.  The batch starts
        at once when the queued vouchers pay for ``flush_bytes`` (or the queue's own limit)."""
        self._submit(
            VoucherJob(
                Role.SIGNED,
                signer.domain,
                done,
                failed,
                voucher=voucher,
                signer=signer,
                piece=piece,
                nbytes=nbytes,
                flush_bytes=flush_bytes,
            )
        )

    def verify(self, domain: Domain, signed: SignedVoucher, *, done: Done, failed: Failed) -> None:
        """Verify ``signed`` and record it (Role.RECEIVED); ``done`` counts it."""
        self._submit(VoucherJob(Role.RECEIVED, domain, done, failed, signed=signed))

    def _submit(self, job: VoucherJob) -> None:
        self._pending.append(job)
        self._pending_bytes += job.nbytes
        self._flush_at = min(self._flush_at, job.flush_bytes)
        self._wakeup.set()
        if self._pending_bytes >= self._flush_at or len(self._pending) >= MAX_BATCH:
            self._urgent.set()

    def flush(self) -> None:
        """Start on what is queued without lingering (an upload waits for its credit)."""
        if self._pending:
            self._urgent.set()

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing in a worker thread."""
        return not self._pending and not self._in_flight

    async def run(self) -> None:
        """Process batches until cancelled."""
        blocking = self.ledger.durable  # an fsync per commit: a worker thread's job
        if not blocking:
            try:
                self.ledger.defer_checkpoints()
            except StoreError:
                blocking = True  # SQLite may checkpoint in any commit: keep them off the loop
        commits = 0
        async with trio.open_nursery() as nursery:
            while True:
                if not self._pending:
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                with trio.move_on_after(self.linger):
                    await self._urgent.wait()
                self._urgent = trio.Event()
                batch = self._take()
                if not batch:
                    continue  # a closing session settled them meanwhile
                if blocking:
                    await self._in_thread(batch)
                    continue
                self._process(batch)
                self._deliver(batch)
                commits += 1
                if commits >= CHECKPOINT_EVERY and not self._checkpointing:
                    commits = 0
                    self._checkpointing = True
                    nursery.start_soon(self._checkpoint)

    async def _in_thread(self, batch: list[VoucherJob]) -> None:
        self._in_flight = True
        try:
            await trio.to_thread.run_sync(self._process, batch)
        finally:
            # delivered even when cancelled meanwhile: what the thread committed is acted
            # on, and what it never saw goes back to the front of the queue
            self._in_flight = False
            self._deliver(batch)
            self._landed.set()
            self._landed = trio.Event()

    async def _checkpoint(self) -> None:
        try:
            # abandoned on cancel: a node shutting down must not wait on the disk for it
            await trio.to_thread.run_sync(self.ledger.checkpoint, abandon_on_cancel=True)
        except StoreError:
            pass  # the WAL grows until the next one; a commit that cannot write says so itself
        finally:
            self._checkpointing = False

    async def settle(self) -> None:
        """Finish every job submitted so far, now (a closing session's last voucher)."""
        while self._in_flight:
            await self._landed.wait()
        while self._pending:
            batch = self._take()
            self._process(batch)  # on the event loop: a closing session must not linger
            self._deliver(batch)

    def _take(self) -> list[VoucherJob]:
        batch = self._pending[:MAX_BATCH]
        del self._pending[:MAX_BATCH]
        self._recount()
        return batch

    def _recount(self) -> None:
        pending = self._pending
        self._pending_bytes = sum(job.nbytes for job in pending)
        self._flush_at = min([self.flush_bytes, *(job.flush_bytes for job in pending)])

    def _process(self, batch: list[VoucherJob]) -> None:
        """Sign or verify each job, then record the good ones together."""
        records: list[VoucherRecord] = []
        recorded: list[VoucherJob] = []
        # A key's last voucher in the batch becomes its ledger head, the one redeemed: its v
        # must recover the payer.  The others are checked against the payer's known key.
        heads = {
            _head_key(job.domain, job.signed): job
            for job in batch
            if job.signed is not None and job.signer is None
        }
        for job in batch:
            try:
                if job.signer is not None:
                    assert job.voucher is not None
                    job.signed = job.signer.sign(job.voucher)
                else:
                    assert job.signed is not None
                    self.payer_keys.verify(
                        job.signed,
                        job.domain,
                        recover=heads[_head_key(job.domain, job.signed)] is job,
                    )
            except InvalidTicket as exc:
                job.outcome = exc
                continue
            records.append(VoucherRecord(job.role, job.domain, job.signed, job.piece, job.nbytes))
            recorded.append(job)
        try:
            results = self.ledger.record_batch(records)
        except StoreError as exc:
            for job in recorded:
                job.outcome = exc
            return
        for job, result in zip(recorded, results, strict=True):
            job.outcome = result

    def _deliver(self, batch: list[VoucherJob]) -> None:
        unprocessed = [job for job in batch if job.outcome is None]
        if unprocessed:
            self._pending[:0] = unprocessed
            self._recount()
        for job in batch:
            outcome = job.outcome
            if outcome is None:
                continue
            if isinstance(outcome, int):
                assert job.signed is not None
                job.done(job.signed, outcome)
            else:
                job.failed(outcome)
