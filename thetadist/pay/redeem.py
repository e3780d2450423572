"""Redeem a payee's best vouchers on-chain in batches, and remember what each batch paid.

Only the latest voucher per (payer, epoch) is worth sending: amounts are cumulative, so one
voucher settles every piece before it.  The ledger is told what the chain paid after each
batch, so a crash between batches re-sends only the vouchers not yet redeemed (and a voucher
redeemed twice pays nothing the second time: the contract pays ``cumulative - claimed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from thetadist.errors import UsageError
from thetadist.pay.ledger import VoucherLedger
from thetadist.pay.roles import domain_of
from thetadist.pay.voucher import with_recovering_v

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from thetadist.pay.chain import TicketPool

DEFAULT_BATCH = 32


@dataclass
class RedeemReport:
    vouchers: int = 0
    transactions: list[str] = field(default_factory=list)
    gas_used: int = 0
    #: What the chain credited to the payee's earnings (less than the vouchers' value only
    #: when a payer's deposit ran short).
    paid_wei: int = 0
    #: What the redeemed vouchers were worth beyond what was already redeemed.
    expected_wei: int = 0
    rejected: int = 0


def redeem_vouchers(
    pool: TicketPool,
    ledger: VoucherLedger,
    account: LocalAccount,
    *,
    min_value: int = 1,
    batch: int = DEFAULT_BATCH,
    payee: bytes | None = None,
) -> RedeemReport:
    """Redeem every voucher to ``payee`` (default: the account's own address) worth at least
    ``min_value`` wei more than what is already redeemed, ``batch`` per transaction; the
    account pays the gas."""
    from thetadist.pay.chain import MAX_BATCH  # loaded already: ``pool`` is a TicketPool

    if not 1 <= batch <= MAX_BATCH:
        raise UsageError(f"a batch holds 1 to {MAX_BATCH} vouchers, not {batch}")
    domain = domain_of(pool)
    payee = payee or bytes.fromhex(account.address[2:])
    found = ledger.redeemable(domain, payee, min_value)
    report = RedeemReport()
    for start in range(0, len(found), batch):
        group = found[start : start + batch]
        # a payee checked most vouchers against the payer's key, not their v: see PayerKeys
        vouchers = [with_recovering_v(item.voucher, domain) for item in group]
        result = pool.redeem_batch(account, vouchers)
        ledger.mark_redeemed(domain, vouchers, bytes.fromhex(result.tx_hash[2:]), result.paid)
        report.vouchers += len(vouchers)
        report.transactions.append(result.tx_hash)
        report.gas_used += result.gas_used
        report.paid_wei += result.total
        report.expected_wei += sum(item.value for item in group)
        report.rejected += len(result.rejected)
    return report
