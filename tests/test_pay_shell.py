"""The payee's pool cache: one chain read per payer at a time, refreshed, bounded."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import thetadist.net.payments as payments
from thetadist.errors import ChainError
from thetadist.net.payments import Payee
from thetadist.pay.ledger import VoucherLedger
from thetadist.pay.voucher import Domain

DOMAIN = Domain(31337, b"\x05" * 20)


class Pool:
    deposit = 10**18
    epoch = 0
    unlock_at = 0
    flagged = False


async def test_concurrent_asks_share_one_read_and_the_cache_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(payments, "MAX_CACHED_POOLS", 3)
    reads: list[bytes] = []

    def read_pool(payer: bytes) -> Pool:
        reads.append(payer)
        return Pool()

    with VoucherLedger(tmp_path / "l.sqlite") as ledger:
        payee = Payee(ledger, DOMAIN, b"\x07" * 20, 10**9, read_pool)
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(payee.pool, b"\x01" * 20)
        assert reads == [b"\x01" * 20]  # five asks, one read
        assert await payee.pool(b"\x01" * 20) is not None
        assert len(reads) == 1  # fresh: served from the cache
        for n in range(2, 10):
            await payee.pool(bytes([n]) * 20)
        assert len(payee._pools) == 3


async def test_an_unreadable_pool_is_none_and_a_stale_copy_is_kept(tmp_path: Path) -> None:
    fail = [False]

    def read_pool(payer: bytes) -> Pool:
        if fail[0]:
            raise ChainError("node down")
        return Pool()

    with VoucherLedger(tmp_path / "l.sqlite") as ledger:
        payee = Payee(ledger, DOMAIN, b"\x07" * 20, 10**9, read_pool, pool_refresh=0)
        fail[0] = True
        assert await payee.pool(b"\x01" * 20) is None
        fail[0] = False
        first = await payee.pool(b"\x01" * 20)
        assert first is not None
        fail[0] = True
        assert await payee.pool(b"\x01" * 20) == first  # stale but known
