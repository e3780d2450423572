"""The library's async entry points: ``fetch`` and ``seed``.  Nothing here prints.

import trio, thetadist

async def main():
    manifest = thetadist.Manifest.load("v2.tdm")
    result = await thetadist.fetch(manifest, "installed", sources=["installed"],
                                   trackers=["http://tracker:6969/announce"])
    print(result.bytes_from_peers_total)

trio.run(main)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from thetadist.errors import StoreError, TransportError
from thetadist.events import DataChecked, DownloadComplete, Event, EventCallback, ignore_event
from thetadist.manifest.model import Manifest
from thetadist.net.payments import Payments
from thetadist.net.source import DirectorySource, StoreSource
from thetadist.net.swarm import Address, Swarm, SwarmConfig
from thetadist.store import PieceStore
from thetadist.store.plan import apply_reuse, plan_local_reuse
from thetadist.swarm.picker import PiecePicker


@dataclass
class FetchResult:
    """What a fetch did.  Handed out live through ``task_status`` and updated as it runs."""

    bytes_total: int
    bytes_already_present: int = 0
    bytes_from_local: dict[str, int] = field(default_factory=dict)
    bytes_from_peers: dict[str, int] = field(default_factory=dict)
    uploaded_to_peers: dict[str, int] = field(default_factory=dict)
    complete: bool = False
    seconds: float = 0.0
    peers_banned: list[str] = field(default_factory=list)

    @property
    def bytes_from_peers_total(self) -> int:
        return sum(self.bytes_from_peers.values())

    @property
    def uploaded(self) -> int:
        return sum(self.uploaded_to_peers.values())


def _prepare(
    manifest: Manifest,
    out_dir: Path,
    sources: Sequence[str | os.PathLike[str]],
    on_event: EventCallback,
) -> tuple[PieceStore, int, dict[str, int]]:
    """Open the store and copy in every piece found locally (the output directory first)."""

    def deliver(event: Event) -> None:
        trio.from_thread.run_sync(on_event, event)

    store = PieceStore.open(manifest, out_dir, on_event=deliver, hold_renames=True)
    try:
        before = store.bytes_present
        plan = plan_local_reuse(manifest, [store.out_dir, *sources], store=store, on_event=deliver)
        result = apply_reuse(plan, store, on_event=deliver)
        store.release_renames()
    except BaseException:
        store.close()
        raise
    store._on_event = on_event  # from now on the store is driven from the Trio thread
    return store, before, dict(result.bytes_by_source)


async def fetch(
    manifest: Manifest,
    out_dir: str | os.PathLike[str],
    *,
    peers: Sequence[Address] = (),
    trackers: Sequence[str] = (),
    sources: Sequence[str | os.PathLike[str]] = (),
    config: SwarmConfig | None = None,
    keep_seeding: bool = False,
    on_event: EventCallback = ignore_event,
    peer_id: bytes | None = None,
    payments: Payments | None = None,
    task_status: trio.TaskStatus[FetchResult] = trio.TASK_STATUS_IGNORED,
) -> FetchResult:
    """Assemble ``out_dir`` from local pieces first, then from the swarm, verifying all.

    Serves what it has while downloading; with ``keep_seeding`` it goes on serving after
    completion until cancelled; the :class:`FetchResult` handed to ``task_status.started``
    is updated live, so a caller that cancels still has the figures.  A cancelled fetch
    leaves a resumable staging area.
    """
    started = trio.current_time()
    out = Path(out_dir)
    store, before, from_local = await trio.to_thread.run_sync(
        _prepare, manifest, out, list(sources), on_event
    )
    result = FetchResult(manifest.total_size, before, from_local)

    def completed() -> None:
        result.complete = True
        result.seconds = round(trio.current_time() - started, 3)
        on_event(DownloadComplete(manifest.total_size, result.seconds))

    try:
        if store.all_present and not keep_seeding:
            task_status.started(result)
            await store.finish_async()
            completed()
            return result
        if not store.all_present and not peers and not trackers:
            raise TransportError(
                f"{store.bytes_missing} bytes are in none of the local "
                "sources and no peer or tracker was given; the staged work is kept, rerun with "
                "more sources to finish"
            )
        picker: PiecePicker[bytes] | None = None
        if not store.all_present:
            pieces = manifest.pieces
            needed: dict[int, list[int] | None] = {}
            for index in store.missing_pieces():
                chunks = store.missing_chunks(index)
                needed[index] = None if len(chunks) == pieces[index].chunk_count else chunks
            picker = PiecePicker.from_manifest(manifest, needed)
        swarm = Swarm(
            manifest,
            StoreSource(store),
            config=config,
            store=store,
            picker=picker,
            bytes_present=store.bytes_present,
            on_event=on_event,
            peer_id=peer_id,
            payments=payments,
        )
        result.bytes_from_peers = swarm.totals.downloaded_by_peer
        result.uploaded_to_peers = swarm.totals.uploaded_by_peer
        if picker is None:
            swarm.download_complete.set()
        async with trio.open_nursery() as nursery:
            await nursery.start(swarm.run, list(peers), list(trackers))
            task_status.started(result)
            if picker is not None:
                await swarm.done.wait()
                result.peers_banned = sorted(f"{h}:{p}" for h, p in swarm.banned_addresses)
                if swarm.failure is not None:
                    raise swarm.failure
            if keep_seeding:
                # Every file is in place now; serve from there while the store closes.
                # Stat-ing every file is blocking I/O: keep it off the event loop.
                swarm.source = await trio.to_thread.run_sync(DirectorySource, manifest, out)
            await store.finish_async()
            completed()
            if keep_seeding:
                await trio.sleep_forever()
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    return result


async def seed(
    manifest: Manifest,
    directory: str | os.PathLike[str],
    *,
    listen: Address | None = ("0.0.0.0", 6881),
    trackers: Sequence[str] = (),
    peers: Sequence[Address] = (),
    config: SwarmConfig | None = None,
    on_event: EventCallback = ignore_event,
    peer_id: bytes | None = None,
    payments: Payments | None = None,
    check: bool = False,
    task_status: trio.TaskStatus[Swarm] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``directory`` (a build described by ``manifest``) until cancelled.

    Pieces are verified as they are first read; with ``check``, all of them are hashed on
    every core before serving starts (and then only again if a file changes).  A piece whose
    bytes on disk do not match is withdrawn instead of being uploaded.  ``task_status.started``
    receives the :class:`Swarm` (its ``port`` and ``totals``).
    """
    config = config or SwarmConfig()
    if listen is not None:
        config.listen = listen
    source = await trio.to_thread.run_sync(DirectorySource, manifest, Path(directory))
    if check:
        started = trio.current_time()
        stop = threading.Event()
        try:
            checked, withdrawn = await trio.to_thread.run_sync(
                partial(source.check_all, stop=stop), abandon_on_cancel=True
            )
        except trio.Cancelled:
            stop.set()  # Ctrl-C during a long check: its threads end after their piece
            raise
        on_event(DataChecked(checked, withdrawn, round(trio.current_time() - started, 3)))
    if source.pieces_available == 0 and manifest.pieces:
        held = "no piece of the manifest that checks out" if check else "none of its files"
        raise StoreError(f"{os.fspath(directory)!r} holds {held}")
    swarm = Swarm(
        manifest, source, config=config, on_event=on_event, peer_id=peer_id, payments=payments
    )
    swarm.download_complete.set()
    async with trio.open_nursery() as nursery:
        await nursery.start(swarm.run, list(peers), list(trackers))
        task_status.started(swarm)
