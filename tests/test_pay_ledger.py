"""The SQLite voucher ledger: heads and audit log, the payer's committed total, redemption
bookkeeping, durability across SIGKILL, hostile files, threads."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thetadist.errors import InvalidTicket, StoreError
from thetadist.pay.ledger import SCHEMA_VERSION, Role, VoucherLedger, VoucherRecord
from thetadist.pay.voucher import MAX_UINT64, MAX_UINT256, Domain, SignedVoucher, Voucher

DOMAIN = Domain(31337, b"\xcc" * 20)
OTHER_DOMAIN = Domain(1, b"\xcc" * 20)
PAYER, PAYER2 = b"\x01" * 20, b"\x02" * 20
PAYEE, PAYEE2 = b"\x0a" * 20, b"\x0b" * 20


def sv(
    cumulative: int, *, payer: bytes = PAYER, payee: bytes = PAYEE, epoch: int = 0
) -> SignedVoucher:
    # the ledger stores, it does not verify: any 65 bytes do as a signature here
    signature = cumulative.to_bytes(32, "big")[-32:] + bytes(32) + b"\x1b"
    return SignedVoucher(Voucher(payer, payee, epoch, cumulative), signature)


@pytest.fixture
def ledger(tmp_path: Path):
    with VoucherLedger(tmp_path / "state" / "vouchers.sqlite") as opened:
        yield opened


def test_latest_and_amounts(ledger: VoucherLedger) -> None:
    assert ledger.latest(Role.RECEIVED, DOMAIN, PAYER, PAYEE, 0) is None
    assert ledger.record_received(DOMAIN, sv(100), piece=0, nbytes=1 << 20, now=1.0) == 100
    assert ledger.record_received(DOMAIN, sv(250), piece=1, nbytes=1 << 20, now=2.0) == 150
    assert ledger.latest(Role.RECEIVED, DOMAIN, PAYER, PAYEE, 0) == sv(250)
    # roles, domains, epochs and parties are separate keys
    assert ledger.latest(Role.SIGNED, DOMAIN, PAYER, PAYEE, 0) is None
    assert ledger.latest(Role.RECEIVED, OTHER_DOMAIN, PAYER, PAYEE, 0) is None
    assert ledger.latest(Role.RECEIVED, DOMAIN, PAYER, PAYEE, 1) is None
    assert ledger.latest(Role.RECEIVED, DOMAIN, PAYER2, PAYEE, 0) is None
    entries = ledger.entries()
    assert [(e.cumulative, e.amount, e.piece, e.nbytes, e.time) for e in entries] == [
        (250, 150, 1, 1 << 20, 2.0),
        (100, 100, 0, 1 << 20, 1.0),
    ]
    assert entries[0].signed == sv(250) and entries[0].role is Role.RECEIVED


def test_a_voucher_not_above_the_head_is_refused_and_not_logged(ledger: VoucherLedger) -> None:
    ledger.record_signed(DOMAIN, sv(100))
    for cumulative in (100, 99, 0):
        with pytest.raises(InvalidTicket, match="not above 100"):
            ledger.record_signed(DOMAIN, sv(cumulative))
    assert len(ledger.entries()) == 1
    ledger.record_signed(DOMAIN, sv(101))  # the connection is still usable
    assert ledger.latest(Role.SIGNED, DOMAIN, PAYER, PAYEE, 0) == sv(101)


def test_committed_sums_latest_signed_per_payee(ledger: VoucherLedger) -> None:
    assert ledger.committed(DOMAIN, PAYER, 0) == 0
    for cumulative in (10, 20, 30):
        ledger.record_signed(DOMAIN, sv(cumulative, payee=PAYEE))
    ledger.record_signed(DOMAIN, sv(5, payee=PAYEE2))
    ledger.record_signed(DOMAIN, sv(1000, payee=PAYEE2, epoch=1))  # another epoch
    ledger.record_signed(OTHER_DOMAIN, sv(1000))  # another chain
    ledger.record_received(DOMAIN, sv(1000, payee=PAYEE2))  # we were paid: not a promise
    ledger.record_signed(DOMAIN, sv(1000, payer=PAYER2))  # another payer
    assert ledger.committed(DOMAIN, PAYER, 0) == 35
    assert ledger.committed(DOMAIN, PAYER, 1) == 1000


def test_redeemable_and_mark_redeemed(ledger: VoucherLedger) -> None:
    ledger.record_received(DOMAIN, sv(500, payer=PAYER))
    ledger.record_received(DOMAIN, sv(900, payer=PAYER2))
    ledger.record_received(DOMAIN, sv(50, payer=PAYER2, epoch=3))
    ledger.record_received(DOMAIN, sv(10_000, payee=PAYEE2))  # another payee
    ledger.record_signed(DOMAIN, sv(10_000))  # our own promise
    found = ledger.redeemable(DOMAIN, PAYEE, min_value=100)
    assert [(r.voucher, r.redeemed, r.value) for r in found] == [
        (sv(900, payer=PAYER2), 0, 900),
        (sv(500), 0, 500),
    ]
    assert len(ledger.redeemable(DOMAIN, PAYEE)) == 3
    # the payer's deposit ran short on the second: it still counts as claimed up to 900
    ledger.mark_redeemed(DOMAIN, [f.voucher for f in found], b"\x77" * 32, [900, 123], now=5.0)
    assert ledger.redeemed(DOMAIN, PAYER2, PAYEE, 0) == 900
    assert ledger.redeemed(DOMAIN, PAYER, PAYEE, 0) == 500
    assert ledger.redeemed(DOMAIN, PAYER, PAYEE2, 0) == 0
    assert [r.voucher for r in ledger.redeemable(DOMAIN, PAYEE)] == [sv(50, payer=PAYER2, epoch=3)]
    ledger.record_received(DOMAIN, sv(800))
    (again,) = ledger.redeemable(DOMAIN, PAYEE, min_value=300)
    assert (again.voucher, again.redeemed, again.value) == (sv(800), 500, 300)
    assert ledger.redeemable(DOMAIN, PAYEE, min_value=301) == []
    # an older redemption landing late never lowers what is claimed
    ledger.mark_redeemed(DOMAIN, [sv(200)], b"\x78" * 32, [0])
    assert ledger.redeemed(DOMAIN, PAYER, PAYEE, 0) == 500
    with pytest.raises(ValueError):
        ledger.mark_redeemed(DOMAIN, [sv(800)], b"", [])


def test_entries_filters(ledger: VoucherLedger) -> None:
    ledger.record_signed(DOMAIN, sv(1, payee=PAYEE))
    ledger.record_signed(DOMAIN, sv(2, payee=PAYEE2))
    ledger.record_received(DOMAIN, sv(3, payer=PAYER2))
    ledger.record_received(OTHER_DOMAIN, sv(4, payer=PAYER2))
    cumulatives = lambda **filters: [e.cumulative for e in ledger.entries(**filters)]  # noqa: E731
    assert cumulatives() == [4, 3, 2, 1]
    assert cumulatives(role=Role.SIGNED) == [2, 1]
    assert cumulatives(payee=PAYEE2) == [2]
    assert cumulatives(payer=PAYER2) == [4, 3]
    assert cumulatives(payer=PAYER2, domain=DOMAIN) == [3]
    assert cumulatives(limit=2) == [4, 3]
    assert cumulatives(limit=None) == [4, 3, 2, 1]


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(st.integers(0, MAX_UINT256), min_size=1, max_size=8, unique=True),
    epoch=st.sampled_from([0, 1, (1 << 63) - 1, 1 << 63, MAX_UINT64]),
)
def test_uint256_order_and_uint64_epochs(tmp_path_factory, values: list[int], epoch: int) -> None:
    path = tmp_path_factory.mktemp("ledger") / "v.sqlite"
    with VoucherLedger(path) as ledger:
        for value in sorted(values):
            ledger.record_received(DOMAIN, sv(value, epoch=epoch))
        best = ledger.latest(Role.RECEIVED, DOMAIN, PAYER, PAYEE, epoch)
        assert best is not None and best.cumulative == max(values) and best.epoch == epoch
        assert [e.epoch for e in ledger.entries()] == [epoch] * len(values)
        (found,) = ledger.redeemable(DOMAIN, PAYEE, min_value=0) or [None]
        if max(values) > 0:
            assert found is not None and found.voucher.epoch == epoch
        big_domain = Domain(MAX_UINT64, b"\xcc" * 20)
        ledger.record_signed(big_domain, sv(max(values), epoch=epoch))
        assert ledger.committed(big_domain, PAYER, epoch) == max(values)
        assert ledger.entries(limit=1)[0].chain_id == MAX_UINT64


def test_reopen_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite"
    with VoucherLedger(path) as ledger:
        ledger.record_received(DOMAIN, sv(7))
        assert ledger._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    with VoucherLedger(path, durable=True) as ledger:
        assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert ledger.latest(Role.RECEIVED, DOMAIN, PAYER, PAYEE, 0) == sv(7)


@pytest.mark.parametrize("durable", [False, True])
def test_a_committed_voucher_survives_sigkill(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "v.sqlite"
    script = f"""
import os, signal
from thetadist.pay.ledger import VoucherLedger
from thetadist.pay.voucher import Domain, SignedVoucher, Voucher
ledger = VoucherLedger({str(path)!r}, durable={durable})
for cumulative in range(1, 101):
    ledger.record_signed(Domain(31337, b"\\xcc" * 20),
                         SignedVoucher(Voucher(b"\\x01" * 20, b"\\x0a" * 20, 0, cumulative),
                                       bytes(64) + b"\\x1b"))
os.kill(os.getpid(), signal.SIGKILL)
"""
    done = subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert done.returncode == -signal.SIGKILL
    with VoucherLedger(path) as ledger:
        assert ledger.committed(DOMAIN, PAYER, 0) == 100
        assert len(ledger.entries(limit=None)) == 100


def test_hostile_files_are_store_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(os.urandom(8192))
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as other:
        other.execute("CREATE TABLE t (x)")
    future = tmp_path / "future.sqlite"
    VoucherLedger(future).close()
    with sqlite3.connect(future) as newer:
        newer.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    directory = tmp_path / "a directory"
    directory.mkdir()
    for path, reason in [
        (garbage, "not a usable voucher ledger"),
        (foreign, "not a voucher ledger"),
        (future, f"has format {SCHEMA_VERSION + 1}"),
        (directory, "voucher ledger"),
    ]:
        with pytest.raises(StoreError, match=reason) as raised:
            VoucherLedger(path)
        assert "\n" not in str(raised.value)
    assert (
        foreign.stat().st_size
        and sqlite3.connect(foreign).execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    )  # somebody else's file is left as it was


def test_closed_ledger_raises_store_error(tmp_path: Path) -> None:
    ledger = VoucherLedger(tmp_path / "v.sqlite")
    ledger.close()
    with pytest.raises(StoreError):
        ledger.committed(DOMAIN, PAYER, 0)


def test_threads_share_one_ledger(ledger: VoucherLedger) -> None:
    """Worker threads recording at once: every voucher lands once, and of two racing for the
    same key with the same amount exactly one wins."""
    payees = [bytes([i]) * 20 for i in range(1, 9)]
    results: list[str] = []
    lock = threading.Lock()

    def work(payee: bytes) -> None:
        for cumulative in range(1, 51):
            ledger.record_signed(DOMAIN, sv(cumulative, payee=payee))
        try:
            ledger.record_signed(DOMAIN, sv(1000, payee=PAYEE))
            outcome = "won"
        except InvalidTicket:
            outcome = "lost"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=work, args=(payee,)) for payee in payees]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["lost"] * 7 + ["won"]
    assert ledger.committed(DOMAIN, PAYER, 0) == 50 * 8 + 1000
    assert len(ledger.entries(limit=None)) == 50 * 8 + 1


def test_a_batch_is_one_transaction_and_refuses_only_what_is_not_above_its_head(
    ledger: VoucherLedger,
) -> None:
    ledger.record_signed(DOMAIN, sv(100))
    batch = [
        VoucherRecord(Role.SIGNED, DOMAIN, sv(150), piece=1, nbytes=10),
        VoucherRecord(Role.SIGNED, DOMAIN, sv(150)),  # the same again: a replay
        VoucherRecord(Role.RECEIVED, DOMAIN, sv(150)),  # another role: another head
        VoucherRecord(Role.SIGNED, DOMAIN, sv(120)),  # below the head the batch moved
        VoucherRecord(Role.SIGNED, DOMAIN, sv(90, payee=PAYEE2)),
        VoucherRecord(Role.SIGNED, DOMAIN, sv(400), piece=2, nbytes=20),
    ]
    results = ledger.record_batch(batch, now=5.0)
    assert [r if isinstance(r, int) else "refused" for r in results] == [
        50,
        "refused",
        150,
        "refused",
        90,
        250,
    ]
    assert all("not above" in str(r) for r in results if isinstance(r, InvalidTicket))
    assert ledger.latest(Role.SIGNED, DOMAIN, PAYER, PAYEE, 0) == sv(400)
    assert ledger.latest(Role.RECEIVED, DOMAIN, PAYER, PAYEE, 0) == sv(150)
    assert ledger.committed(DOMAIN, PAYER, 0) == 400 + 90
    logged = [(e.role, e.cumulative, e.amount, e.piece) for e in ledger.entries(limit=None)]
    assert logged == [
        (Role.SIGNED, 400, 250, 2),
        (Role.SIGNED, 90, 90, None),
        (Role.RECEIVED, 150, 150, None),
        (Role.SIGNED, 150, 50, 1),
        (Role.SIGNED, 100, 100, None),
    ]
    assert ledger.record_batch([]) == []


def test_a_version_2_ledger_is_upgraded_in_place(tmp_path: Path) -> None:
    """Version 2 moved the heads with triggers; version 3 drops them and keeps the data."""
    path = tmp_path / "v2.sqlite"
    with VoucherLedger(path) as ledger:
        ledger.record_received(DOMAIN, sv(70))
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TRIGGER vouchers_move_head AFTER INSERT ON vouchers BEGIN SELECT 1; END"
        )
        old.execute("PRAGMA user_version=2")
    with VoucherLedger(path) as ledger:
        assert ledger.latest(Role.RECEIVED, DOMAIN, PAYER, PAYEE, 0) == sv(70)
        ledger.record_received(DOMAIN, sv(80))
    with sqlite3.connect(path) as upgraded:
        assert upgraded.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert not upgraded.execute(
            "SELECT name FROM sqlite_schema WHERE type='trigger'"
        ).fetchall()


def _wal_frames(path: Path) -> tuple[int, int]:
    """(frames in the WAL, frames of it already copied into the database file)."""
    probe = sqlite3.connect(path, isolation_level=None)
    try:
        _, frames, copied = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        probe.close()
    return frames, copied


def test_deferred_checkpoints_leave_the_wal_to_checkpoint(tmp_path: Path) -> None:
    """With checkpoints deferred no commit copies the WAL into the database file (SQLite's
    own would, past 1000 pages, with two fsyncs on the committing thread); checkpoint() does,
    on a connection of its own, while the ledger stays open and writable."""
    path = tmp_path / "vouchers.sqlite"
    with VoucherLedger(path) as ledger:
        ledger.defer_checkpoints()
        for amount in range(1, 700):  # ~3 pages a commit: past the 1000-page threshold
            ledger.record(Role.RECEIVED, DOMAIN, sv(amount), piece=amount, nbytes=1)
        wal = Path(f"{path}-wal")
        assert wal.stat().st_size > 1000 * 1024
        ledger.checkpoint()
        frames, copied = _wal_frames(path)
        assert frames == copied > 1000
        ledger.record(Role.RECEIVED, DOMAIN, sv(700), piece=700, nbytes=1)
        assert ledger.latest(Role.RECEIVED, DOMAIN, PAYER, PAYEE, 0).cumulative == 700
