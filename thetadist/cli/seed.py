"""``thetadist seed``: serve a build to the swarm until Ctrl-C."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import trio
import typer

from thetadist.api import seed as seed_build
from thetadist.cli.chain import ConfigOption, ContractOption, RpcOption, WalletOption
from thetadist.cli.common import JsonOption, TrustOption, load_manifest, swarm_config
from thetadist.cli.output import Output
from thetadist.cli.paying import (
    DEFAULT_CREDIT_WINDOW_TEXT,
    CreditWindowOption,
    FreeOption,
    LedgerOption,
    PaymentTally,
    PriceOption,
    set_up_payments,
)
from thetadist.cli.runner import run_until_signal
from thetadist.events import (
    DataChecked,
    Event,
    Listening,
    PaymentRefused,
    PeerBanned,
    PeerConnected,
    SwarmProgress,
)
from thetadist.manifest.model import Manifest
from thetadist.net.payments import Payments
from thetadist.net.swarm import Address, Swarm, SwarmConfig
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
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Hash every piece on every core before serving (as BitTorrent clients check "
            "their data on start); without it each piece is hashed the first time it is served.",
        ),
    ] = False,
    price: PriceOption = None,
    credit_window: CreditWindowOption = DEFAULT_CREDIT_WINDOW_TEXT,
    free: FreeOption = False,
    wallet: WalletOption = None,
    rpc: RpcOption = None,
    contract: ContractOption = None,
    config_file: ConfigOption = None,
    ledger: LedgerOption = None,
    trust: TrustOption = None,
    json_mode: JsonOption = False,
) -> None:
    """Serve DIR, described by --manifest, to peers; every piece is verified as it is read.

    With --price, peers pay per MiB with vouchers (recorded in the ledger; redeem them with
    `thetadist tickets redeem`)."""
    out = Output(json_mode)
    manifest = load_manifest(manifest_file, trust)
    resources = ExitStack()
    config = swarm_config(listen, max_upload_rate, "0", max_peers, super_seed=super_seed)
    peer_addresses = [parse_hostport(text) for text in peers or []]
    started = time.perf_counter()
    with resources:
        payments = set_up_payments(
            resources,
            free=free,
            price=price,
            credit_window=credit_window,
            wallet=wallet,
            max_price=None,
            rpc=rpc,
            contract=contract,
            config=config_file,
            ledger=ledger,
        )
        _serve(out, manifest, directory, config, trackers, peer_addresses, payments, started, check)


def _serve(
    out: Output,
    manifest: Manifest,
    directory: Path,
    config: SwarmConfig,
    trackers: list[str] | None,
    peer_addresses: list[Address],
    payments: Payments | None,
    started: float,
    check: bool,
) -> None:
    tally = PaymentTally()

    def on_event(event: Event) -> None:
        out.event(event)
        tally.count(event)
        if isinstance(event, DataChecked):
            corrupt = event.pieces_withdrawn
            out.note(
                f"checked {event.pieces_checked} pieces in {event.seconds:.1f} s"
                + (f"; {corrupt} corrupt, not served" if corrupt else "")
            )
        elif isinstance(event, Listening):
            out.note(
                f"seeding {manifest.name} {manifest.version} on {event.host}:{event.port} "
                f"(info-hash {manifest.info_hash.hex()}); Ctrl-C to stop"
            )
        elif isinstance(event, PeerConnected):
            out.note(f"peer connected: {event.peer}")
        elif isinstance(event, PeerBanned | PaymentRefused):
            out.note(f"{event.kind.replace('_', ' ')}: {event.peer} ({event.reason})")
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
                        payments=payments,
                        check=check,
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
            **tally.summary(payments),
            "seconds": round(time.perf_counter() - started, 3),
        },
        "seed",
    )
