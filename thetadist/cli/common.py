"""Option types and helpers shared by the command groups."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from thetadist.manifest.model import Manifest
from thetadist.manifest.signing import parse_public_key
from thetadist.net.swarm import SwarmConfig
from thetadist.swarm.ratelimit import parse_rate
from thetadist.tracker.hostport import parse_hostport

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


def swarm_config(
    listen: str,
    max_upload_rate: str,
    max_download_rate: str,
    max_peers: int,
    *,
    super_seed: bool = False,
) -> SwarmConfig:
    return SwarmConfig(
        listen=parse_hostport(listen),
        max_peers=max_peers,
        max_upload_rate=parse_rate(max_upload_rate),
        max_download_rate=parse_rate(max_download_rate),
        super_seed=super_seed,
    )
