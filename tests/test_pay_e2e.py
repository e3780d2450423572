"""Paid swarms end to end on a real anvil, every party a real ``thetadist`` process.

seed → paid fetch → redeem → earnings, through the CLI only (wallets, contract deploy, pool
fund, seed --price, fetch --wallet --max-price, tickets redeem, earnings); and the two crash
rules: a seeder killed with SIGKILL keeps every voucher it acted on, a fetcher killed at any
point never promises more than its deposit nor breaks its cumulative sequence.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from anvil import anvil  # noqa: F401  (the fixture)
from swarm_helpers import (
    Proc,
    Procs,
    assert_identical,
    create_manifest,
    make_tree,
    run_thetadist,
)

from thetadist.pay.accounts import price_of
from thetadist.pay.chain import Chain
from thetadist.pay.ledger import Role, VoucherLedger
from thetadist.pay.voucher import Domain

PRICE = 10**15  # wei per MiB (0.001 ether: earnings dwarf the gas of withdrawing them)
PASSPHRASE = "correct horse battery staple"


@dataclass
class World:
    rpc: str
    contract: str
    chain_id: int
    tmp: Path

    def wallet(self, name: str, *, gas_money: int = 10**19) -> tuple[Path, str]:
        path = self.tmp / f"{name}.json"
        summary = run_thetadist("wallet", "new", "-o", path)
        Chain.connect(self.rpc).faucet(summary["address"], gas_money)
        return path, str(summary["address"])

    def chain_args(self) -> list[str]:
        return ["--rpc", self.rpc, "--contract", self.contract]

    @property
    def domain(self) -> Domain:
        return Domain(self.chain_id, bytes.fromhex(self.contract[2:]))


@pytest.fixture
def world(anvil: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:  # noqa: F811
    monkeypatch.setenv("THETADIST_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("THETADIST_LEDGER", raising=False)
    world = World(anvil, "", Chain.connect(anvil).chain_id, tmp_path)
    deployer, _ = world.wallet("deployer")
    deployed = run_thetadist("contract", "deploy", "--wallet", deployer, "--rpc", anvil)
    world.contract = str(deployed["contract"])
    yield world


@pytest.fixture
def procs() -> Iterator[Procs]:
    group = Procs()
    yield group
    group.close()


def build(tmp: Path, mib: int = 24) -> tuple[Path, Path]:
    src = make_tree(
        tmp / "src",
        {"data/big.pak": mib << 20, "bin/game": 700_000, "readme.txt": 1234},
        label=f"pay-{mib}",
    )
    manifest = tmp / "build.tdm"
    create_manifest(src, manifest)
    return src, manifest


def redeem(world: World, wallet: Path, ledger: Path) -> dict[str, object]:
    return run_thetadist(
        "tickets", "redeem", "--wallet", wallet, "--ledger", ledger, *world.chain_args()
    )


def fund(world: World, wallet: Path, deposit: str, collateral: str) -> None:
    run_thetadist(
        "pool",
        "fund",
        "--deposit",
        deposit,
        "--collateral",
        collateral,
        "--wallet",
        wallet,
        *world.chain_args(),
    )


def test_paid_fetch_then_redeem_credits_exactly_the_price_of_what_was_served(
    world: World, procs: Procs
) -> None:
    src, manifest = build(world.tmp)
    seeder_wallet, seeder_address = world.wallet("seeder")
    fetcher_wallet, fetcher_address = world.wallet("fetcher")
    fund(world, fetcher_wallet, "0.1ether", "0.1ether")
    status = run_thetadist("pool", "status", fetcher_address, *world.chain_args())
    assert status["deposit_wei"] == 10**17

    seeder_ledger = world.tmp / "seeder.sqlite"
    fetcher_ledger = world.tmp / "fetcher.sqlite"
    seeder = procs.seeder(
        src,
        manifest,
        "--price",
        f"{PRICE}wei",
        "--wallet",
        seeder_wallet,
        "--ledger",
        seeder_ledger,
        *world.chain_args(),
    )
    fetcher = procs.fetcher(
        manifest,
        world.tmp / "out",
        "--wallet",
        fetcher_wallet,
        "--max-price",
        "0.002ether",
        "--ledger",
        fetcher_ledger,
        *world.chain_args(),
        peers=[seeder.address],
    )
    assert fetcher.wait_exit(120) == 0, fetcher.describe()
    assert_identical(world.tmp / "out", src)
    fetched = fetcher.summary
    assert fetched is not None
    downloaded = fetched["bytes_from_peers_total"]
    assert downloaded == fetched["bytes_total"]
    assert fetched["paid_wei"] == price_of(downloaded, PRICE)
    assert fetched["vouchers_signed"] > 1

    # every voucher the fetcher sent reached the seeder's ledger before it stops
    seeder.wait_for(
        lambda e: e.get("event") == "progress" and e["received_wei"] == fetched["paid_wei"],
        30,
        "the seeder to have received every voucher",
    )
    assert seeder.interrupt_and_wait(10) == 0
    served = seeder.summary
    assert served is not None
    assert served["received_wei"] == fetched["paid_wei"]
    assert served["uploaded_bytes"] == downloaded

    listed = run_thetadist(
        "tickets", "list", "--role", "received", "--limit", "100000", "--ledger", seeder_ledger
    )
    assert listed["vouchers"] == fetched["vouchers_signed"]
    assert listed["amount_wei"] == fetched["paid_wei"]

    redeemed = redeem(world, seeder_wallet, seeder_ledger)
    assert redeemed["vouchers"] == 1  # one payer: its latest cumulative voucher settles all
    assert redeemed["redeemed_wei"] == price_of(downloaded, PRICE)
    earnings = run_thetadist("earnings", seeder_address, *world.chain_args())
    assert earnings["earnings_wei"] == price_of(downloaded, PRICE)
    # redeeming again pays nothing more
    again = redeem(world, seeder_wallet, seeder_ledger)
    assert again["vouchers"] == 0
    chain = Chain.connect(world.rpc)
    before = chain.balance(seeder_address)
    withdrawn = run_thetadist(
        "earnings", "withdraw", "--wallet", seeder_wallet, *world.chain_args()
    )
    assert withdrawn["withdrawn_wei"] == price_of(downloaded, PRICE)
    assert chain.balance(seeder_address) > before
    assert run_thetadist("earnings", seeder_address, *world.chain_args())["earnings_wei"] == 0
    pool = run_thetadist("pool", "status", fetcher_address, *world.chain_args())
    assert pool["deposit_wei"] == 10**17 - price_of(downloaded, PRICE)


def test_a_seeder_killed_with_sigkill_keeps_every_voucher_it_acted_on(
    world: World, procs: Procs
) -> None:
    src, manifest = build(world.tmp, mib=48)
    seeder_wallet, _ = world.wallet("seeder")
    fetcher_wallet, fetcher_address = world.wallet("fetcher")
    fund(world, fetcher_wallet, "0.1ether", "0.1ether")
    seeder_ledger = world.tmp / "seeder.sqlite"
    fetcher_ledger = world.tmp / "fetcher.sqlite"
    window = 2 << 20
    seeder = procs.seeder(
        src,
        manifest,
        "--price",
        f"{PRICE}wei",
        "--credit-window",
        "2MiB",
        "--wallet",
        seeder_wallet,
        "--ledger",
        seeder_ledger,
        *world.chain_args(),
    )
    fetcher = procs.fetcher(
        manifest,
        world.tmp / "out",
        "--wallet",
        fetcher_wallet,
        "--max-price",
        "0.002ether",
        "--ledger",
        fetcher_ledger,
        "--max-download-rate",
        "40MB/s",
        *world.chain_args(),
        peers=[seeder.address],
    )
    wait_for_vouchers(fetcher_ledger, 10, fetcher)
    time.sleep(random.Random(os.getpid()).uniform(0.05, 0.4))
    seeder.kill()  # SIGKILL
    time.sleep(0.5)
    fetcher.send_signal(signal.SIGKILL)
    payer = bytes.fromhex(fetcher_address[2:])
    with VoucherLedger(fetcher_ledger) as book:
        verified = sum(entry.nbytes for entry in book.entries(role=Role.SIGNED, limit=None))
    with VoucherLedger(seeder_ledger) as book:
        kept = book.redeemable(world.domain, _payee_of(book, payer), 1)
    assert kept, "the killed seeder's ledger lost its vouchers"
    # The seeder served past its credit window only on vouchers it had persisted: whatever
    # the fetcher verified is covered by the kept voucher, up to one window.
    cumulative = kept[0].voucher.cumulative
    assert cumulative >= price_of(verified, PRICE) - price_of(window, PRICE) - PRICE
    redeemed = redeem(world, seeder_wallet, seeder_ledger)
    assert redeemed["redeemed_wei"] == cumulative


def wait_for_vouchers(ledger: Path, count: int, proc: Proc, timeout: float = 60) -> None:
    """Until ``proc`` has recorded ``count`` signed vouchers (read-only, beside the writer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.is_alive(), proc.describe()
        with (
            contextlib.suppress(sqlite3.Error),
            contextlib.closing(
                sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=1)
            ) as db,
        ):
            (found,) = db.execute(
                "SELECT ifnull(sum(count), 0) FROM voucher_batches WHERE role='signed'"
            ).fetchone()
            if found >= count:
                return
        time.sleep(0.02)
    raise AssertionError(f"{proc.name} signed fewer than {count} vouchers in {timeout} s")


def _payee_of(book: VoucherLedger, payer: bytes) -> bytes:
    entries = book.entries(role=Role.RECEIVED, payer=payer, limit=1)
    assert entries, "no voucher received at all"
    return entries[0].payee


def test_a_fetcher_killed_at_random_points_never_overspends_nor_forks_its_vouchers(
    world: World, procs: Procs
) -> None:
    src, manifest = build(world.tmp, mib=40)
    seeder_wallet, seeder_address = world.wallet("seeder")
    fetcher_wallet, fetcher_address = world.wallet("fetcher")
    # A deposit that the whole build would overspend: the fetcher must stop at it.
    deposit = price_of(30 << 20, PRICE)
    fund(world, fetcher_wallet, f"{deposit}wei", f"{deposit}wei")
    seeder_ledger = world.tmp / "seeder.sqlite"
    fetcher_ledger = world.tmp / "fetcher.sqlite"
    seeder = procs.seeder(
        src,
        manifest,
        "--price",
        f"{PRICE}wei",
        "--wallet",
        seeder_wallet,
        "--ledger",
        seeder_ledger,
        *world.chain_args(),
    )
    rng = random.Random(20261125)

    def fetcher(name: str) -> Proc:
        return procs.fetcher(
            manifest,
            world.tmp / "out",
            "--wallet",
            fetcher_wallet,
            "--max-price",
            "0.002ether",
            "--ledger",
            fetcher_ledger,
            "--max-download-rate",
            "30MB/s",
            *world.chain_args(),
            peers=[seeder.address],
            name=name,
        )

    for round_number in range(3):
        victim = fetcher(f"fetcher-{round_number}")
        wait_for_vouchers(fetcher_ledger, 1, victim)
        time.sleep(rng.uniform(0.0, 0.5))
        victim.send_signal(signal.SIGKILL)
        victim.wait_exit(10)
    # The last run goes on until the deposit stops it: the fetcher refuses to promise more,
    # or the seeder refuses to serve what the deposit cannot cover.
    last = fetcher("fetcher-last")

    def stopped_by_deposit(_: object) -> bool:
        declined = [e for e in last.of_kind("payment_declined") if "deposit" in e["reason"]]
        refused = [e for e in seeder.of_kind("payment_refused") if "deposit" in e["reason"]]
        spent = not last.is_alive() and last.popen.returncode == 9  # nothing left at start
        return bool(declined or refused or spent)

    seeder.wait_for(stopped_by_deposit, 120, "the deposit to stop the payments")
    last.send_signal(signal.SIGKILL)
    last.wait_exit(10)
    payer = bytes.fromhex(fetcher_address[2:])
    payee = bytes.fromhex(seeder_address[2:])
    with VoucherLedger(fetcher_ledger) as book:
        committed = book.committed(world.domain, payer, 0)
        signed = book.latest(Role.SIGNED, world.domain, payer, payee, 0)
    time.sleep(0.5)  # the last voucher the fetcher sent may still be landing
    with VoucherLedger(seeder_ledger) as book:
        received = book.latest(Role.RECEIVED, world.domain, payer, payee, 0)
    assert committed <= deposit
    assert signed is not None and received is not None
    # every voucher that left the fetcher was in its ledger first: the seeder never holds
    # one above what the fetcher remembers (else a restart would re-sign a lower one)
    assert received.cumulative <= signed.cumulative
    assert not [
        event
        for event in seeder.events
        if event.get("event") == "payment_refused" and "not above" in str(event.get("reason"))
    ], "a restarted fetcher re-signed a cumulative amount the seeder already had"
    seeder.interrupt_and_wait(10)
    redeemed = redeem(world, seeder_wallet, seeder_ledger)
    assert redeemed["redeemed_wei"] == received.cumulative <= deposit
