"""The SQLite voucher ledger: heads and audit log, the payer's committed total, redemption
bookkeeping, durability across SIGKILL, hostile files, threads."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thetadist.errors import InvalidTicket, StoreError
from thetadist.pay.ledger import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    LedgerEntry,
    Role,
    VoucherLedger,
    VoucherRecord,
)
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


_KEYS = [
    (role, domain, payer, payee, epoch)
    for role in Role
    for domain in (DOMAIN, Domain(MAX_UINT64, b"\xdd" * 20))
    for payer in (PAYER, PAYER2)
    for payee in (PAYEE, PAYEE2)
    for epoch in (0, MAX_UINT64)
]
_VOUCHERS = st.tuples(
    st.integers(0, len(_KEYS) - 1),
    # small cumulatives collide and go backwards often: replays and races, refused
    st.one_of(st.integers(0, 40), st.integers(0, MAX_UINT256)),
    st.one_of(st.none(), st.integers(0, (1 << 63) - 1)),
    st.integers(0, MAX_UINT64),
    st.binary(min_size=65, max_size=65),
)


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(st.lists(_VOUCHERS, max_size=12), min_size=1, max_size=8), data=st.data())
def test_record_batch_and_entries_match_a_model(
    tmp_path_factory: pytest.TempPathFactory,
    batches: list[list[tuple[int, int, int | None, int, bytes]]],
    data: st.DataObject,
) -> None:
    """Random batches over several keys, replays mixed in: each voucher is accepted exactly
    when above its key's head, and the log lists what was accepted, newest first, numbered
    1, 2, 3… in the order recorded — even when a batch interleaves keys."""
    heads: dict[int, int] = {}
    model: list[LedgerEntry] = []  # oldest first
    path = tmp_path_factory.mktemp("ledger") / "v.sqlite"
    with VoucherLedger(path) as ledger:
        for when, batch in enumerate(batches):
            records, expected = [], []
            for index, cumulative, piece, nbytes, signature in batch:
                role, domain, payer, payee, epoch = _KEYS[index]
                signed = SignedVoucher(Voucher(payer, payee, epoch, cumulative), signature)
                records.append(VoucherRecord(role, domain, signed, piece, nbytes))
                head = heads.get(index, -1)
                if cumulative <= head:
                    expected.append(None)
                    continue
                heads[index] = cumulative
                amount = cumulative - max(head, 0)
                expected.append(amount)
                model.append(
                    LedgerEntry(
                        len(model) + 1, float(when), role, domain.chain_id, domain.contract,
                        payer, payee, epoch, cumulative, amount, piece, nbytes, signature,
                    )
                )  # fmt: skip
            results = ledger.record_batch(records, now=float(when))
            assert [None if isinstance(r, InvalidTicket) else r for r in results] == expected
        newest_first = model[::-1]
        assert ledger.entries(limit=None) == newest_first
        assert [entry.id for entry in newest_first] == list(range(len(model), 0, -1))
        for index, head in heads.items():
            latest = ledger.latest(*_KEYS[index])
            assert latest is not None and latest.cumulative == head
        for _ in range(3):
            role, domain, payer, payee, _ = data.draw(st.sampled_from(_KEYS))
            filters = data.draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "role": st.just(role),
                        "domain": st.just(domain),
                        "payer": st.just(payer),
                        "payee": st.just(payee),
                    },
                )
            )
            limit = data.draw(st.one_of(st.none(), st.integers(0, len(model) + 2)))
            wanted = [entry for entry in newest_first if _matches(entry, filters)][:limit]
            assert ledger.entries(**filters, limit=limit) == wanted


def _matches(entry: LedgerEntry, filters: dict[str, Any]) -> bool:
    return all(
        (entry.chain_id, entry.contract) == (value.chain_id, value.contract)
        if name == "domain"
        else getattr(entry, name) == value
        for name, value in filters.items()
    )


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


#: Format 3, as it was: one ``vouchers`` row per voucher.
_V3_SCHEMA = """
CREATE TABLE vouchers (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('signed', 'received')),
    chain_id INTEGER NOT NULL,
    contract BLOB NOT NULL,
    payer BLOB NOT NULL,
    payee BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    cumulative BLOB NOT NULL,
    amount BLOB NOT NULL,
    piece INTEGER,
    nbytes INTEGER NOT NULL,
    signature BLOB NOT NULL
);
CREATE TABLE heads (
    role TEXT NOT NULL,
    chain_id INTEGER NOT NULL,
    contract BLOB NOT NULL,
    payer BLOB NOT NULL,
    payee BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    cumulative BLOB NOT NULL,
    signature BLOB NOT NULL,
    updated REAL NOT NULL,
    redeemed BLOB NOT NULL DEFAULT (zeroblob(32)),
    PRIMARY KEY (role, chain_id, contract, payer, payee, epoch)
) WITHOUT ROWID;
CREATE TABLE redemptions (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    chain_id INTEGER NOT NULL,
    contract BLOB NOT NULL,
    payer BLOB NOT NULL,
    payee BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    cumulative BLOB NOT NULL,
    paid BLOB NOT NULL,
    tx_hash BLOB NOT NULL
);
"""


def _u256(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _old_ledger(path: Path, version: int, rows: list[tuple[Any, ...]]) -> None:
    """A format 3 (or 2) file holding ``rows`` of (id, time, role, payer, cumulative, amount,
    piece, nbytes), written with raw SQL as that format's code did, heads included."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA page_size=1024")
        db.executescript(_V3_SCHEMA)
        if version == 2:
            db.execute(
                "CREATE TRIGGER vouchers_move_head AFTER INSERT ON vouchers BEGIN SELECT 1; END"
            )
        db.execute("BEGIN")
        for id_, when, role, payer, cumulative, amount, piece, nbytes in rows:
            key = (role, DOMAIN.chain_id, DOMAIN.contract, payer, PAYEE, 0)
            signature = sv(cumulative).signature
            db.execute(
                "INSERT INTO vouchers (id, time, role, chain_id, contract, payer, payee, epoch, "
                "cumulative, amount, piece, nbytes, signature) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (id_, when, *key, _u256(cumulative), _u256(amount), piece, nbytes, signature),
            )
            db.execute(
                "INSERT INTO heads (role, chain_id, contract, payer, payee, epoch, cumulative, "
                "signature, updated) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET "
                "cumulative=excluded.cumulative, signature=excluded.signature",
                (*key, _u256(cumulative), signature, when),
            )
        db.execute("COMMIT")
        db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        db.execute(f"PRAGMA user_version={version}")


def _tables(path: Path) -> tuple[int, list[str]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        names = db.execute("SELECT name FROM sqlite_schema ORDER BY name").fetchall()
    return version, [name for (name,) in names]


_V3_ROWS = [
    # id, time, role, payer, cumulative, amount, piece, nbytes (ids with a gap, as a file may)
    (1, 1.0, "received", PAYER, 100, 100, 0, 1 << 20),
    (2, 2.0, "signed", PAYER2, 7, 7, None, 0),
    (5, 3.0, "received", PAYER, MAX_UINT256, MAX_UINT256 - 100, (1 << 63) - 1, (1 << 63) - 1),
]


def test_a_version_3_ledger_is_upgraded_in_place(tmp_path: Path) -> None:
    """Format 3 had a row per voucher; each becomes a one-voucher batch with the same id, and
    the next batch numbers its vouchers after the largest."""
    path = tmp_path / "v3.sqlite"
    _old_ledger(path, 3, _V3_ROWS)
    with VoucherLedger(path) as ledger:
        assert [
            (e.id, e.time, e.role, e.payer, e.cumulative, e.amount) for e in ledger.entries()
        ] == [
            (5, 3.0, Role.RECEIVED, PAYER, MAX_UINT256, MAX_UINT256 - 100),
            (2, 2.0, Role.SIGNED, PAYER2, 7, 7),
            (1, 1.0, Role.RECEIVED, PAYER, 100, 100),
        ]
        assert [(e.piece, e.nbytes, e.signed) for e in ledger.entries(limit=None)] == [
            ((1 << 63) - 1, (1 << 63) - 1, sv(MAX_UINT256)),
            (None, 0, sv(7, payer=PAYER2)),
            (0, 1 << 20, sv(100)),
        ]
        assert ledger.latest(Role.RECEIVED, DOMAIN, PAYER, PAYEE, 0) == sv(MAX_UINT256)
        assert ledger.committed(DOMAIN, PAYER2, 0) == 7
        ledger.record_batch(
            [VoucherRecord(Role.SIGNED, DOMAIN, sv(c, payer=PAYER2)) for c in (8, 9)], now=4.0
        )
        assert [(e.id, e.cumulative, e.amount) for e in ledger.entries(limit=3)] == [
            (7, 9, 1),
            (6, 8, 1),
            (5, MAX_UINT256, MAX_UINT256 - 100),
        ]
    assert _tables(path) == (SCHEMA_VERSION, ["heads", "redemptions", "voucher_batches"])
    with VoucherLedger(path) as ledger:  # and once upgraded, it stays so
        assert [e.id for e in ledger.entries()] == [7, 6, 5, 2, 1]


def test_connections_opening_a_version_3_ledger_at_once_upgrade_it_once(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite"
    _old_ledger(path, 3, _V3_ROWS)
    opened: list[VoucherLedger] = []
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            opened.append(VoucherLedger(path))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(opened) == 4
    for ledger in opened:
        assert [e.id for e in ledger.entries()] == [5, 2, 1]
        ledger.close()


def test_a_malformed_version_3_ledger_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite"
    _old_ledger(path, 3, _V3_ROWS)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE vouchers SET signature=x'00' WHERE id=2")
    with pytest.raises(StoreError, match="malformed voucher 2"):
        VoucherLedger(path)
    assert _tables(path) == (3, ["heads", "redemptions", "vouchers"])


def test_a_version_2_ledger_is_upgraded_in_place(tmp_path: Path) -> None:
    """Version 2 moved the heads with triggers; version 3 dropped them and kept the data, and
    version 4 packs it into batches."""
    path = tmp_path / "v2.sqlite"
    _old_ledger(path, 2, [(1, 1.0, "received", PAYER, 70, 70, None, 0)])
    with VoucherLedger(path) as ledger:
        assert ledger.latest(Role.RECEIVED, DOMAIN, PAYER, PAYEE, 0) == sv(70)
        ledger.record_received(DOMAIN, sv(80))
        assert [(e.id, e.cumulative, e.amount) for e in ledger.entries()] == [
            (2, 80, 10),
            (1, 70, 70),
        ]
    assert _tables(path) == (SCHEMA_VERSION, ["heads", "redemptions", "voucher_batches"])
    assert SCHEMA_VERSION == 4


@pytest.mark.parametrize(
    "damage",
    [
        "entries=substr(entries, 2)",  # a byte short
        "entries=CAST(entries || x'00' AS BLOB)",  # a byte too many
        "count=count + 1",
        "count=-3",
        "entries='text'",
        "payer=x'01'",
        "role='other'",
        "time='noon'",
    ],
)
def test_a_malformed_batch_is_a_store_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "v.sqlite"
    with VoucherLedger(path) as ledger:
        ledger.record_batch([VoucherRecord(Role.SIGNED, DOMAIN, sv(c)) for c in (1, 2, 3)])
        ledger.record_signed(DOMAIN, sv(4, payee=PAYEE2))
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("PRAGMA ignore_check_constraints=1")
        db.execute(f"UPDATE voucher_batches SET {damage} WHERE id=3")
    with VoucherLedger(path) as ledger:
        with pytest.raises(StoreError, match="malformed batch 3"):
            ledger.entries()
        assert [e.cumulative for e in ledger.entries(limit=1)] == [4]  # what is newer still reads
        ledger.record_signed(DOMAIN, sv(5, payee=PAYEE2))  # and the ledger still records
        assert [e.id for e in ledger.entries(payee=PAYEE2)] == [5, 4]


def test_pieces_and_sizes_out_of_range_are_refused_and_nothing_is_written(
    ledger: VoucherLedger,
) -> None:
    for piece, nbytes in [(-1, 0), (-5, 0), (1 << 63, 0), (None, -1), (None, 1 << 64)]:
        batch = [
            VoucherRecord(Role.SIGNED, DOMAIN, sv(1)),
            VoucherRecord(Role.SIGNED, DOMAIN, sv(2), piece=piece, nbytes=nbytes),
        ]
        with pytest.raises(ValueError, match="piece"):
            ledger.record_batch(batch)
    assert ledger.entries() == [] and ledger.latest(Role.SIGNED, DOMAIN, PAYER, PAYEE, 0) is None
    assert ledger.record_signed(DOMAIN, sv(1)) == 1


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
