"""Per-voucher costs of the payment path: median microseconds per operation.

A transfer at 500 MB/s in 1 MiB pieces signs, sends, verifies and records ~500 vouchers a
second, so each of these is paid that often.  Measured: the fast EIP-712 path (precomputed
domain separator, safe-pysha3 Keccak, coincurve; a payee checks a known payer's vouchers
against its key) against eth-account's ``sign_typed_data``
and ``recover_message`` as the reference, and a ledger record in the default (WAL,
synchronous=NORMAL) and durable (synchronous=FULL) modes, on the disk holding ``--dir``.

    python -m bench.pay_crypto [--count N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data

from bench.pay_gas import voucher_typed_data
from thetadist.pay.ledger import Role, VoucherLedger, VoucherRecord
from thetadist.pay.voucher import (
    Domain,
    PayerKeys,
    SignedVoucher,
    Voucher,
    VoucherSigner,
    verify,
)

PAYEE = b"\x0a" * 20
DOMAIN = Domain(31337, b"\xcc" * 20)


def median_us(operation: Callable[[int], object], count: int) -> float:
    """Median wall time of ``operation(i)`` for i in range(count), in microseconds."""
    samples = []
    clock = time.perf_counter
    for index in range(count):
        started = clock()
        operation(index)
        samples.append(clock() - started)
    return statistics.median(samples) * 1e6


def typed_data(voucher: Voucher) -> dict[str, Any]:
    return voucher_typed_data(
        "0x" + voucher.payer.hex(),
        "0x" + voucher.payee.hex(),
        voucher.epoch,
        voucher.cumulative,
        chain_id=DOMAIN.chain_id,
        contract="0x" + DOMAIN.contract.hex(),
    )


def ledger_record_us(
    directory: Path, vouchers: list[SignedVoucher], *, durable: bool, batch: int = 1
) -> float:
    """Median µs per voucher recorded ``batch`` at a time (one transaction per batch)."""
    with (
        tempfile.TemporaryDirectory(dir=directory) as scratch,
        VoucherLedger(Path(scratch) / "vouchers.sqlite", durable=durable) as ledger,
    ):
        records = [
            VoucherRecord(Role.RECEIVED, DOMAIN, voucher, piece=i, nbytes=1 << 20)
            for i, voucher in enumerate(vouchers)
        ]
        return (
            median_us(
                lambda i: ledger.record_batch(records[i * batch : (i + 1) * batch]),
                len(records) // batch,
            )
            / batch
        )


def measure(count: int, directory: Path) -> list[tuple[str, float]]:
    """Median µs per operation for each path, ``count`` operations each."""
    key = os.urandom(32)
    signer = VoucherSigner(key, DOMAIN)
    vouchers = [Voucher(signer.address, PAYEE, 0, (i + 1) * 10**12) for i in range(count)]
    signed = [signer.sign(voucher) for voucher in vouchers]
    reference_count = max(1, count // 10)  # eth-account is ~10x slower
    messages = [encode_typed_data(full_message=typed_data(v)) for v in vouchers[:reference_count]]
    known = PayerKeys()
    known.verify(signed[0], DOMAIN)
    return [
        ("voucher sign (fast path)", median_us(lambda i: signer.sign(vouchers[i]), count)),
        ("voucher verify (fast path)", median_us(lambda i: verify(signed[i], DOMAIN), count)),
        (
            "voucher verify, payer's key known",
            median_us(lambda i: known.verify(signed[i], DOMAIN, recover=False), count),
        ),
        (
            "voucher encode + decode",
            median_us(lambda i: SignedVoucher.decode(signed[i].encode()), count),
        ),
        (
            "eth-account sign_typed_data (reference)",
            median_us(
                lambda i: Account.sign_typed_data(key, full_message=typed_data(vouchers[i])),
                reference_count,
            ),
        ),
        (
            "eth-account recover_message (reference)",
            median_us(
                lambda i: Account.recover_message(messages[i], signature=signed[i].signature),
                reference_count,
            ),
        ),
        (
            "ledger record, received (WAL, NORMAL)",
            ledger_record_us(directory, signed, durable=False),
        ),
        (
            "ledger record, in batches of 8 (WAL, NORMAL)",
            ledger_record_us(directory, signed, durable=False, batch=8),
        ),
        (
            "ledger record, received (durable: FULL)",
            ledger_record_us(directory, signed[: max(1, count // 10)], durable=True),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000, help="operations per measurement")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the ledger files go (default: temp dir)"
    )
    args = parser.parse_args()
    count: int = args.count
    directory: Path = args.dir or Path(tempfile.gettempdir())
    rows = measure(count, directory)
    print(f"median µs per operation ({count} operations; ledger files in {directory})")
    for name, micros in rows:
        print(f"  {name:<42} {micros:9.1f} µs")


if __name__ == "__main__":
    main()
