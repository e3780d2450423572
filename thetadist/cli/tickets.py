"""``thetadist tickets list|redeem``: the voucher audit log, and redeeming it on-chain."""

from __future__ import annotations

import datetime
from typing import Annotated

import typer

from thetadist.cli.chain import (
    ConfigOption,
    ContractOption,
    RpcOption,
    WalletOption,
    amount_option,
    connect_pool,
    open_signer,
)
from thetadist.cli.common import JsonOption
from thetadist.cli.output import Output
from thetadist.cli.paying import LedgerOption
from thetadist.errors import UsageError
from thetadist.pay.amounts import format_amount
from thetadist.pay.ledger import Role
from thetadist.pay.redeem import DEFAULT_BATCH, redeem_vouchers
from thetadist.pay.roles import open_ledger
from thetadist.pay.voucher import hex_address

app = typer.Typer(help="Per-piece vouchers: the audit log, and redeeming.", no_args_is_help=True)


def _address(text: str | None, what: str) -> bytes | None:
    from thetadist.pay.config import parse_address

    return None if text is None else bytes.fromhex(parse_address(text, what)[2:])


@app.command("list")
def list_tickets(
    role: Annotated[
        str | None,
        typer.Option(metavar="signed|received", help="Only vouchers we signed or received."),
    ] = None,
    payer: Annotated[str | None, typer.Option(metavar="ADDRESS")] = None,
    payee: Annotated[str | None, typer.Option(metavar="ADDRESS")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1_000_000, help="Newest first.")] = 50,
    ledger: LedgerOption = None,
    json_mode: JsonOption = False,
) -> None:
    """Show the per-piece vouchers in the ledger, newest first."""
    if role is not None and role not in ("signed", "received"):
        raise UsageError(f"--role is signed or received, not {role[:20]!r}")
    out = Output(json_mode)
    with open_ledger(ledger) as book:
        entries = book.entries(
            role=Role(role) if role else None,
            payer=_address(payer, "--payer"),
            payee=_address(payee, "--payee"),
            limit=limit,
        )
    records = [
        {
            "event": "voucher",
            "id": entry.id,
            "time": round(entry.time, 3),
            "role": entry.role.value,
            "chain_id": entry.chain_id,
            "contract": hex_address(entry.contract),
            "payer": hex_address(entry.payer),
            "payee": hex_address(entry.payee),
            "epoch": entry.epoch,
            "cumulative_wei": entry.cumulative,
            "amount_wei": entry.amount,
            "piece": entry.piece,
            "bytes": entry.nbytes,
            "signature": entry.signature.hex(),
        }
        for entry in entries
    ]
    if json_mode:
        for record in records:
            out.emit(record)
    out.table(
        "vouchers (newest first)",
        ["time", "role", "payer", "payee", "epoch", "piece", "amount", "cumulative"],
        [
            [
                datetime.datetime.fromtimestamp(entry.time).isoformat(timespec="seconds"),
                entry.role.value,
                hex_address(entry.payer)[:10] + "…",
                hex_address(entry.payee)[:10] + "…",
                entry.epoch,
                "" if entry.piece is None else entry.piece,
                format_amount(entry.amount),
                format_amount(entry.cumulative),
            ]
            for entry in entries
        ],
    )
    out.summary(
        {
            "vouchers": len(records),
            "amount_wei": sum(entry.amount for entry in entries),
        },
        "tickets",
    )


@app.command("redeem")
def redeem(
    min_value: Annotated[
        str,
        typer.Option(
            metavar="AMOUNT", help="Skip payers whose unredeemed amount is below this (gas)."
        ),
    ] = "1wei",
    batch: Annotated[
        int, typer.Option(min=1, max=256, help="Vouchers per transaction.")
    ] = DEFAULT_BATCH,
    wallet: WalletOption = None,
    rpc: RpcOption = None,
    contract: ContractOption = None,
    config_file: ConfigOption = None,
    ledger: LedgerOption = None,
    json_mode: JsonOption = False,
) -> None:
    """Redeem the vouchers paid to the wallet's address, in batches; the wallet pays the gas
    and the contract credits its earnings (`thetadist earnings withdraw` collects them)."""
    out = Output(json_mode)
    minimum = amount_option(min_value, "min-value")
    pool = connect_pool(rpc, contract, config_file)
    account = open_signer(wallet)
    with open_ledger(ledger) as book:
        report = redeem_vouchers(pool, book, account, min_value=minimum, batch=batch)
    if report.vouchers == 0:
        out.note("nothing to redeem")
    out.summary(
        {
            "payee": account.address,
            "vouchers": report.vouchers,
            "transactions": report.transactions,
            "redeemed_wei": report.paid_wei,
            "redeemed": format_amount(report.paid_wei),
            "expected_wei": report.expected_wei,
            "rejected": report.rejected,
            "gas_used": report.gas_used,
        },
        "tickets redeem",
    )
