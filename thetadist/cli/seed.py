"""``thetadist seed``: serve a build to the swarm until Ctrl-C."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import trio
import typer

from thetadist.api import seed as seed_build
from thetadist.cli.common import JsonOption, TrustOption, load_manifest, swarm_config
from thetadist.cli.output import Output
from thetadist.cli.runner import run_until_signal
from thetadist.events import Event, Listening, PeerBanned, PeerConnected, SwarmProgress
from thetadist.net.swarm import Swarm
from thetadist.tracker.hostport import parse_hostport


def seed(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="The build to serve.")],
    manifest_file: Annotated[
        Path, typer.Option("--manifest", metavar="FILE", help="The manifest describing DIR.")
    ],
    listen: Annotated[
        str, typer.Option(metavar="HOST:PORT", help="Where to accept peers.")
    ] = "0.0.0.0:6881",
    trackers: Annotated[
        list[str] | None,
        typer.Option(
            "--tracker", metavar="URL", help="A BitTorrent HTTP tracker announce URL (repeatable)."
        ),
    ] = None,
    peers: Annotated[
        list[str] | None,
        typer.Option("--peer", metavar="HOST:PORT", help="A peer to connect to (repeatable)."),
    ] = None,
    max_upload_rate: Annotated[
        str, typer.Option(metavar="RATE", help="e.g. 20MB/s; 0 = no cap.")
    ] = "0",
    max_peers: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    super_seed: Annotated[
        bool,
        typer.Option(
            "--super-seed", help="Upload each piece once while others are missing (origin mode)."
        ),
    ] = False,
    trust: TrustOption = None,
    json_mode: JsonOption = False,
) -> None:
    """Serve DIR, described by --manifest, to peers; every piece is verified as it is read."""
    out = Output(json_mode)
    manifest = load_manifest(manifest_file, trust)
    config = swarm_config(listen, max_upload_rate, "0", max_peers, super_seed=super_seed)
    peer_addresses = [parse_hostport(text) for text in peers or []]
    started = time.perf_counter()

    def on_event(event: Event) -> None:
        out.event(event)
        if isinstance(event, Listening):
            out.note(
                f"seeding {manifest.name} {manifest.version} on {event.host}:{event.port} "
                f"(info-hash {manifest.info_hash.hex()}); Ctrl-C to stop"
            )
        elif isinstance(event, PeerConnected | PeerBanned):
            out.note(f"{event.kind.replace('_', ' ')}: {event.peer}")
        elif isinstance(event, SwarmProgress):
            out.describe(f"seeding · {event.peers} peers · ↑ {event.upload_rate / 1e6:.1f} MB/s")
            out.advance(event.uploaded - uploaded_shown[0])
            uploaded_shown[0] = event.uploaded

    live: list[Swarm] = []
    uploaded_shown = [0]

    async def call() -> None:
        async with trio.open_nursery() as nursery:
            live.append(
                await nursery.start(
                    lambda task_status: seed_build(
                        manifest,
                        directory,
                        listen=config.listen,
                        trackers=trackers or [],
                        peers=peer_addresses,
                        config=config,
                        on_event=on_event,
                        task_status=task_status,
                    )
                )
            )

    run_until_signal(call)
    totals = live[0].totals if live else None
    out.summary(
        {
            "manifest_id": manifest.id_hex,
            "port": live[0].port if live else None,
            "uploaded_bytes": totals.uploaded if totals else 0,
            "uploaded_by_peer": dict(totals.uploaded_by_peer) if totals else {},
            "seconds": round(time.perf_counter() - started, 3),
        },
        "seed",
    )
