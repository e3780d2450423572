"""Paid swarms over real loopback TCP in one process: real vouchers, real SQLite ledgers; the
chain is a stand-in pool table here (tests/test_pay_e2e.py runs the same against anvil)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import trio

import thetadist
from thetadist.events import Event, PaymentDeclined, PaymentRefused, VoucherSigned
from thetadist.net.payments import Payee, Payer, PayerLink, Payments
from thetadist.net.source import DirectorySource
from thetadist.net.swarm import Swarm
from thetadist.pay.accounts import Budget, price_of
from thetadist.pay.ledger import Role, VoucherLedger
from thetadist.pay.voucher import Domain, VoucherSigner, address_of
from thetadist.sample import write_sample_builds

DOMAIN = Domain(31337, bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3"))
PRICE = 1_000_000_000  # wei per MiB


@dataclass(frozen=True)
class Pool:
    deposit: int
    epoch: int = 0
    unlock_at: int = 0
    flagged: bool = False


def payer_for(ledger: VoucherLedger, deposit: int, *, max_price: int = PRICE) -> Payer:
    signer = VoucherSigner(os.urandom(32), DOMAIN)
    return Payer(ledger, signer, 0, Budget(deposit), max_price)


def payee_for(ledger: VoucherLedger, pools: dict[bytes, Pool], **kwargs: float) -> Payee:
    from coincurve import PrivateKey

    address = address_of(PrivateKey(os.urandom(32)).public_key)
    return Payee(ledger, DOMAIN, address, PRICE, pools.__getitem__, **kwargs)


@contextmanager
def funded_pair(
    tmp_path: Path, **payee_options: float
) -> Iterator[tuple[Payer, Payee, VoucherLedger, VoucherLedger]]:
    """A payer with a big deposit and a payee that reads it, each with its own ledger:
    ``(payer, payee, fetcher_ledger, seeder_ledger)``."""
    pools: dict[bytes, Pool] = {}
    with (
        VoucherLedger(tmp_path / "seeder.sqlite") as seeder_ledger,
        VoucherLedger(tmp_path / "fetcher.sqlite") as fetcher_ledger,
    ):
        payer = payer_for(fetcher_ledger, deposit=10**18)
        pools[payer.signer.address] = Pool(deposit=10**18)
        payee = payee_for(seeder_ledger, pools, **payee_options)
        yield payer, payee, fetcher_ledger, seeder_ledger


async def run_pair(
    tmp_path: Path,
    payee: Payee | None,
    payer: Payer | None,
    *,
    free_seeder: bool = False,
    timeout: float = 60,
) -> tuple[thetadist.FetchResult, list[Event], list[Event]]:
    _, v2 = write_sample_builds(tmp_path)
    manifest = thetadist.create_manifest(v2)
    seeder_events: list[Event] = []
    fetcher_events: list[Event] = []
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            origin = await nursery.start(
                partial(
                    thetadist.seed,
                    manifest,
                    v2,
                    listen=("127.0.0.1", 0),
                    payments=Payments(payee=payee),
                    on_event=seeder_events.append,
                )
            )
            peers = [("127.0.0.1", origin.port)]
            if free_seeder:
                # capped, so the paid seeder gets asked for a good share of the pieces
                free = await nursery.start(
                    partial(
                        thetadist.seed,
                        manifest,
                        v2,
                        listen=("127.0.0.1", 0),
                        config=thetadist.SwarmConfig(max_upload_rate=10_000_000),
                    )
                )
                peers.append(("127.0.0.1", free.port))
            fetched = trio.Event()

            async def fetch_to_the_end(task_status: trio.TaskStatus[thetadist.FetchResult]) -> None:
                try:
                    await thetadist.fetch(
                        manifest,
                        tmp_path / "out",
                        peers=peers,
                        payments=Payments(payer=payer),
                        on_event=fetcher_events.append,
                        task_status=task_status,
                    )
                finally:
                    fetched.set()

            result = await nursery.start(fetch_to_the_end)
            # The fetch returns once its connections have closed, its last vouchers sent; the
            # seeder counts them when it has read them and its session has ended.
            await fetched.wait()
            while origin.sessions or (payee is not None and not payee.queue.idle):
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    assert thetadist.verify_tree(manifest, tmp_path / "out").intact
    return result, seeder_events, fetcher_events


async def test_every_byte_from_a_paid_seeder_is_paid_for_exactly(tmp_path: Path) -> None:
    # A small credit window makes the seeder wait on vouchers and read the pool.
    with funded_pair(tmp_path, credit_window=2 << 20) as (
        payer,
        payee,
        fetcher_ledger,
        seeder_ledger,
    ):
        result, seeder_events, fetcher_events = await run_pair(tmp_path, payee, payer)
        downloaded = result.bytes_from_peers_total
        assert downloaded > 0
        owed = price_of(downloaded, PRICE)
        signed = fetcher_ledger.latest(Role.SIGNED, DOMAIN, payer.signer.address, payee.address, 0)
        received = seeder_ledger.latest(
            Role.RECEIVED, DOMAIN, payer.signer.address, payee.address, 0
        )
        assert signed is not None and received is not None
        assert signed.cumulative == received.cumulative == owed
        assert fetcher_ledger.committed(DOMAIN, payer.signer.address, 0) == owed
        vouchers = [e for e in fetcher_events if isinstance(e, VoucherSigned)]
        assert sum(v.bytes for v in vouchers) == downloaded
        # the audit log holds one row per voucher on each side
        assert len(fetcher_ledger.entries(role=Role.SIGNED, limit=None)) == len(vouchers)
        assert len(seeder_ledger.entries(role=Role.RECEIVED, limit=None)) == len(vouchers)
        assert not [e for e in seeder_events if isinstance(e, PaymentRefused)]


async def test_the_payer_learns_the_seeders_credit_window_from_its_terms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window travels in the handshake, so the payer sends vouchers often enough for it
    (a quarter of it at the latest) instead of holding 8 MiB of them while the seeder waits."""
    import thetadist.net.payments as payments_module

    asked: list[int] = []
    real = payments_module.flush_bytes_for

    def recording(window: int) -> int:
        asked.append(window)
        return real(window)

    monkeypatch.setattr(payments_module, "flush_bytes_for", recording)
    with funded_pair(tmp_path, credit_window=3 << 20) as (payer, payee, _, _):
        assert payee.terms.credit_window == 3 << 20
        result, _, fetcher_events = await run_pair(tmp_path, payee, payer)
    assert asked == [3 << 20]  # one paying connection, the seeder's own window
    assert result.bytes_from_peers_total > 0
    assert any(isinstance(e, VoucherSigned) for e in fetcher_events)


async def test_a_voucher_arriving_while_the_seeder_waits_is_verified_at_once(
    tmp_path: Path,
) -> None:
    """With a small window the seeder keeps waiting for credit; each voucher that arrives then
    is what it waits for, so it must not sit out the verification queue's linger (made a
    minute long here: the transfer would take hours)."""
    from thetadist.net.voucher_queue import VoucherQueue

    with funded_pair(tmp_path, credit_window=256 << 10) as (payer, payee, _, seeder_ledger):
        payee.queue = VoucherQueue(seeder_ledger, linger=60)
        result, seeder_events, _ = await run_pair(tmp_path, payee, payer, timeout=45)
    assert result.bytes_from_peers_total > 0
    assert not [e for e in seeder_events if isinstance(e, PaymentRefused)]


async def test_a_slow_chain_never_holds_up_uploads_the_credit_window_covers(
    tmp_path: Path,
) -> None:
    """The payer's pool is read in the background: here the read blocks until the fetch is
    over, and the fetch (well inside the credit window) must still complete."""
    import threading

    release = threading.Event()
    reads: list[bytes] = []
    pools: dict[bytes, Pool] = {}

    def slow_read(payer: bytes) -> Pool:
        reads.append(payer)
        release.wait(60)
        return pools[payer]

    with (
        VoucherLedger(tmp_path / "seeder.sqlite") as seeder_ledger,
        VoucherLedger(tmp_path / "fetcher.sqlite") as fetcher_ledger,
    ):
        payer = payer_for(fetcher_ledger, deposit=10**18)
        pools[payer.signer.address] = Pool(deposit=10**18)
        payee = payee_for(seeder_ledger, pools, credit_window=1 << 30)
        payee.read_pool = slow_read
        try:
            result, _, _ = await run_pair(tmp_path, payee, payer)
        finally:
            release.set()
        assert result.complete and result.bytes_from_peers_total > 0
        assert reads == [payer.signer.address]  # asked once, still unanswered throughout


async def test_a_fetcher_never_promises_past_its_deposit(tmp_path: Path) -> None:
    pools: dict[bytes, Pool] = {}
    with (
        VoucherLedger(tmp_path / "seeder.sqlite") as seeder_ledger,
        VoucherLedger(tmp_path / "fetcher.sqlite") as fetcher_ledger,
    ):
        deposit = price_of(5 << 20, PRICE)  # enough for 5 MiB of a ~30 MiB build
        payer = payer_for(fetcher_ledger, deposit=deposit)
        # The seeder believes in a big pool: only the fetcher's own rule can stop it.
        pools[payer.signer.address] = Pool(deposit=10**18)
        payee = payee_for(seeder_ledger, pools, credit_window=2 << 20)
        # The paid seeder stops being paid; a free seeder supplies the rest.
        _, _, fetcher_events = await run_pair(tmp_path, payee, payer, free_seeder=True)
        assert fetcher_ledger.committed(DOMAIN, payer.signer.address, 0) <= deposit
        declined = [e for e in fetcher_events if isinstance(e, PaymentDeclined)]
        assert any("deposit" in e.reason for e in declined)
        received = seeder_ledger.latest(
            Role.RECEIVED, DOMAIN, payer.signer.address, payee.address, 0
        )
        assert received is not None and received.cumulative <= deposit


async def test_a_seeder_stops_serving_a_payer_whose_deposit_cannot_cover_it(
    tmp_path: Path,
) -> None:
    pools: dict[bytes, Pool] = {}
    with (
        VoucherLedger(tmp_path / "seeder.sqlite") as seeder_ledger,
        VoucherLedger(tmp_path / "fetcher.sqlite") as fetcher_ledger,
    ):
        deposit = price_of(5 << 20, PRICE)
        payer = payer_for(fetcher_ledger, deposit=10**18)  # the payer thinks it is rich
        pools[payer.signer.address] = Pool(deposit=deposit)
        payee = payee_for(seeder_ledger, pools, credit_window=2 << 20)
        _, seeder_events, _ = await run_pair(tmp_path, payee, payer, free_seeder=True)
        refused = [e for e in seeder_events if isinstance(e, PaymentRefused)]
        assert any("deposit" in e.reason for e in refused)
        received = seeder_ledger.latest(
            Role.RECEIVED, DOMAIN, payer.signer.address, payee.address, 0
        )
        assert received is not None and received.cumulative <= deposit


async def test_a_seeder_asking_more_than_max_price_is_not_used(tmp_path: Path) -> None:
    with (
        VoucherLedger(tmp_path / "seeder.sqlite") as seeder_ledger,
        VoucherLedger(tmp_path / "fetcher.sqlite") as fetcher_ledger,
    ):
        payer = payer_for(fetcher_ledger, deposit=10**18, max_price=PRICE - 1)
        payee = payee_for(seeder_ledger, {})
        _, _, fetcher_events = await run_pair(tmp_path, payee, payer, free_seeder=True)
        assert [e for e in fetcher_events if isinstance(e, PaymentDeclined)]
        assert not [e for e in fetcher_events if isinstance(e, VoucherSigned)]
        assert seeder_ledger.entries(limit=None) == []


async def test_a_fetcher_without_a_wallet_gets_nothing_from_a_paid_seeder(
    tmp_path: Path,
) -> None:
    with VoucherLedger(tmp_path / "seeder.sqlite") as seeder_ledger:
        payee = payee_for(seeder_ledger, {})
        result, _, fetcher_events = await run_pair(tmp_path, payee, None, free_seeder=True)
        by_peer = result.bytes_from_peers
        assert len([v for v in by_peer.values() if v]) == 1, by_peer
        assert any("wallet" in e.reason for e in fetcher_events if isinstance(e, PaymentDeclined))


@pytest.mark.parametrize("pool", [Pool(10**18, unlock_at=1), Pool(10**18, flagged=True)])
async def test_a_seeder_stops_serving_an_unlocking_or_flagged_payer(
    tmp_path: Path, pool: Pool
) -> None:
    with (
        VoucherLedger(tmp_path / "seeder.sqlite") as seeder_ledger,
        VoucherLedger(tmp_path / "fetcher.sqlite") as fetcher_ledger,
    ):
        payer = payer_for(fetcher_ledger, deposit=10**18)
        pools = {payer.signer.address: pool}
        payee = payee_for(seeder_ledger, pools, credit_window=2 << 20)
        _, seeder_events, _ = await run_pair(tmp_path, payee, payer, free_seeder=True)
        refused = [e for e in seeder_events if isinstance(e, PaymentRefused)]
        assert refused, "the seeder kept serving"
        # it served at most the credit window (and the piece in flight) before refusing
        received = seeder_ledger.latest(
            Role.RECEIVED, DOMAIN, payer.signer.address, payee.address, 0
        )
        assert received is None or received.cumulative <= price_of((2 << 20) + (2 << 20), PRICE)


async def test_a_payer_that_stops_paying_is_served_one_credit_window_then_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def freeload(self: PayerLink, piece: int, nbytes: int) -> None:
        """Accepts the terms, takes the pieces, never sends a voucher."""

    monkeypatch.setattr(PayerLink, "pay_for", freeload)
    window = 2 << 20
    with (
        VoucherLedger(tmp_path / "seeder.sqlite") as seeder_ledger,
        VoucherLedger(tmp_path / "fetcher.sqlite") as fetcher_ledger,
    ):
        payer = payer_for(fetcher_ledger, deposit=10**18)
        payee = payee_for(seeder_ledger, {}, credit_window=window, voucher_timeout=1)
        result, seeder_events, _ = await run_pair(tmp_path, payee, payer, free_seeder=True)
        refused = [e for e in seeder_events if isinstance(e, PaymentRefused)]
        assert any("no voucher" in e.reason for e in refused), refused
        from_paid = max(result.bytes_from_peers.values(), default=0)
        largest_piece = 1 << 20
        paid_seeder_bytes = sorted(result.bytes_from_peers.values())
        # the paid seeder is the one that served at most a window (plus the piece in flight)
        assert paid_seeder_bytes[0] <= window + largest_piece, result.bytes_from_peers
        assert from_paid > window  # the free seeder supplied the rest


async def test_no_voucher_is_signed_for_a_corrupt_piece(tmp_path: Path) -> None:
    _, v2 = write_sample_builds(tmp_path)
    manifest = thetadist.create_manifest(v2)
    pools: dict[bytes, Pool] = {}
    events: list[Event] = []
    with (
        VoucherLedger(tmp_path / "seeder.sqlite") as seeder_ledger,
        VoucherLedger(tmp_path / "fetcher.sqlite") as fetcher_ledger,
    ):
        payer = payer_for(fetcher_ledger, deposit=10**18)
        pools[payer.signer.address] = Pool(deposit=10**18)
        payee = payee_for(seeder_ledger, pools)
        source = CorruptingSource(manifest, v2)
        liar = Swarm(
            manifest,
            source,
            config=thetadist.SwarmConfig(listen=("127.0.0.1", 0)),
            payments=Payments(payee=payee),
        )
        liar.download_complete.set()
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await nursery.start(liar.run)
                honest = await nursery.start(
                    partial(thetadist.seed, manifest, v2, listen=("127.0.0.1", 0))
                )
                result = await nursery.start(
                    partial(
                        thetadist.fetch,
                        manifest,
                        tmp_path / "out",
                        peers=[("127.0.0.1", liar.port), ("127.0.0.1", honest.port)],
                        payments=Payments(payer=payer),
                        on_event=events.append,
                    )
                )
                while not result.complete:
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
        assert thetadist.verify_tree(manifest, tmp_path / "out").intact
        assert source.corrupted, "the liar was never asked for the corrupt piece"
        assert result.peers_banned == [f"127.0.0.1:{liar.port}"]
        paid = [e for e in events if isinstance(e, VoucherSigned)]
        assert all(e.piece not in source.corrupted for e in paid)
        signed = fetcher_ledger.entries(role=Role.SIGNED, limit=None)
        assert all(entry.piece not in source.corrupted for entry in signed)
        # it paid exactly for the verified bytes the liar sent before it lied
        liar_bytes = result.bytes_from_peers.get(f"127.0.0.1:{liar.port}", 0)
        assert fetcher_ledger.committed(DOMAIN, payer.signer.address, 0) == price_of(
            liar_bytes, PRICE
        )


class CorruptingSource(DirectorySource):
    """Serves the build, except that every fourth piece it serves arrives with a flipped
    byte."""

    def __init__(self, manifest: thetadist.Manifest, root: Path) -> None:
        super().__init__(manifest, root)
        self.served = 0
        self.corrupted: set[int] = set()

    async def read_piece(self, index: int, buffers: object = None) -> bytes:
        data = bytearray(await super().read_piece(index))
        self.served += 1
        if self.served % 4 == 0:
            data[len(data) // 2] ^= 0xFF
            self.corrupted.add(index)
        return bytes(data)
