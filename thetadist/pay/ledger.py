"""The voucher ledger: every voucher a node signed or received, durably, in one SQLite file.

One file per node (``<state dir>/vouchers.sqlite``) holds both roles:

* ``signed`` — the payer side.  The fetcher records each voucher *before* sending it, and
  :meth:`VoucherLedger.committed` (the sum, over payees, of the latest signed cumulative) is
  what it has promised in total; a restarted fetcher starts its budget from there, so it never
  signs past its deposit across restarts and across seeders.
* ``received`` — the payee side.  The seeder records each verified voucher *before* counting
  it, so what it served on credit is backed by a voucher that survives a crash, and
  :meth:`VoucherLedger.redeemable` finds what is worth redeeming.

Tables: ``voucher_batches`` is the append-only audit log.  A row holds the vouchers one
:meth:`VoucherLedger.record_batch` call accepted for one key (role, chain, contract, payer,
payee, epoch) — a batch nearly always has one — with the time and the key once, and each
voucher's own fields packed in ``entries``: ``count`` records of 149 bytes, big-endian,

====== ===== =========================================================================
offset bytes field
====== ===== =========================================================================
0      4     the voucher's offset in its batch (u32): 0 for the batch's first voucher
4      8     the piece it paid for (i64; -1 for none)
12     8     the bytes it paid for (u64)
20     32    its cumulative amount (uint256)
52     32    the amount of this step: the cumulative minus the key's previous one (uint256)
84     65    the signature
====== ===== =========================================================================

A row per batch and key rather than per voucher halves what recording a voucher costs in
batches of 8–16 (SQLite's cost is per statement and per row far more than per byte).  Each
voucher keeps a sequence number of its own, its :attr:`LedgerEntry.id`: a batch numbers its
vouchers on from the largest ``id`` so far, in the order given; a row's ``id`` is that of its
last voucher, and the offsets in the row give the others'.  So the next number is a seek, not
a scan, and a batch that interleaved keys is listed back in the order it was recorded.  Format 3
kept one ``vouchers`` row per voucher; opening such a file rewrites each row as a one-voucher
batch with the same id.

``heads`` keeps the best (highest cumulative) voucher per (role, chain, contract, payer, payee,
epoch) plus what of it was redeemed on-chain, so every query a live session makes is a
primary-key lookup whose cost does not grow with the log.  ``redemptions`` logs each voucher
redeemed on-chain with its transaction.  Amounts are uint256 stored as 32-byte big-endian
blobs (byte order is numeric order); epochs and chain ids are uint64 stored as SQLite's signed
64-bit integers (values from 2**63 up wrap to negative and back, which keeps equality exact and
the common small values readable).

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
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any, Protocol

from thetadist.errors import InvalidTicket, StoreError
from thetadist.pay.voucher import SIGNATURE_SIZE, Domain, SignedVoucher, Voucher, hex_address

#: PRAGMA application_id of a ledger file ("tdvl"), so any other SQLite file is refused.
APPLICATION_ID = 0x7464766C
SCHEMA_VERSION = 4
_U64_WRAP = 1 << 64
_I64_TOP = 1 << 63

_CREATE_BATCHES = """
CREATE TABLE voucher_batches (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('signed', 'received')),
    chain_id INTEGER NOT NULL,
    contract BLOB NOT NULL,
    payer BLOB NOT NULL,
    payee BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    count INTEGER NOT NULL,
    entries BLOB NOT NULL
)"""
_SCHEMA = (
    _CREATE_BATCHES
    + """;
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
)

#: One voucher in ``voucher_batches.entries`` (the table in the module docstring).
_RECORD = struct.Struct(f">IqQ32s32s{SIGNATURE_SIZE}s")
_NO_PIECE = -1
_BATCH_COLUMNS = "id, time, role, chain_id, contract, payer, payee, epoch, count, entries"
_INSERT_BATCH = f"INSERT INTO voucher_batches ({_BATCH_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)"
#: A batch's first row numbers the batch from the largest id (one seek under the write lock)
#: in the same statement: one round trip fewer a batch than reading it first.
_INSERT_FIRST_BATCH = (
    f"INSERT INTO voucher_batches ({_BATCH_COLUMNS}) VALUES "
    "((SELECT ifnull(max(id), 0) FROM voucher_batches) + ?,?,?,?,?,?,?,?,?,?)"
)
_ADDRESS_SIZE = 20


#: Version 2 kept the heads with triggers; version 3 moves them in :meth:`record_batch`
#: (once per key per batch instead of once per voucher).  Opening a version 2 file drops them,
#: then upgrades it like a version 3 one.
_V2_TRIGGERS = ("vouchers_only_forward", "vouchers_move_head")

_HEAD = (
    "SELECT cumulative FROM heads WHERE role=? AND chain_id=? AND contract=? AND payer=? "
    "AND payee=? AND epoch=?"
)


class Role(enum.StrEnum):
    SIGNED = "signed"  # we are the payer
    RECEIVED = "received"  # we are the payee


_ROLES = {role.value: role for role in Role}
_ID = attrgetter("id")

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
    """One voucher of the audit log; ``id`` is its sequence number."""

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


def _is_blob(value: object, size: int) -> bool:
    return isinstance(value, bytes) and len(value) == size


class _Group:
    """What one :meth:`VoucherLedger.record_batch` call accepted for one key so far."""

    __slots__ = ("entries", "head", "key")

    def __init__(self, db: sqlite3.Connection, key: tuple[Any, ...]) -> None:
        role, chain_id, contract, payer, payee, epoch = key
        self.key = (role.value, _i64(chain_id), contract, payer, payee, _i64(epoch))
        row = db.execute(_HEAD, self.key).fetchone()
        self.head = _int(row[0]) if row else -1  # the key's head cumulative; -1 for none yet
        self.entries: list[bytes] = []  # packed records


def _write(db: sqlite3.Connection, groups: Iterable[_Group], when: float) -> None:
    """Append a batch's row per key and move the heads (in the batch's transaction)."""
    first: int | None = None  # the batch's first sequence number, once its first row is in
    for group in groups:
        entries = group.entries
        if not entries:
            continue  # all refused
        # the key's newest voucher: the row's id is its sequence number, and it is the new head
        last, _, _, cumulative, _, signature = _RECORD.unpack(entries[-1])
        row = (when, *group.key, len(entries), b"".join(entries))
        if first is None:
            rowid = db.execute(_INSERT_FIRST_BATCH, (last + 1, *row)).lastrowid
            assert rowid is not None  # an INSERT's
            first = rowid - last
        else:
            db.execute(_INSERT_BATCH, (first + last, *row))
        db.execute(_UPSERT_HEAD, (*group.key, cumulative, signature, when))


class _Locked:
    """``with ledger._locked() as db``: the connection, under the ledger's lock; an SQLite error
    leaves as a :class:`StoreError`, and no error leaves a transaction open.  A class rather
    than a @contextmanager generator, which costs a few µs more a batch."""

    __slots__ = ("_ledger",)

    def __init__(self, ledger: VoucherLedger) -> None:
        self._ledger = ledger

    def __enter__(self) -> sqlite3.Connection:
        self._ledger._lock.acquire()
        return self._ledger._db

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        ledger = self._ledger
        try:
            if exc is not None:
                ledger._abandon_transaction()
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"voucher ledger {str(ledger.path)!r}: {exc}") from None
        finally:
            ledger._lock.release()


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
                    # small pages: a batch's commit writes a few of them to the WAL
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
        if version == 3:
            version = self._upgrade_from_3()
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
                db.execute("PRAGMA user_version=3")
                version = 3
            db.execute("COMMIT")
        except BaseException:
            db.rollback()
            raise
        return int(version)

    def _upgrade_from_3(self) -> int:
        """Rewrite each ``vouchers`` row as a one-voucher batch with the same id, in one
        transaction: a crash or a malformed row leaves the file at version 3."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 3:  # not upgraded by another process meanwhile
                db.execute(_CREATE_BATCHES)
                rows = db.execute(
                    "SELECT id, time, role, chain_id, contract, payer, payee, epoch, "
                    "cumulative, amount, piece, nbytes, signature FROM vouchers ORDER BY id"
                )
                db.executemany(_INSERT_BATCH, (self._as_batch(row) for row in rows))
                db.execute("DROP TABLE vouchers")
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                version = SCHEMA_VERSION
            db.execute("COMMIT")
        except BaseException:
            db.rollback()
            raise
        return int(version)

    def _as_batch(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        id_, when, role, chain_id, contract, payer, payee, epoch = row[:8]
        cumulative, amount, piece, nbytes, signature = row[8:]
        if not (
            isinstance(id_, int)
            and _is_blob(cumulative, 32)
            and _is_blob(amount, 32)
            and _is_blob(signature, SIGNATURE_SIZE)
            and (piece is None or (isinstance(piece, int) and piece >= 0))
            and isinstance(nbytes, int)
            and nbytes >= 0
        ):
            raise StoreError(f"voucher ledger {str(self.path)!r}: malformed voucher {id_!r}")
        entry = _RECORD.pack(
            0, _NO_PIECE if piece is None else piece, nbytes, cumulative, amount, signature
        )
        return (id_, when, role, chain_id, contract, payer, payee, epoch, 1, entry)

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

    def _locked(self) -> _Locked:
        return _Locked(self)

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

        A piece below 0 or from 2**63, or a byte count below 0 or from 2**64, is a
        :class:`ValueError` and nothing of the batch is written.

        One commit per batch is what makes per-piece vouchers cheap: a commit costs more than
        the rows it writes.  The ledger stores; it does not verify signatures — callers do that
        first.
        """
        when = time.time() if now is None else now
        results: list[int | InvalidTicket] = []
        append = results.append
        pack = _RECORD.pack
        groups: dict[tuple[Any, ...], _Group] = {}
        offset = 0  # of the next voucher accepted
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")  # heads are read and moved under the write lock
            try:
                for record in records:
                    signed = record.signed
                    voucher = signed.voucher
                    domain = record.domain
                    key = (
                        record.role,
                        domain.chain_id,
                        domain.contract,
                        voucher.payer,
                        voucher.payee,
                        voucher.epoch,
                    )
                    group = groups.get(key)
                    if group is None:
                        group = groups[key] = _Group(db, key)
                    cumulative = voucher.cumulative
                    head = group.head
                    if cumulative <= head:
                        append(
                            InvalidTicket(
                                f"voucher cumulative {cumulative} is not above {head}, "
                                f"already recorded for payer {hex_address(voucher.payer)}"
                            )
                        )
                        continue
                    amount = cumulative - head if head > 0 else cumulative
                    piece = record.piece
                    if piece is None:
                        piece = _NO_PIECE
                    elif piece < 0:
                        raise ValueError(f"piece {piece} is negative")
                    group.entries.append(
                        pack(
                            offset,
                            piece,
                            record.nbytes,
                            cumulative.to_bytes(32, "big"),
                            amount.to_bytes(32, "big"),
                            signed.signature,
                        )
                    )
                    group.head = cumulative
                    offset += 1
                    append(amount)
            except struct.error as exc:
                raise ValueError(f"piece or nbytes out of range: {exc}") from None
            if offset:
                _write(db, groups.values(), when)
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
        """Vouchers of the audit log, newest first, filtered by whichever arguments are given;
        at most ``limit`` of them (None: all)."""
        if limit is not None and limit < 0:
            limit = None  # as SQLite's LIMIT -1, which this was
        found: list[LedgerEntry] = []
        if limit == 0:
            return found
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
        pending: list[LedgerEntry] = []  # read, but maybe older than vouchers of rows to come
        with self._locked() as db:
            cursor = db.execute(
                f"SELECT {_BATCH_COLUMNS} FROM voucher_batches {where} ORDER BY id DESC",
                parameters,
            )
            try:
                for row in cursor:
                    # the vouchers of this row and of those after it are numbered up to its id:
                    # what is newer goes out (only a batch that interleaved keys holds any back)
                    newest = row[0]
                    if pending:
                        pending.sort(key=_ID, reverse=True)
                        ready = len(pending)
                        while ready and pending[ready - 1].id <= newest:
                            ready -= 1
                        found += pending[:ready]
                        del pending[:ready]
                        if limit is not None and len(found) >= limit:
                            break
                    pending += self._unpack(row)
                else:
                    found += sorted(pending, key=_ID, reverse=True)
            finally:
                cursor.close()  # a cursor left open would pin its snapshot of the WAL
        return found[:limit]

    def _unpack(self, row: tuple[Any, ...]) -> list[LedgerEntry]:
        id_, when, role, chain_id, contract, payer, payee, epoch, count, blob = row
        if not (
            isinstance(id_, int)
            and isinstance(when, (int, float))
            and role in _ROLES
            and isinstance(chain_id, int)
            and _is_blob(contract, _ADDRESS_SIZE)
            and _is_blob(payer, _ADDRESS_SIZE)
            and _is_blob(payee, _ADDRESS_SIZE)
            and isinstance(epoch, int)
            and isinstance(count, int)
            and isinstance(blob, bytes)
            and len(blob) == count * _RECORD.size
        ):
            raise StoreError(f"voucher ledger {str(self.path)!r}: malformed batch {id_!r}")
        records = list(_RECORD.iter_unpack(blob))
        first = id_ - records[-1][0] if records else 0  # the batch's first sequence number
        role, chain_id, epoch = _ROLES[role], _u64(chain_id), _u64(epoch)
        return [
            LedgerEntry(
                first + offset,
                when,
                role,
                chain_id,
                contract,
                payer,
                payee,
                epoch,
                int.from_bytes(cumulative, "big"),
                int.from_bytes(amount, "big"),
                None if piece == _NO_PIECE else piece,
                nbytes,
                signature,
            )
            for offset, piece, nbytes, cumulative, amount, signature in records
        ]
