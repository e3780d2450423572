"""``thetadist tracker``: run the embedded BitTorrent HTTP tracker until Ctrl-C."""

from __future__ import annotations

import time
from functools import partial
from typing import Annotated

import trio
import typer

from thetadist.cli.common import JsonOption
from thetadist.cli.output import Output
from thetadist.tracker.hostport import parse_hostport
from thetadist.tracker.protocol import DEFAULT_INTERVAL
from thetadist.tracker.server import TrackerServer, run_tracker_until_signal


def tracker(
    listen: Annotated[
        str,
        typer.Option(
            "--listen", metavar="HOST:PORT", help="Address to serve /announce on (port 0: any)."
        ),
    ] = "127.0.0.1:6969",
    interval: Annotated[
        int,
        typer.Option(
            min=1, max=86400, help="Seconds between announces; silent peers expire after 2×."
        ),
    ] = DEFAULT_INTERVAL,
    json_mode: JsonOption = False,
) -> None:
    """Serve a BEP 3/23 HTTP tracker at http://HOST:PORT/announce until interrupted."""
    out = Output(json_mode)
    host, port = parse_hostport(listen)
    started = time.perf_counter()
    server = TrackerServer(interval=interval)

    def listening(bound: int) -> None:
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{bound}/announce"
        if json_mode:
            out.emit({"event": "tracker_listening", "host": host, "port": bound, "url": url})
        else:
            out.note(f"tracker listening on {url} (Ctrl-C to stop)")

    # Returns on Ctrl-C / SIGTERM; a listen failure raises TrackerError (exit code 8).
    trio.run(partial(run_tracker_until_signal, host, port, server=server, on_listening=listening))
    out.summary(
        {
            "listen": listen,
            "torrents": server.table.torrent_count,
            "peers": server.table.peer_count,
            "seconds": round(time.perf_counter() - started, 3),
        },
        "tracker",
    )
