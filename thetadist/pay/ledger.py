"""The voucher ledger: every voucher a node signed or received, durably, in one SQLite file.

One file per node (``<state dir>/vouchers.sqlite``) holds both roles:

* ``signed`` — the payer side.  The fetcher records each voucher *before* sending it, and
  :meth:`VoucherLedger.committed` (the sum, over payees, of the latest signed cumulative) is
  what it has promised in total; a restarted fetcher starts its budget from there, so it never
  signs past its deposit across restarts and across seeders.
* ``received`` — the payee side.  The seeder records each verified voucher *before* counting
  it, so what it served on credit is backed by a voucher that survives a crash, and
  :meth:`VoucherLedger.redeemable` finds what is worth redeeming.

Tables: ``vouchers`` is the append-only audit log (one row per per-piece voucher: time, role,
domain, parties, epoch, cumulative, the amount of this step, the piece and bytes it paid for,
the signature).  ``heads`` keeps the best (highest cumulative) voucher per (role, chain,
contract, payer, payee, epoch) plus what of it was redeemed on-chain, so every query a live
session makes is a primary-key lookup whose cost does not grow with the log.
``redemptions`` logs each voucher redeemed on-chain with its transaction.  Amounts are uint256
stored as 32-byte big-endian blobs (byte order is numeric order); epochs and chain ids are
uint64 stored as SQLite's signed 64-bit integers (values from 2**63 up wrap to negative and
back, which keeps equality exact and the common small values readable).

Durability.  The file is in WAL mode.  By default ``synchronous=NORMAL``: a commit is in the
WAL before :meth:`record` returns, so it survives the process being killed (SIGKILL, OOM), but
the last commits before a power loss or kernel crash may be lost, because the WAL is synced at
checkpoints only.  That costs a payee at most the few vouchers of the last moment (the payer's
next voucher, being cumulative, covers them again) and can make a payer under-count what it
committed by as much.  ``durable=True`` selects ``synchronous=FULL``: every commit is fsynced
(one fsync per voucher, a fraction of a millisecond to several milliseconds depending on the
disk) and survives power loss.

One connection serves all threads (``check_same_thread=False``) behind a lock: the swarm
records on its event loop (or, for a durable ledger, from worker threads) and the cost per
record is tens of microseconds, so a pool would add nothing but contention.  A node that
commits on its event loop defers WAL checkpoints to a worker thread
(:meth:`VoucherLedger.defer_checkpoints`).  Several processes may open the same file (SQLite
locks it), but a payer's budget is per process: run one fetcher per wallet and ledger.
"""

from __future__ import annotations

import enum
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from thetadist.errors import InvalidTicket, StoreError
from thetadist.pay.voucher import Domain, SignedVoucher, Voucher, hex_address

#: PRAGMA application_id of a ledger file ("tdvl"), so any other SQLite file is refused.
APPLICATION_ID = 0x7464766C
SCHEMA_VERSION = 3
_U64_WRAP = 1 << 64
_I64_TOP = 1 << 63

_SCHEMA = """
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


#: Version 2 kept the heads with triggers; version 3 moves them in :meth:`record_batch`
#: (once per key per batch instead of once per voucher).  Opening a version 2 file drops them.
_V2_TRIGGERS = ("vouchers_only_forward", "vouchers_move_head")

_HEAD = (
    "SELECT cumulative FROM heads WHERE role=? AND chain_id=? AND contract=? AND payer=? "
    "AND payee=? AND epoch=?"
)


class Role(enum.StrEnum):
    SIGNED = "signed"  # we are the payer
    RECEIVED = "received"  # we are the payee


_INSERT_VOUCHER = (
    "INSERT INTO vouchers (time, role, chain_id, contract, payer, payee, epoch, cumulative, "
    "amount, piece, nbytes, signature) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
)
_UPSERT_HEAD = (
    "INSERT INTO heads (role, chain_id, contract, payer, payee, epoch, cumulative, signature, "
    "updated) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET "
    "cumulative=excluded.cumulative, signature=excluded.signature, updated=excluded.updated"
)


@dataclass(frozen=True, slots=True)
class VoucherRecord:
    """One voucher to append to the log: what :meth:`VoucherLedger.record_batch` takes."""

    role: Role
    domain: Domain
    signed: SignedVoucher
    piece: int | None = None
    nbytes: int = 0


class VoucherLike(Protocol):
    """What :meth:`VoucherLedger.mark_redeemed` needs of a voucher (a SignedVoucher has it)."""

    @property
    def payer(self) -> bytes: ...
    @property
    def payee(self) -> bytes: ...
    @property
    def epoch(self) -> int: ...
    @property
    def cumulative(self) -> int: ...


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One row of the audit log."""

    id: int
    time: float
    role: Role
    chain_id: int
    contract: bytes
    payer: bytes
    payee: bytes
    epoch: int
    cumulative: int
    amount: int
    piece: int | None
    nbytes: int
    signature: bytes

    @property
    def signed(self) -> SignedVoucher:
        return SignedVoucher(
            Voucher(self.payer, self.payee, self.epoch, self.cumulative), self.signature
        )


@dataclass(frozen=True, slots=True)
class Redeemable:
    """The best received voucher of a (payer, epoch) and how much of it is already claimed."""

    voucher: SignedVoucher
    redeemed: int

    @property
    def value(self) -> int:
        """What redeeming it now would pay (if the payer's deposit covers it)."""
        return self.voucher.cumulative - self.redeemed


def _u256(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _int(blob: bytes) -> int:
    return int.from_bytes(blob, "big")


def _i64(value: int) -> int:
    return value - _U64_WRAP if value >= _I64_TOP else value


def _u64(value: int) -> int:
    return value + _U64_WRAP if value < 0 else value


class VoucherLedger:
    """A node's voucher ledger; see the module docstring.  Use as a context manager or close()."""

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = False) -> None:
        self.path = Path(path)
        self.durable = durable
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open voucher ledger {str(self.path)!r}: {exc}") from None
        try:
            self._open()
        except StoreError:
            self._db.close()
            raise
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"{str(self.path)!r} is not a usable voucher ledger: {exc}") from None

    def _open(self) -> None:
        db = self._db
        if db.execute("PRAGMA application_id").fetchone()[0] == 0:
            # a new file, or somebody else's SQLite file: decide under the write lock so two
            # processes creating the same ledger cannot both create the schema
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("PRAGMA application_id").fetchone()[0] == 0:
                    if db.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]:
                        raise StoreError(
                            f"{str(self.path)!r} is an SQLite file but not a voucher ledger"
                        )
                    # small pages: a voucher's commit writes two of them to the WAL
                    db.execute("PRAGMA page_size=1024")
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                db.rollback()
                raise
        if db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            raise StoreError(f"{str(self.path)!r} is not a voucher ledger")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 2:
            version = self._upgrade_from_2()
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"voucher ledger {str(self.path)!r} has format {version}; this version reads "
                f"{SCHEMA_VERSION}"
            )
        # only now, knowing the file is ours, change how it is journaled
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")

    def _upgrade_from_2(self) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 2:  # not upgraded by another process meanwhile
                for trigger in _V2_TRIGGERS:
                    db.execute(f"DROP TRIGGER IF EXISTS {trigger}")
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                version = SCHEMA_VERSION
            db.execute("COMMIT")
        except BaseException:
            db.rollback()
            raise
        return int(version)

    def defer_checkpoints(self) -> None:
        """Stop commits on this connection from checkpointing the WAL; call :meth:`checkpoint`
        instead, from a worker thread.

        By default the commit that grows the WAL past 1000 pages copies it into the database
        file and fsyncs both, on the committing thread: a node that commits on its event loop
        would stall there for as long as the disk takes (seconds, behind a big download's
        dirty pages)."""
        with self._locked() as db:
            db.execute("PRAGMA wal_autocheckpoint=0")

    def checkpoint(self) -> None:
        """Copy the WAL into the database file (blocking: it fsyncs both).  On a connection of
        its own and PASSIVE, so commits go on meanwhile and nothing waits for it."""
        try:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            try:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise StoreError(f"voucher ledger {str(self.path)!r}: checkpoint: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> VoucherLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                self._abandon_transaction()
                raise StoreError(f"voucher ledger {str(self.path)!r}: {exc}") from None
            except BaseException:
                self._abandon_transaction()
                raise

    def _abandon_transaction(self) -> None:
        # never leave a transaction open on the shared connection; if even the rollback
        # fails (a closed connection), the error being raised already says what went wrong
        with suppress(sqlite3.Error):
            if self._db.in_transaction:
                self._db.rollback()

    # -- writing ------------------------------------------------------------------------

    def record_batch(
        self, records: Sequence[VoucherRecord], *, now: float | None = None
    ) -> list[int | InvalidTicket]:
        """Append ``records`` to the log in order, in one transaction, each moving the head of
        its key; return, per record, the amount of its step (its cumulative minus the head
        before it) or the :class:`InvalidTicket` that refused it because it was not above the
        head (a replay, or two sessions racing for one payer and payee: nothing of it is
        written).  Everything returned as an amount is committed (see the module docstring for
        how durably) when this returns.

        One commit per batch is what makes per-piece vouchers cheap: a commit costs more than
        the rows it writes.  The ledger stores; it does not verify signatures — callers do that
        first.
        """
        when = time.time() if now is None else now
        results: list[int | InvalidTicket] = []
        rows: list[tuple[Any, ...]] = []
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")  # heads are read and moved under the write lock
            heads: dict[tuple[Any, ...], int] = {}  # key -> head cumulative, -1 for none yet
            moved: dict[tuple[Any, ...], SignedVoucher] = {}  # key -> its new head
            for record in records:
                signed, domain = record.signed, record.domain
                key = (
                    record.role.value,
                    _i64(domain.chain_id),
                    domain.contract,
                    signed.payer,
                    signed.payee,
                    _i64(signed.epoch),
                )
                if key not in heads:
                    row = db.execute(_HEAD, key).fetchone()
                    heads[key] = _int(row[0]) if row else -1
                head = heads[key]
                if signed.cumulative <= head:
                    results.append(
                        InvalidTicket(
                            f"voucher cumulative {signed.cumulative} is not above {head}, "
                            f"already recorded for payer {hex_address(signed.payer)}"
                        )
                    )
                    continue
                amount = signed.cumulative - max(head, 0)
                heads[key] = signed.cumulative
                moved[key] = signed
                rows.append(
                    (
                        when,
                        *key,
                        _u256(signed.cumulative),
                        _u256(amount),
                        record.piece,
                        record.nbytes,
                        signed.signature,
                    )
                )
                results.append(amount)
            db.executemany(_INSERT_VOUCHER, rows)
            db.executemany(
                _UPSERT_HEAD,
                [
                    (*key, _u256(head.cumulative), head.signature, when)
                    for key, head in moved.items()
                ],
            )
            db.execute("COMMIT")
        return results

    def record(
        self,
        role: Role,
        domain: Domain,
        signed: SignedVoucher,
        *,
        piece: int | None = None,
        nbytes: int = 0,
        now: float | None = None,
    ) -> int:
        """Record one voucher (see :meth:`record_batch`); return the amount of its step or
        raise :class:`InvalidTicket` when it is not above the head."""
        (result,) = self.record_batch([VoucherRecord(role, domain, signed, piece, nbytes)], now=now)
        if isinstance(result, InvalidTicket):
            raise result
        return result

    def record_signed(
        self,
        domain: Domain,
        signed: SignedVoucher,
        *,
        piece: int | None = None,
        nbytes: int = 0,
        now: float | None = None,
    ) -> int:
        """Payer side: call before sending ``signed`` (see ``accounts.PayerSession``)."""
        return self.record(Role.SIGNED, domain, signed, piece=piece, nbytes=nbytes, now=now)

    def record_received(
        self,
        domain: Domain,
        signed: SignedVoucher,
        *,
        piece: int | None = None,
        nbytes: int = 0,
        now: float | None = None,
    ) -> int:
        """Payee side: call after verifying ``signed`` and before counting it."""
        return self.record(Role.RECEIVED, domain, signed, piece=piece, nbytes=nbytes, now=now)

    def mark_redeemed(
        self,
        domain: Domain,
        vouchers: Sequence[VoucherLike],
        tx_hash: bytes,
        paid: Sequence[int],
        *,
        now: float | None = None,
    ) -> None:
        """Record that ``vouchers`` were redeemed on-chain by ``tx_hash``, paying ``paid[i]``
        each (less than the voucher's value when the payer's deposit ran short).  The chain
        counts a voucher claimed up to its cumulative either way, so that is what
        :meth:`redeemed` reports from now on."""
        if len(vouchers) != len(paid):
            raise ValueError("one paid amount per voucher")
        when = time.time() if now is None else now
        chain_id = _i64(domain.chain_id)
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")
            for voucher, amount in zip(vouchers, paid, strict=True):
                key = (chain_id, domain.contract, voucher.payer, voucher.payee, _i64(voucher.epoch))
                cumulative = _u256(voucher.cumulative)
                db.execute(
                    "INSERT INTO redemptions (time, chain_id, contract, payer, payee, epoch, "
                    "cumulative, paid, tx_hash) VALUES (?,?,?,?,?,?,?,?,?)",
                    (when, *key, cumulative, _u256(amount), tx_hash),
                )
                db.execute(
                    "UPDATE heads SET redeemed=max(redeemed, ?) WHERE role='received' "
                    "AND chain_id=? AND contract=? AND payer=? AND payee=? AND epoch=?",
                    (cumulative, *key),
                )
            db.execute("COMMIT")

    # -- reading ------------------------------------------------------------------------

    def latest(
        self, role: Role, domain: Domain, payer: bytes, payee: bytes, epoch: int
    ) -> SignedVoucher | None:
        """The highest-cumulative voucher recorded for this key, or None."""
        with self._locked() as db:
            row = db.execute(
                "SELECT cumulative, signature FROM heads WHERE role=? AND chain_id=? "
                "AND contract=? AND payer=? AND payee=? AND epoch=?",
                (role.value, _i64(domain.chain_id), domain.contract, payer, payee, _i64(epoch)),
            ).fetchone()
        if row is None:
            return None
        return SignedVoucher(Voucher(payer, payee, epoch, _int(row[0])), row[1])

    def payees(self, domain: Domain, payer: bytes, epoch: int) -> list[bytes]:
        """Every payee ``payer`` has signed a voucher to in ``epoch``."""
        with self._locked() as db:
            rows = db.execute(
                "SELECT payee FROM heads WHERE role='signed' AND chain_id=? AND contract=? "
                "AND payer=? AND epoch=?",
                (_i64(domain.chain_id), domain.contract, payer, _i64(epoch)),
            ).fetchall()
        return [row[0] for row in rows]

    def committed(self, domain: Domain, payer: bytes, epoch: int) -> int:
        """What ``payer`` has promised in ``epoch``, over all payees: the sum of the latest
        signed cumulative per payee.  A fetcher starts its budget from this."""
        with self._locked() as db:
            rows = db.execute(
                "SELECT cumulative FROM heads WHERE role='signed' AND chain_id=? AND contract=? "
                "AND payer=? AND epoch=?",
                (_i64(domain.chain_id), domain.contract, payer, _i64(epoch)),
            ).fetchall()
        return sum(_int(row[0]) for row in rows)

    def redeemed(self, domain: Domain, payer: bytes, payee: bytes, epoch: int) -> int:
        """The cumulative amount of (payer, payee, epoch) already claimed on-chain by us."""
        with self._locked() as db:
            row = db.execute(
                "SELECT redeemed FROM heads WHERE role='received' AND chain_id=? AND contract=? "
                "AND payer=? AND payee=? AND epoch=?",
                (_i64(domain.chain_id), domain.contract, payer, payee, _i64(epoch)),
            ).fetchone()
        return _int(row[0]) if row else 0

    def redeemable(self, domain: Domain, payee: bytes, min_value: int = 1) -> list[Redeemable]:
        """The latest received voucher per (payer, epoch) worth at least ``min_value`` wei
        more than what is already redeemed, most valuable first."""
        with self._locked() as db:
            rows = db.execute(
                "SELECT payer, epoch, cumulative, signature, redeemed FROM heads "
                "WHERE role='received' AND chain_id=? AND contract=? AND payee=? "
                "AND cumulative > redeemed",
                (_i64(domain.chain_id), domain.contract, payee),
            ).fetchall()
        found = [
            Redeemable(
                SignedVoucher(Voucher(payer, payee, _u64(epoch), _int(cumulative)), signature),
                _int(redeemed),
            )
            for payer, epoch, cumulative, signature, redeemed in rows
        ]
        threshold = max(min_value, 1)
        return sorted(
            (item for item in found if item.value >= threshold), key=lambda item: -item.value
        )

    def entries(
        self,
        *,
        role: Role | None = None,
        domain: Domain | None = None,
        payer: bytes | None = None,
        payee: bytes | None = None,
        limit: int | None = 100,
    ) -> list[LedgerEntry]:
        """Audit-log rows, newest first, filtered by whichever arguments are given."""
        conditions: list[str] = []
        parameters: list[Any] = []
        for column, value in (
            ("role", role.value if role else None),
            ("chain_id", _i64(domain.chain_id) if domain else None),
            ("contract", domain.contract if domain else None),
            ("payer", payer),
            ("payee", payee),
        ):
            if value is not None:
                conditions.append(f"{column}=?")
                parameters.append(value)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        parameters.append(-1 if limit is None else limit)
        with self._locked() as db:
            rows = db.execute(
                "SELECT id, time, role, chain_id, contract, payer, payee, epoch, cumulative, "
                f"amount, piece, nbytes, signature FROM vouchers {where} "
                "ORDER BY id DESC LIMIT ?",
                parameters,
            ).fetchall()
        return list(_entries(rows))


def _entries(rows: Iterable[tuple[Any, ...]]) -> Iterator[LedgerEntry]:
    for row in rows:
        (id_, when, role, chain_id, contract, payer, payee, epoch) = row[:8]
        cumulative, amount, piece, nbytes, signature = row[8:]
        yield LedgerEntry(
            id=id_,
            time=when,
            role=Role(role),
            chain_id=_u64(chain_id),
            contract=contract,
            payer=payer,
            payee=payee,
            epoch=_u64(epoch),
            cumulative=_int(cumulative),
            amount=_int(amount),
            piece=piece,
            nbytes=nbytes,
            signature=signature,
        )
