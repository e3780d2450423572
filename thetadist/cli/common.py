"""Option types and helpers shared by the command groups."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from thetadist.manifest.model import Manifest
from thetadist.manifest.signing import parse_public_key

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print NDJSON events and a final summary object.")
]
TrustOption = Annotated[
    list[str] | None,
    typer.Option(
        "--trust",
        metavar="PUBKEY",
        help="Require a valid signature by this Ed25519 key (hex or key file).",
    ),
]


def load_manifest(path: Path, trust: list[str] | None) -> Manifest:
    keys = [parse_public_key(text) for text in trust or []]
    return Manifest.load(path, trust=keys)
