"""Assemble a swarm node's payment roles from a wallet, a ledger and a TicketPool deployment.

A script that seeds for money or fetches with a wallet calls :func:`charging` or
:func:`paying` and hands the result to ``thetadist.seed`` / ``thetadist.fetch`` as
``payments=Payments(payee=..., payer=...)``.  The CLI does exactly that.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from thetadist.errors import PaymentError
from thetadist.net.payments import Payee, Payer
from thetadist.pay.accounts import DEFAULT_CREDIT_WINDOW, Budget
from thetadist.pay.amounts import format_amount
from thetadist.pay.ledger import VoucherLedger
from thetadist.pay.voucher import Domain, VoucherSigner

if TYPE_CHECKING:  # web3 and eth-account load slowly; only the callers' objects are used
    from eth_account.signers.local import LocalAccount

    from thetadist.pay.chain import TicketPool

LEDGER_ENV = "THETADIST_LEDGER"


def default_ledger_path() -> Path:
    """``$THETADIST_LEDGER``, else ``$XDG_DATA_HOME/thetadist/vouchers.sqlite``.

    One ledger per user, not per download: a payer's promises to every seeder, across every
    fetch, must add up against one deposit."""
    if os.environ.get(LEDGER_ENV):
        return Path(os.environ[LEDGER_ENV])
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "thetadist" / "vouchers.sqlite"


def open_ledger(path: Path | None = None) -> VoucherLedger:
    path = path or default_ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return VoucherLedger(path)


def domain_of(pool: TicketPool) -> Domain:
    return Domain(pool.chain.chain_id, pool.address_bytes)


def charging(
    pool: TicketPool,
    ledger: VoucherLedger,
    payee: bytes,
    price_per_mib: int,
    *,
    credit_window: int = DEFAULT_CREDIT_WINDOW,
) -> Payee:
    """The payee role: vouchers to ``payee`` at ``price_per_mib`` wei, payers' pools read from
    ``pool`` (only the address is needed: redeeming is a separate step, with the key)."""
    if price_per_mib <= 0:
        raise PaymentError("a charging seeder needs a price above zero (or serve --free)")
    return Payee(
        ledger, domain_of(pool), payee, price_per_mib, pool.pool, credit_window=credit_window
    )


def paying(
    pool: TicketPool, ledger: VoucherLedger, account: LocalAccount, max_price_per_mib: int
) -> Payer:
    """The payer role of ``account``: reads its pool once, and starts its budget from what
    its ledger says it already promised in the pool's current epoch.

    Budget = deposit now + what payees already claimed from it this epoch, against the sum of
    the latest vouchers signed this epoch: redeemed vouchers left the deposit but are still
    counted in the cumulative amounts.
    """
    state = pool.pool(account.address)
    address = bytes.fromhex(account.address[2:])
    if state.flagged:
        raise PaymentError(f"the pool of {account.address} is flagged (it overdrew); fund anew")
    if state.unlock_at:
        raise PaymentError(
            f"the pool of {account.address} is being withdrawn; seeders will refuse it "
            "(`thetadist pool fund` as the payer cancels the unlock)"
        )
    if state.deposit == 0:
        raise PaymentError(
            f"the pool of {account.address} holds no deposit (`thetadist pool fund`)"
        )
    domain = domain_of(pool)
    payees = ledger.payees(domain, address, state.epoch)
    claimed = sum(pool.claimed(address, payee, state.epoch) for payee in payees)
    committed = ledger.committed(domain, address, state.epoch)
    budget = Budget(state.deposit + claimed, min(committed, state.deposit + claimed))
    if budget.available == 0:
        raise PaymentError(
            f"everything in the pool of {account.address} is promised already "
            f"({format_amount(committed)}); top it up"
        )
    return Payer(
        ledger, VoucherSigner(bytes(account.key), domain), state.epoch, budget, max_price_per_mib
    )
