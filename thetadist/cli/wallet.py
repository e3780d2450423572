"""``thetadist wallet new|show|import``: the Ethereum key that pays for or earns from pieces.

Passphrases are read from ``THETADIST_PASSPHRASE`` or a hidden prompt, private keys from an
environment variable or a hidden prompt — never from arguments, which other users see in
``ps`` — and neither is ever printed.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from thetadist.cli.common import JsonOption
from thetadist.cli.output import Output
from thetadist.errors import UsageError
from thetadist.pay.wallet import (
    PASSPHRASE_ENV,
    create_wallet,
    default_wallet_path,
    import_wallet,
    open_wallet,
    read_passphrase,
    wallet_address,
)

#: Passphrase of the keystore ``wallet import --from-keystore`` reads, when it differs from
#: the new wallet's.
SOURCE_PASSPHRASE_ENV = "THETADIST_SOURCE_PASSPHRASE"

DEFAULT_WALLET_TEXT = "$THETADIST_WALLET or ~/.config/thetadist/wallet.json"

app = typer.Typer(help="The wallet that pays for pieces or earns from them.", no_args_is_help=True)

OutputOption = Annotated[
    Path | None,
    typer.Option(
        "-o",
        "--output",
        metavar="FILE",
        help="Wallet file to write.",
        show_default=DEFAULT_WALLET_TEXT,
    ),
]
ForceOption = Annotated[
    bool, typer.Option("--force", help="Replace an existing wallet file (its key is lost).")
]


def _target(output: Path | None, force: bool) -> Path:
    """Where to write; refused before any prompt when a wallet is already there."""
    path = output or default_wallet_path()
    if path.exists() and not force:
        raise UsageError(f"wallet {str(path)!r} already exists; not overwriting (see --force)")
    return path


def _new_passphrase() -> str:
    if PASSPHRASE_ENV in os.environ:
        return os.environ[PASSPHRASE_ENV]
    return read_passphrase("Passphrase for the new wallet: ", confirm=True)


def _report(out: Output, path: Path, address: str, title: str) -> None:
    out.summary({"wallet": str(path), "address": address}, title)


@app.command()
def new(
    output: OutputOption = None, force: ForceOption = False, json_mode: JsonOption = False
) -> None:
    """Create a wallet with a new random key (file mode 0600) and print its address."""
    path = _target(output, force)
    address = create_wallet(path, _new_passphrase(), overwrite=force)
    out = Output(json_mode)
    _report(out, path, address, "new wallet")
    out.note("Back the file up and keep the passphrase: without both, the funds are lost.")


@app.command()
def show(
    wallet_file: Annotated[
        Path | None,
        typer.Argument(metavar="FILE", help="Wallet file.", show_default=DEFAULT_WALLET_TEXT),
    ] = None,
    json_mode: JsonOption = False,
) -> None:
    """Print a wallet's address (no passphrase needed)."""
    path = wallet_file or default_wallet_path()
    _report(Output(json_mode), path, wallet_address(path), "wallet")


@app.command(name="import")
def import_(
    private_key_env: Annotated[
        str | None,
        typer.Option(
            "--private-key-env",
            metavar="VAR",
            help="Read the private key (64 hex digits) from environment variable VAR.",
        ),
    ] = None,
    from_keystore: Annotated[
        Path | None,
        typer.Option(
            "--from-keystore",
            metavar="FILE",
            help=f"Take the key from another V3 keystore (passphrase: ${SOURCE_PASSPHRASE_ENV}, "
            f"${PASSPHRASE_ENV} or a prompt).",
        ),
    ] = None,
    output: OutputOption = None,
    force: ForceOption = False,
    json_mode: JsonOption = False,
) -> None:
    """Write an existing key into a wallet; without options, prompt for the private key."""
    if private_key_env is not None and from_keystore is not None:
        raise UsageError("give --private-key-env or --from-keystore, not both")
    path = _target(output, force)
    if from_keystore is not None:
        source = open_wallet(from_keystore, passphrase=os.environ.get(SOURCE_PASSPHRASE_ENV))
        private_key: str | bytes = bytes(source.key)
    elif private_key_env is not None:
        if private_key_env not in os.environ:
            raise UsageError(f"environment variable {private_key_env} is not set")
        private_key = os.environ[private_key_env]
    elif sys.stdin.isatty():
        private_key = getpass.getpass("Private key (hex): ")
    else:
        raise UsageError("give --private-key-env VAR or --from-keystore FILE")
    address = import_wallet(path, _new_passphrase(), private_key=private_key, overwrite=force)
    _report(Output(json_mode), path, address, "imported wallet")
