"""``thetadist fetch``: assemble a build from local directories first, then from the swarm."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import trio
import typer

from thetadist.api import FetchResult
from thetadist.api import fetch as fetch_build
from thetadist.cli.chain import ConfigOption, ContractOption, RpcOption, WalletOption
from thetadist.cli.common import JsonOption, TrustOption, load_manifest, swarm_config
from thetadist.cli.output import Output
from thetadist.cli.paying import (
    DEFAULT_CREDIT_WINDOW_TEXT,
    CreditWindowOption,
    FreeOption,
    LedgerOption,
    MaxPriceOption,
    PaymentTally,
    PriceOption,
    set_up_payments,
)
from thetadist.cli.runner import run_until_signal
from thetadist.errors import Interrupted, ThetadistError
from thetadist.events import (
    ChunksCopied,
    DownloadComplete,
    Event,
    PaymentDeclined,
    PieceStored,
    SwarmProgress,
)
from thetadist.manifest.model import Manifest
from thetadist.net.payments import Payments
from thetadist.net.swarm import Address, SwarmConfig
from thetadist.tracker.hostport import parse_hostport


def fetch(
    manifest_file: Annotated[Path, typer.Argument(metavar="MANIFEST")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory to assemble into.")],
    peers: Annotated[
        list[str] | None,
        typer.Option("--peer", metavar="HOST:PORT", help="A peer to fetch from (repeatable)."),
    ] = None,
    trackers: Annotated[
        list[str] | None,
        typer.Option(
            "--tracker", metavar="URL", help="A BitTorrent HTTP tracker announce URL (repeatable)."
        ),
    ] = None,
    sources: Annotated[
        list[Path] | None,
        typer.Option(
            "--from", metavar="DIR", help="Local directory to reuse pieces from (repeatable)."
        ),
    ] = None,
    keep_seeding: Annotated[
        bool,
        typer.Option(
            "--keep-seeding", help="Keep serving after the download completes, until Ctrl-C."
        ),
    ] = False,
    listen: Annotated[
        str,
        typer.Option(metavar="HOST:PORT", help="Where to accept peers (port 0: any free port)."),
    ] = "0.0.0.0:0",
    max_upload_rate: Annotated[
        str, typer.Option(metavar="RATE", help="e.g. 20MB/s; 0 = no cap.")
    ] = "0",
    max_download_rate: Annotated[str, typer.Option(metavar="RATE")] = "0",
    max_peers: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    wallet: WalletOption = None,
    max_price: MaxPriceOption = None,
    price: PriceOption = None,
    credit_window: CreditWindowOption = DEFAULT_CREDIT_WINDOW_TEXT,
    free: FreeOption = False,
    rpc: RpcOption = None,
    contract: ContractOption = None,
    config_file: ConfigOption = None,
    ledger: LedgerOption = None,
    trust: TrustOption = None,
    json_mode: JsonOption = False,
) -> None:
    """Fetch MANIFEST into OUT: local pieces first, the rest from peers, all verified.

    With --wallet and --max-price, pays each peer that charges (at most --max-price per MiB)
    one voucher per verified piece; without them, only free peers are used."""
    out = Output(json_mode)
    manifest = load_manifest(manifest_file, trust)
    config = swarm_config(listen, max_upload_rate, max_download_rate, max_peers)
    peer_addresses = [parse_hostport(text) for text in peers or []]
    started = time.perf_counter()
    done: dict[str, float] = {}
    tally = PaymentTally()
    resources = ExitStack()
    with resources:
        payments = set_up_payments(
            resources,
            free=free,
            price=price,
            credit_window=credit_window,
            wallet=wallet,
            max_price=max_price,
            rpc=rpc,
            contract=contract,
            config=config_file,
            ledger=ledger,
        )
        _fetch(
            out,
            manifest,
            output,
            peer_addresses,
            trackers,
            sources,
            config,
            keep_seeding,
            payments,
            tally,
            started,
            done,
        )


def _fetch(
    out: Output,
    manifest: Manifest,
    output: Path,
    peer_addresses: list[Address],
    trackers: list[str] | None,
    sources: list[Path] | None,
    config: SwarmConfig,
    keep_seeding: bool,
    payments: Payments | None,
    tally: PaymentTally,
    started: float,
    done: dict[str, float],
) -> None:

    by_source: dict[str, int] = {}

    def on_event(event: Event) -> None:
        out.event(event)
        tally.count(event)
        if isinstance(event, PaymentDeclined):
            out.note(f"not paying {event.peer}: {event.reason}")
        elif isinstance(event, ChunksCopied):
            out.advance(event.bytes)
            key = f"local {event.source}"
            by_source[key] = by_source.get(key, 0) + event.bytes
        elif isinstance(event, PieceStored) and not event.source.startswith("/"):
            out.advance(event.size)
            key = f"peer {event.source}"
            by_source[key] = by_source.get(key, 0) + event.size
        elif isinstance(event, SwarmProgress):
            out.describe(f"fetching · {event.peers} peers · ↑ {event.upload_rate / 1e6:.1f} MB/s")
        elif isinstance(event, DownloadComplete):
            done["seconds"] = event.seconds
            if keep_seeding:
                out.note(f"download complete in {event.seconds:.1f} s; seeding until Ctrl-C")

    live: list[FetchResult] = []

    async def call() -> None:
        async def runner(task_status: trio.TaskStatus[FetchResult]) -> None:
            await fetch_build(
                manifest,
                output,
                peers=peer_addresses,
                trackers=trackers or [],
                sources=sources or [],
                config=config,
                keep_seeding=keep_seeding,
                on_event=on_event,
                payments=payments,
                task_status=task_status,
            )

        async with trio.open_nursery() as nursery:
            live.append(await nursery.start(runner))

    with out.progress("fetching", manifest.total_size, by_source):
        _, interrupted = run_until_signal(call)
    result = live[0] if live else None
    if result is None or not result.complete:
        if interrupted:
            raise Interrupted(
                "interrupted; the staged work is kept, rerun the same command to resume"
            )
        raise ThetadistError("fetch ended without completing")  # unreachable without a bug
    summary = _summary(manifest.id_hex, output, result)
    summary.update(tally.summary(payments))
    summary["seconds_total"] = round(time.perf_counter() - started, 3)
    out.summary(summary, "fetch")


def _summary(manifest_id: str, output: Path, result: FetchResult) -> dict[str, object]:
    return {
        "manifest_id": manifest_id,
        "output": str(output),
        "complete": result.complete,
        "bytes_total": result.bytes_total,
        "bytes_already_present": result.bytes_already_present,
        "bytes_from_local": result.bytes_from_local,
        "bytes_from_local_total": sum(result.bytes_from_local.values()),
        "bytes_from_peers": result.bytes_from_peers,
        "bytes_from_peers_total": result.bytes_from_peers_total,
        "peers_used": len(result.bytes_from_peers),
        "peers_banned": result.peers_banned,
        "uploaded_bytes": result.uploaded,
        "seconds": result.seconds,
    }
