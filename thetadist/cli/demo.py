"""``thetadist demo``: the quick start's main job, on embedded defaults.

Writes a sample game build (version 1 and its patch, version 2) and both manifests, then runs
a loopback swarm in one process: the embedded tracker, one seeder of version 2 (an origin with
a capped upload, super-seeding) and three fetchers — one updating an installed version 1 in
place, two starting from nothing — that feed each other.  Shows live progress and where every
fetcher's bytes came from, and verifies every copy.

Unless ``--free``, the swarm is paid, on an in-process EVM (eth-tester on py-evm): a
TicketPool is deployed, each fetcher funds a pool, every relayer (the origin and each fetcher)
charges per MiB, every verified piece is paid with a voucher, and at the end every party
redeems its vouchers on-chain; the summary shows what each paid and earned.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import trio
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from thetadist.api import FetchResult, fetch, seed
from thetadist.cli.common import JsonOption
from thetadist.cli.output import Output
from thetadist.cli.runner import run_until_signal
from thetadist.errors import IntegrityError, PaymentError
from thetadist.events import ChunksCopied, Event, PieceStored, VoucherReceived, VoucherSigned
from thetadist.manifest.create import create_manifest
from thetadist.manifest.diff import diff
from thetadist.manifest.model import Manifest
from thetadist.manifest.verify import verify_tree
from thetadist.net.payments import Payments
from thetadist.net.swarm import Swarm, SwarmConfig
from thetadist.pay.accounts import price_of
from thetadist.pay.amounts import format_amount

if TYPE_CHECKING:
    from thetadist.pay.economy import Economy
from thetadist.sample import write_sample_builds
from thetadist.tracker.server import serve_tracker
from thetadist.units import format_size

ORIGIN_RATE = 8_000_000  # bytes/s: a slow origin makes the peer-to-peer relaying visible
PRICE_PER_MIB = 10**13  # wei (10,000 gwei): a 40 MiB build costs 0.0004 ether
VOUCHER_DRAIN_TIMEOUT = 10.0
VOUCHER_QUIET_TIME = 0.3


def demo(
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the sample builds (default: a temporary directory, removed after)."
        ),
    ] = None,
    scale: Annotated[int, typer.Option(min=1, max=64, help="Sample size, ×40 MiB.")] = 1,
    free: Annotated[
        bool, typer.Option("--free", help="No payments: a private swarm, no chain.")
    ] = False,
    json_mode: JsonOption = False,
) -> None:
    """Patch and distribute a sample build over a paid loopback swarm (tracker, seeder, 3
    fetchers, an in-process EVM)."""
    out = Output(json_mode)
    temporary = workdir is None
    root = Path(tempfile.mkdtemp(prefix="thetadist-demo-")) if workdir is None else workdir
    economy: Economy | None = None
    try:
        started = time.perf_counter()
        v1, v2 = write_sample_builds(root, scale=scale)
        manifest_v1 = create_manifest(v1, name="sample-game", version="1")
        manifest_v2 = create_manifest(
            v2, name="sample-game", version="2", previous=manifest_v1, previous_dir=v1
        )
        manifest_v2.save(root / "v2.manifest")
        changes = diff(manifest_v1, manifest_v2)
        out.note(
            f"sample build in {root}: version 2 patches {len(changes.changed)} files, adds "
            f"{len(changes.added)}, removes {len(changes.removed)}, renames "
            f"{len(changes.renamed)}; a holder of version 1 needs "
            f"{format_size(changes.bytes_to_fetch)} of {format_size(manifest_v2.total_size)}"
        )
        installed = root / "fetcher-1-installed-v1"
        if installed.exists():
            shutil.rmtree(installed)
        shutil.copytree(v1, installed, symlinks=True)
        targets = [installed, root / "fetcher-2", root / "fetcher-3"]
        for target in targets[1:]:
            shutil.rmtree(target, ignore_errors=True)
        payments: list[Payments | None] = [None] * 4
        if not free:
            economy = _economy(out, root, manifest_v2.total_size)
            payments = [economy.payments(party) for party in economy.parties]
        results, seeder = _run_swarm(out, manifest_v2, v2, targets, payments)
        for target in targets:
            if not verify_tree(manifest_v2, target).intact:
                raise IntegrityError(f"demo copy {target} does not match the manifest")
        rows = [
            _FetcherRow.of(name, result, seeder)
            for name, result in zip(
                ("fetcher-1 (had v1)", "fetcher-2", "fetcher-3"), results, strict=True
            )
        ]
        out.table(
            "where the bytes came from",
            ["fetcher", "local disk", "origin", "other fetchers", "uploaded", "seconds"],
            [
                [
                    r.fetcher,
                    format_size(r.from_local_disk),
                    format_size(r.from_origin),
                    format_size(r.from_other_fetchers),
                    format_size(r.uploaded_to_peers),
                    f"{r.seconds:.1f}",
                ]
                for r in rows
            ],
        )
        origin_uploaded = sum(r.from_origin for r in rows)
        money = _settle(out, economy) if economy is not None else {"payments": "free"}
        out.summary(
            {
                "manifest_id": manifest_v2.id_hex,
                "bytes_total": manifest_v2.total_size,
                **({"fetchers": [asdict(r) for r in rows]} if out.json_mode else {}),
                "origin_uploaded_bytes": origin_uploaded,
                "origin_upload_ratio": round(origin_uploaded / manifest_v2.total_size, 3),
                **money,
                "verified": True,
                "seconds": round(time.perf_counter() - started, 3),
            },
            "demo: sample-game 2 over a loopback swarm",
        )
    finally:
        if economy is not None:
            economy.close()
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


def _economy(out: Output, root: Path, total_size: int) -> Economy:
    """Deploy a TicketPool on the in-process EVM; the origin and every fetcher charge
    ``PRICE_PER_MIB``; every fetcher funds a pool that covers the build twice over."""
    from thetadist.pay.chain import Chain  # web3 and py-evm: loaded for the paid demo only
    from thetadist.pay.economy import Economy

    economy = Economy.deploy(Chain.embedded(), root / "ledgers")
    deposit = 2 * price_of(total_size, PRICE_PER_MIB) + PRICE_PER_MIB
    economy.party("origin", price_per_mib=PRICE_PER_MIB)
    for number in (1, 2, 3):
        economy.party(
            f"fetcher-{number}",
            price_per_mib=PRICE_PER_MIB,
            deposit=deposit,
            max_price_per_mib=PRICE_PER_MIB,
        )
    out.note(
        f"paid swarm on an in-process EVM (chain {economy.chain.chain_id}), TicketPool "
        f"{economy.pool.address}; every relayer charges {format_amount(PRICE_PER_MIB)} per MiB, "
        f"each fetcher deposited {_ether(deposit)}"
    )
    return economy


def _ether(wei: int) -> str:
    return f"{wei / 10**18:.6f} ETH"


def _settle(out: Output, economy: Economy) -> dict[str, object]:
    """Redeem every party's vouchers on-chain; check that the chain credited exactly what the
    payers signed; show and return the figures."""
    settlements = economy.settle()
    paid = sum(s.paid_wei for s in settlements)
    redeemed = sum(s.redeemed.paid_wei for s in settlements)
    out.table(
        "who paid and who earned (redeemed on-chain)",
        ["party", "address", "pieces paid", "paid", "earned", "vouchers redeemed", "gas"],
        [
            [
                s.name,
                s.address[:10] + "…",
                s.pieces_paid,
                _ether(s.paid_wei),
                _ether(s.earnings_wei),
                s.redeemed.vouchers,
                s.redeemed.gas_used,
            ]
            for s in settlements
        ],
    )
    if redeemed != paid:
        raise PaymentError(
            f"the chain credited {redeemed} wei for vouchers worth {paid} wei signed"
        )
    origin = settlements[0]
    return {
        "paid_wei": paid,
        "redeemed_wei": redeemed,
        "origin_redeemed_wei": origin.redeemed.paid_wei,
        "pieces_paid": sum(s.pieces_paid for s in settlements),
        "redeem_gas_used": sum(s.redeemed.gas_used for s in settlements),
        "contract": economy.pool.address,
        "chain_id": economy.chain.chain_id,
    }


@dataclass(frozen=True)
class _FetcherRow:
    fetcher: str
    from_local_disk: int
    from_origin: int
    from_other_fetchers: int
    uploaded_to_peers: int
    seconds: float

    @classmethod
    def of(cls, name: str, result: FetchResult, origin: str) -> _FetcherRow:
        from_origin = result.bytes_from_peers.get(origin, 0)
        return cls(
            name,
            sum(result.bytes_from_local.values()),
            from_origin,
            result.bytes_from_peers_total - from_origin,
            result.uploaded,
            result.seconds,
        )


def _run_swarm(
    out: Output,
    manifest: Manifest,
    origin_dir: Path,
    targets: list[Path],
    payments: list[Payments | None],
) -> tuple[list[FetchResult], str]:
    progress = Progress(
        TextColumn("[bold]{task.description:<22}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        console=out.console,
        transient=True,
        disable=out.json_mode or not out.console.is_terminal,
    )
    tasks = [progress.add_task(f"fetcher-{n}", total=manifest.total_size) for n in (1, 2, 3)]
    results: list[FetchResult] = []
    seeder_label: list[str] = []
    vouchers = {"signed": 0, "received": 0}

    def count_vouchers(event: Event) -> None:
        if isinstance(event, VoucherSigned):
            vouchers["signed"] += event.amount_wei
        elif isinstance(event, VoucherReceived):
            vouchers["received"] += event.amount_wei

    def on_event(task: int) -> Callable[[Event], None]:
        def handle(event: Event) -> None:
            count_vouchers(event)
            if isinstance(event, ChunksCopied | PieceStored):
                size = event.bytes if isinstance(event, ChunksCopied) else event.size
                if isinstance(event, ChunksCopied) or not event.source.startswith("/"):
                    progress.advance(tasks[task], size)

        return handle

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            tracker_port = await nursery.start(serve_tracker, "127.0.0.1", 0)
            tracker = f"http://127.0.0.1:{tracker_port}/announce"
            origin: Swarm = await nursery.start(
                partial(
                    seed,
                    manifest,
                    origin_dir,
                    listen=("127.0.0.1", 0),
                    trackers=[tracker],
                    config=SwarmConfig(max_upload_rate=ORIGIN_RATE, super_seed=True),
                    payments=payments[0],
                    on_event=count_vouchers,
                )
            )
            seeder_label.append(f"127.0.0.1:{origin.port}")
            for number, target in enumerate(targets):
                results.append(
                    await nursery.start(
                        partial(
                            fetch,
                            manifest,
                            target,
                            trackers=[tracker],
                            keep_seeding=True,
                            config=SwarmConfig(listen=("127.0.0.1", 0)),
                            on_event=on_event(number),
                            payments=payments[number + 1],
                        )
                    )
                )
            while not all(result.complete for result in results):
                await trio.sleep(0.1)

            # The last vouchers may still be queued or on the wire (a voucher a payer has
            # recorded but not yet sent would count as paid and never reach its payee), and a
            # late endgame duplicate is paid for too: stop once all is settled for a while.
            def settled() -> bool:
                return vouchers["signed"] == vouchers["received"] and all(
                    p.idle for p in payments if p is not None
                )

            with trio.move_on_after(VOUCHER_DRAIN_TIMEOUT):
                quiet_since = trio.current_time()
                while trio.current_time() - quiet_since < VOUCHER_QUIET_TIME:
                    await trio.sleep(0.05)
                    if not settled():
                        quiet_since = trio.current_time()
            nursery.cancel_scope.cancel()

    with progress:
        _, interrupted = run_until_signal(main)
    if interrupted:
        raise KeyboardInterrupt
    return results, seeder_label[0]
