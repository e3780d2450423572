"""``thetadist demo``: the quick start's main job, on embedded defaults.

Writes a sample game build (version 1 and its patch, version 2) and both manifests, then runs
a loopback swarm in one process: the embedded tracker, one seeder of version 2 (an origin with
a capped upload, super-seeding) and three fetchers — one updating an installed version 1 in
place, two starting from nothing — that feed each other.  Shows live progress and where every
fetcher's bytes came from, and verifies every copy.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Annotated

import trio
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from thetadist.api import FetchResult, fetch, seed
from thetadist.cli.common import JsonOption
from thetadist.cli.output import Output
from thetadist.cli.runner import run_until_signal
from thetadist.errors import IntegrityError
from thetadist.events import ChunksCopied, Event, PieceStored
from thetadist.manifest.create import create_manifest
from thetadist.manifest.diff import diff
from thetadist.manifest.model import Manifest
from thetadist.manifest.verify import verify_tree
from thetadist.net.swarm import Swarm, SwarmConfig
from thetadist.sample import write_sample_builds
from thetadist.tracker.server import serve_tracker
from thetadist.units import format_size

ORIGIN_RATE = 8_000_000  # bytes/s: a slow origin makes the peer-to-peer relaying visible


def demo(
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the sample builds (default: a temporary directory, removed after)."
        ),
    ] = None,
    scale: Annotated[int, typer.Option(min=1, max=64, help="Sample size, ×40 MiB.")] = 1,
    json_mode: JsonOption = False,
) -> None:
    """Patch and distribute a sample build over a loopback swarm (tracker, seeder, 3 fetchers)."""
    out = Output(json_mode)
    temporary = workdir is None
    root = Path(tempfile.mkdtemp(prefix="thetadist-demo-")) if workdir is None else workdir
    try:
        started = time.perf_counter()
        v1, v2 = write_sample_builds(root, scale=scale)
        manifest_v1 = create_manifest(v1, name="sample-game", version="1")
        manifest_v2 = create_manifest(v2, name="sample-game", version="2", previous=manifest_v1)
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
        results, seeder = _run_swarm(out, manifest_v2, v2, targets)
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
        out.summary(
            {
                "manifest_id": manifest_v2.id_hex,
                "bytes_total": manifest_v2.total_size,
                **({"fetchers": [asdict(r) for r in rows]} if out.json_mode else {}),
                "origin_uploaded_bytes": origin_uploaded,
                "origin_upload_ratio": round(origin_uploaded / manifest_v2.total_size, 3),
                "verified": True,
                "seconds": round(time.perf_counter() - started, 3),
            },
            "demo: sample-game 2 over a loopback swarm",
        )
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


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
    out: Output, manifest: Manifest, origin_dir: Path, targets: list[Path]
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

    def on_event(task: int) -> Callable[[Event], None]:
        def handle(event: Event) -> None:
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
                        )
                    )
                )
            while not all(result.complete for result in results):
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()

    with progress:
        _, interrupted = run_until_signal(main)
    if interrupted:
        raise KeyboardInterrupt
    return results, seeder_label[0]
