"""``thetadist contract|pool|earnings``: the TicketPool contract from the command line.

* ``contract deploy`` / ``contract show`` — put a TicketPool on a chain, describe one;
* ``pool fund|status|unlock|withdraw`` — the payer's collateralised deposit;
* ``earnings [ADDRESS]`` / ``earnings withdraw`` — what vouchers redeemed to a payee.

The chain and the contract come from ``--rpc`` / ``--contract``, ``$THETADIST_RPC`` /
``$THETADIST_CONTRACT``, or a ``[chain]`` TOML file (``--config``, else
``./thetadist-chain.toml``); see :mod:`thetadist.pay.config`.  Amounts take units
(``1.5ether``, ``20gwei``; a bare number is wei).  ``RpcOption`` & co. and
:func:`connect_pool` are shared with the commands that redeem and pay (``tickets``, ``seed``,
``fetch``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from thetadist.cli.common import JsonOption
from thetadist.cli.output import Output
from thetadist.errors import UsageError
from thetadist.pay.amounts import format_amount, parse_amount

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from thetadist.pay.chain import TicketPool, TxResult

# web3 and eth-account take a second to import: every command of the toolkit loads this
# module for its options, so the chain, config and wallet modules load only when used.

RpcOption = Annotated[
    str | None,
    typer.Option(
        "--rpc",
        metavar="URL",
        help="EVM JSON-RPC endpoint (default: $THETADIST_RPC, else the config file).",
    ),
]
ContractOption = Annotated[
    str | None,
    typer.Option(
        "--contract",
        metavar="ADDRESS",
        help="TicketPool address (default: $THETADIST_CONTRACT, else the config file).",
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        help="TOML file with rpc and contract under a chain table "
        "(default: ./thetadist-chain.toml if present).",
    ),
]
WalletOption = Annotated[
    Path | None,
    typer.Option(
        "--wallet",
        metavar="FILE",
        help="Keystore that signs (default: $THETADIST_WALLET, else "
        "~/.config/thetadist/wallet.json); passphrase from $THETADIST_PASSPHRASE or a prompt.",
    ),
]


def connect_pool(rpc: str | None, contract: str | None, config: Path | None) -> TicketPool:
    """The TicketPool named by the options, the environment or the config file, checked to
    be one (ChainError otherwise)."""
    from thetadist.pay.chain import Chain, TicketPool
    from thetadist.pay.config import ChainConfig

    settings = ChainConfig.resolve(rpc=rpc, contract=contract, config=config)
    chain = Chain.connect(settings.require_rpc())
    return TicketPool.at(chain, settings.require_contract())


def open_signer(wallet: Path | None) -> LocalAccount:
    """Unlock ``--wallet`` (or the default wallet)."""
    from thetadist.pay.wallet import default_wallet_path, open_wallet

    return open_wallet(wallet or default_wallet_path())


def amount_option(text: str, what: str) -> int:
    """Parse the amount given to option ``--what``; a UsageError names the option."""
    try:
        return parse_amount(text)
    except UsageError as problem:
        raise UsageError(f"--{what}: {problem}") from None


# -- contract ---------------------------------------------------------------------------

contract_app = typer.Typer(help="Deploy or describe a TicketPool contract.", no_args_is_help=True)


@contract_app.command("deploy")
def deploy(
    ratio: Annotated[
        int,
        typer.Option(
            "--ratio",
            metavar="BPS",
            min=0,
            help="Collateral required per unit of deposit, in basis points (10000 = 1×).",
        ),
    ] = 10000,
    unlock_delay: Annotated[
        int,
        typer.Option(
            "--unlock-delay",
            metavar="SECONDS",
            min=0,
            help="Time between a payer's unlock request and its withdrawal: how long payees "
            "have to redeem.",
        ),
    ] = 86400,
    save: Annotated[
        Path | None,
        typer.Option(
            "--save", metavar="FILE", help="Write the RPC URL and the new address to this config."
        ),
    ] = None,
    wallet: WalletOption = None,
    rpc: RpcOption = None,
    config: ConfigOption = None,
    json_mode: JsonOption = False,
) -> None:
    """Deploy a new TicketPool (the wallet pays the gas) and print its address."""
    from thetadist.pay.chain import Chain, TicketPool
    from thetadist.pay.config import ChainConfig

    settings = ChainConfig.resolve(rpc=rpc, config=config)
    chain = Chain.connect(settings.require_rpc())
    pool = TicketPool.deploy(
        chain, open_signer(wallet), collateral_ratio_bps=ratio, unlock_delay=unlock_delay
    )
    if save is not None:
        ChainConfig(rpc=settings.rpc, contract=pool.address).save(save)
    record: dict[str, Any] = {
        "contract": pool.address,
        "chain_id": chain.chain_id,
        "collateral_ratio_bps": ratio,
        "unlock_delay": unlock_delay,
    }
    if save is not None:
        record["config"] = str(save)
    out = Output(json_mode)
    out.summary(record, "TicketPool deployed")
    if save is None:
        out.note(f"Pass --contract {pool.address} or set THETADIST_CONTRACT to use it.")


@contract_app.command("show")
def show_contract(
    rpc: RpcOption = None,
    contract: ContractOption = None,
    config: ConfigOption = None,
    json_mode: JsonOption = False,
) -> None:
    """Describe a TicketPool: its chain, parameters and burned collateral."""
    pool = connect_pool(rpc, contract, config)
    _summary(
        Output(json_mode),
        {
            "contract": pool.address,
            "chain_id": pool.chain.chain_id,
            "collateral_ratio_bps": pool.collateral_ratio_bps(),
            "unlock_delay": pool.unlock_delay(),
            "burned_wei": pool.burned(),
        },
        "TicketPool",
    )


# -- pool -------------------------------------------------------------------------------

pool_app = typer.Typer(help="The payer's deposit and collateral.", no_args_is_help=True)


@pool_app.command("fund")
def fund(
    deposit: Annotated[
        str,
        typer.Option("--deposit", metavar="AMOUNT", help="Added to the deposit vouchers draw on."),
    ] = "0",
    collateral: Annotated[
        str,
        typer.Option(
            "--collateral", metavar="AMOUNT", help="Added to the collateral burned on overdraft."
        ),
    ] = "0",
    for_payer: Annotated[
        str | None,
        typer.Option(
            "--for",
            metavar="ADDRESS",
            help="Fund someone else's pool (does not cancel their unlock).",
        ),
    ] = None,
    wallet: WalletOption = None,
    rpc: RpcOption = None,
    contract: ContractOption = None,
    config: ConfigOption = None,
    json_mode: JsonOption = False,
) -> None:
    """Add to a pool; funding your own cancels a pending unlock.

    With no amounts, cancelling the unlock is all it does.
    """
    added_deposit = amount_option(deposit, "deposit")
    added_collateral = amount_option(collateral, "collateral")
    if added_deposit == 0 and added_collateral == 0 and for_payer is not None:
        raise UsageError("nothing to add: give --deposit and/or --collateral")
    from thetadist.pay.config import parse_address

    payer_address = parse_address(for_payer, "--for") if for_payer is not None else None
    pool = connect_pool(rpc, contract, config)
    signer = open_signer(wallet)
    if payer_address is None:
        result = pool.fund(signer, deposit=added_deposit, collateral=added_collateral)
        payer_address = signer.address
    else:
        result = pool.fund_for(
            signer, payer_address, deposit=added_deposit, collateral=added_collateral
        )
    state = pool.pool(payer_address)
    _summary(
        Output(json_mode),
        {
            "payer": payer_address,
            "added_deposit_wei": added_deposit,
            "added_collateral_wei": added_collateral,
            "deposit_wei": state.deposit,
            "collateral_wei": state.collateral,
            "unlocking": state.unlocking,
            **_tx(result),
        },
        "pool funded",
    )


@pool_app.command("status")
def status(
    address: Annotated[
        str | None,
        typer.Argument(metavar="[ADDRESS]", help="Payer (default: the wallet's address)."),
    ] = None,
    wallet: WalletOption = None,
    rpc: RpcOption = None,
    contract: ContractOption = None,
    config: ConfigOption = None,
    json_mode: JsonOption = False,
) -> None:
    """Show a payer's pool: deposit, collateral, epoch, unlock, flag."""
    payer = _address_or_wallet(address, wallet)
    pool = connect_pool(rpc, contract, config)
    state = pool.pool(payer)
    record: dict[str, Any] = {
        "payer": payer,
        "deposit_wei": state.deposit,
        "collateral_wei": state.collateral,
        "epoch": state.epoch,
        "unlocking": state.unlocking,
        "unlock_at": state.unlock_at,
        "flagged": state.flagged,
    }
    if state.unlocking:
        record["withdrawable_in_seconds"] = max(0, state.unlock_at - pool.chain.now())
    _summary(Output(json_mode), record, "pool")


@pool_app.command("unlock")
def unlock(
    wallet: WalletOption = None,
    rpc: RpcOption = None,
    contract: ContractOption = None,
    config: ConfigOption = None,
    json_mode: JsonOption = False,
) -> None:
    """Start the unlock delay; `pool withdraw` pays the pool back after it."""
    pool = connect_pool(rpc, contract, config)
    signer = open_signer(wallet)
    result = pool.request_unlock(signer)
    state = pool.pool(signer.address)
    out = Output(json_mode)
    _summary(
        out,
        {"payer": signer.address, "unlock_at": state.unlock_at, **_tx(result)},
        "unlock requested",
    )
    out.note("Payees can still redeem until then; funding your own pool cancels the unlock.")


@pool_app.command("withdraw")
def withdraw(
    wallet: WalletOption = None,
    rpc: RpcOption = None,
    contract: ContractOption = None,
    config: ConfigOption = None,
    json_mode: JsonOption = False,
) -> None:
    """After the unlock delay, take deposit and collateral back (vouchers signed so far die)."""
    pool = connect_pool(rpc, contract, config)
    signer = open_signer(wallet)
    before = pool.pool(signer.address)
    result = pool.withdraw(signer)
    _summary(
        Output(json_mode),
        {
            "payer": signer.address,
            "withdrawn_wei": before.deposit + before.collateral,
            "new_epoch": pool.pool(signer.address).epoch,
            **_tx(result),
        },
        "pool withdrawn",
    )


# -- earnings ---------------------------------------------------------------------------


class _ShowByDefault(TyperGroup):
    """``earnings [ADDRESS]`` means ``earnings show [ADDRESS]``; ``earnings withdraw`` stays."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: typer's click Context
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["show", *args]
        return super().parse_args(ctx, args)


earnings_app = typer.Typer(
    cls=_ShowByDefault,
    help="A payee's redeemed earnings: `earnings [ADDRESS]`, `earnings withdraw`.",
)


@earnings_app.command("show")
def show_earnings(
    address: Annotated[
        str | None,
        typer.Argument(metavar="[ADDRESS]", help="Payee (default: the wallet's address)."),
    ] = None,
    wallet: WalletOption = None,
    rpc: RpcOption = None,
    contract: ContractOption = None,
    config: ConfigOption = None,
    json_mode: JsonOption = False,
) -> None:
    """Show what redeemed vouchers have credited to a payee (the default command)."""
    payee = _address_or_wallet(address, wallet)
    pool = connect_pool(rpc, contract, config)
    _summary(Output(json_mode), {"payee": payee, "earnings_wei": pool.earnings(payee)}, "earnings")


@earnings_app.command("withdraw")
def withdraw_earnings(
    wallet: WalletOption = None,
    rpc: RpcOption = None,
    contract: ContractOption = None,
    config: ConfigOption = None,
    json_mode: JsonOption = False,
) -> None:
    """Send the wallet's earnings to it."""
    pool = connect_pool(rpc, contract, config)
    signer = open_signer(wallet)
    amount = pool.earnings(signer.address)
    if amount == 0:
        raise UsageError(f"{signer.address} has no earnings to withdraw")
    result = pool.withdraw_earnings(signer)
    _summary(
        Output(json_mode),
        {"payee": signer.address, "withdrawn_wei": amount, **_tx(result)},
        "earnings withdrawn",
    )


# -- helpers ----------------------------------------------------------------------------


def _address_or_wallet(address: str | None, wallet: Path | None) -> str:
    from thetadist.pay.config import parse_address
    from thetadist.pay.wallet import default_wallet_path, wallet_address

    if address is not None:
        return parse_address(address)
    return wallet_address(wallet or default_wallet_path())


def _tx(result: TxResult) -> dict[str, Any]:
    return {"tx_hash": result.tx_hash, "gas_used": result.gas_used}


def _summary(out: Output, record: dict[str, Any], title: str) -> None:
    """JSON keeps exact integer wei under ``*_wei`` keys; people read ``1.5 ether``."""
    if not out.json_mode:
        record = {
            (key[: -len("_wei")] if key.endswith("_wei") else key): (
                format_amount(value) if key.endswith("_wei") else value
            )
            for key, value in record.items()
        }
    out.summary(record, title)
