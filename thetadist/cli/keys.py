"""``thetadist keys generate|show``: Ed25519 publisher keys for signing manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from thetadist.cli.common import JsonOption
from thetadist.cli.output import Output
from thetadist.manifest.signing import (
    generate_key,
    load_private_key,
    public_key_bytes,
    save_private_key,
)

app = typer.Typer(help="Publisher keys for signing manifests.", no_args_is_help=True)


@app.command()
def generate(
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Private key file to create.")
    ] = Path("publisher.key"),
    json_mode: JsonOption = False,
) -> None:
    """Create a new Ed25519 key file (mode 0600) and print its public key."""
    key = generate_key()
    save_private_key(key, output)
    out = Output(json_mode)
    out.summary({"key_file": str(output), "public_key": public_key_bytes(key).hex()}, "new key")
    out.note("Share the public key; readers pass it as --trust PUBKEY.")


@app.command()
def show(
    key_file: Annotated[Path, typer.Argument(metavar="KEYFILE")],
    json_mode: JsonOption = False,
) -> None:
    """Print the public key of a private key file."""
    key = load_private_key(key_file)
    Output(json_mode).summary(
        {"key_file": str(key_file), "public_key": public_key_bytes(key).hex()}, "key"
    )
