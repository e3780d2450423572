"""Payment options shared by ``seed`` and ``fetch``, and what they add to the summaries.

A node charges when given ``--price`` (vouchers to its ``--wallet`` address; no passphrase
needed) and pays when given ``--wallet`` with ``--max-price`` on ``fetch``.  ``--free`` says
it explicitly: serve without charging, fetch without paying (only from free peers).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from thetadist.cli.chain import amount_option, connect_pool
from thetadist.errors import UsageError
from thetadist.events import Event, VoucherReceived, VoucherSigned
from thetadist.net.payments import Payee, Payer, Payments
from thetadist.pay.accounts import DEFAULT_CREDIT_WINDOW
from thetadist.pay.roles import charging, open_ledger, paying
from thetadist.pay.voucher import hex_address
from thetadist.pay.wallet import default_wallet_path, open_wallet, wallet_address
from thetadist.units import parse_size

PriceOption = Annotated[
    str | None,
    typer.Option(
        "--price",
        metavar="AMOUNT",
        help="Charge this much per MiB served, e.g. 20gwei (vouchers to the --wallet address).",
    ),
]
CreditWindowOption = Annotated[
    str,
    typer.Option(
        "--credit-window",
        metavar="SIZE",
        help="Bytes served to a payer ahead of its vouchers before waiting for them.",
    ),
]
DEFAULT_CREDIT_WINDOW_TEXT = f"{DEFAULT_CREDIT_WINDOW >> 20}MiB"
MaxPriceOption = Annotated[
    str | None,
    typer.Option(
        "--max-price",
        metavar="AMOUNT",
        help="Pay peers asking at most this per MiB (needs --wallet); dearer peers are not used.",
    ),
]
FreeOption = Annotated[
    bool,
    typer.Option("--free", help="Private swarm: serve without charging, never pay anyone."),
]
LedgerOption = Annotated[
    Path | None,
    typer.Option(
        "--ledger",
        metavar="FILE",
        help="Voucher ledger, SQLite (default: $THETADIST_LEDGER, else "
        "~/.local/share/thetadist/vouchers.sqlite).",
    ),
]


@dataclass
class PaymentTally:
    """What a node signed and received, from its events, for the final summary."""

    paid_wei: int = 0
    vouchers_signed: int = 0
    received_wei: int = 0
    vouchers_received: int = 0
    paid_by_peer: dict[str, int] = field(default_factory=dict)
    received_by_payer: dict[str, int] = field(default_factory=dict)

    def count(self, event: Event) -> None:
        if isinstance(event, VoucherSigned):
            self.paid_wei += event.amount_wei
            self.vouchers_signed += 1
            by_peer = self.paid_by_peer
            by_peer[event.peer] = by_peer.get(event.peer, 0) + event.amount_wei
        elif isinstance(event, VoucherReceived):
            self.received_wei += event.amount_wei
            self.vouchers_received += 1
            by_payer = self.received_by_payer
            by_payer[event.payer] = by_payer.get(event.payer, 0) + event.amount_wei

    def summary(self, payments: Payments | None) -> dict[str, object]:
        if payments is None:
            return {"payments": "free"}
        record: dict[str, object] = {}
        if payments.payer is not None:
            record.update(
                paid_wei=self.paid_wei,
                vouchers_signed=self.vouchers_signed,
                paid_by_peer=self.paid_by_peer,
                payer=hex_address(payments.payer.signer.address),
            )
        if payments.payee is not None:
            record.update(
                received_wei=self.received_wei,
                vouchers_received=self.vouchers_received,
                received_by_payer=self.received_by_payer,
                payee=hex_address(payments.payee.address),
            )
        return record


def set_up_payments(
    resources: ExitStack,
    *,
    free: bool,
    price: str | None,
    credit_window: str,
    wallet: Path | None,
    max_price: str | None,
    rpc: str | None,
    contract: str | None,
    config: Path | None,
    ledger: Path | None,
) -> Payments | None:
    """The node's payment roles from its options (None: a free node); the ledger is closed by
    ``resources``."""
    pays = max_price is not None
    if free:
        if price is not None or pays:
            raise UsageError("--free cannot go with --price or --max-price")
        return None
    if price is None and not pays:
        if wallet is not None:
            raise UsageError("--wallet needs --price (to charge) or --max-price (to pay)")
        return None
    # every argument is checked before anything touches the chain
    price_wei = amount_option(price, "price") if price is not None else 0
    if price is not None and price_wei == 0:
        raise UsageError("--price must be above zero; use --free to serve for nothing")
    max_price_wei = amount_option(max_price, "max-price") if max_price is not None else None
    window = parse_size(credit_window)
    pool = connect_pool(rpc, contract, config)
    voucher_ledger = open_ledger(ledger)
    resources.callback(voucher_ledger.close)
    wallet_path = wallet or default_wallet_path()
    payee: Payee | None = None
    payer: Payer | None = None
    if price is not None:
        address = bytes.fromhex(wallet_address(wallet_path)[2:])
        payee = charging(pool, voucher_ledger, address, price_wei, credit_window=window)
    if max_price_wei is not None:
        account = open_wallet(wallet_path)
        payer = paying(pool, voucher_ledger, account, max_price_wei)
    return Payments(payee=payee, payer=payer)
