"""A small hostile thetadist peer, run as a separate process by tests/test_swarm_e2e.py.

    python tests/evil_peer.py MANIFEST MODE LOGFILE

It listens on 127.0.0.1 (a free port), prints ``{"event": "listening", "port": N}`` on
stdout, and speaks the real wire protocol through :class:`thetadist.wire.PeerConnection`:
handshake (with its listen port, so the fetcher labels it ``127.0.0.1:N``) and a BITFIELD
claiming every piece.  What it does with REQUESTs depends on MODE:

* ``corrupt`` — answers every request at once with a PIECE of the right length and wrong bytes;
* ``stall``   — accepts requests and never answers them (it keeps reading, so TCP never blocks);
* ``vanish``  — answers the first request of a connection with half a PIECE frame, then closes.

Everything it sees and does is appended to LOGFILE as NDJSON, one flushed line per fact:
``connection``, ``request`` (piece, first, count), ``piece_sent`` (piece), ``half_piece_sent``
(piece), ``closed`` (by whom).  Runs until killed.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import trio

from thetadist.manifest.model import Manifest
from thetadist.wire import (
    NEED_DATA,
    Bitfield,
    ConnectionClosed,
    Handshake,
    PeerConnection,
    Piece,
    Request,
    encode_piece_parts,
    piece_frame_size,
)

MODES = ("corrupt", "stall", "vanish")


class Log:
    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def write(self, what: str, **fields: Any) -> None:
        self._file.write(json.dumps({"what": what, **fields}) + "\n")
        self._file.flush()


async def serve_one(
    stream: trio.SocketStream, manifest: Manifest, mode: str, port: int, log: Log
) -> None:
    pieces = manifest.pieces
    sizes = manifest.chunk_sizes

    def chunk_sizes(index: int) -> list[int]:
        piece = pieces[index]
        return list(sizes[piece.first_chunk : piece.first_chunk + piece.chunk_count])

    largest = max(p.size for p in pieces)
    handshake = Handshake(
        manifest_id=manifest.id,
        peer_id=b"-EVIL00-" + os.urandom(12),
        listen_port=port,
        max_frame=max(piece_frame_size(largest), 64 * 1024),
    )
    conn = PeerConnection(handshake, piece_count=len(pieces), piece_chunk_sizes=chunk_sizes)
    log.write("connection")
    try:
        await stream.send_all(conn.send(handshake))
        while True:
            data = await stream.receive_some(256 * 1024)
            conn.receive_data(data)
            while (event := conn.next_event()) is not NEED_DATA:
                if isinstance(event, ConnectionClosed):
                    log.write("closed", by="peer")
                    return
                if isinstance(event, Handshake):  # now we may speak: claim every piece
                    everything = Bitfield.from_pieces(len(pieces), range(len(pieces)))
                    await stream.send_all(conn.send(everything))
                    continue
                if not isinstance(event, Request):
                    continue
                run = event.run
                log.write("request", piece=run.piece, first=run.first_chunk, count=run.chunk_count)
                size = sum(chunk_sizes(run.piece)[run.first_chunk :][: run.chunk_count])
                if mode == "corrupt":
                    # Right length, wrong bytes: only the BLAKE3 check can tell.
                    await stream.send_all(conn.send(Piece(*run, b"\xa5" * size)))
                    log.write("piece_sent", piece=run.piece)
                elif mode == "vanish":
                    header, _ = encode_piece_parts(Piece(*run, b"\x00" * size))
                    await stream.send_all(header + b"\x00" * (size // 2))
                    log.write("half_piece_sent", piece=run.piece)
                    await stream.aclose()
                    log.write("closed", by="us")
                    return
                # stall: never answer
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.write("closed", by="peer", error=type(exc).__name__)
    except Exception as exc:  # a protocol error from the fetcher's side of things
        log.write("closed", by="error", error=f"{type(exc).__name__}: {exc}")
    finally:
        with trio.move_on_after(1):
            await stream.aclose()


async def main(manifest_path: str, mode: str, log_path: str) -> None:
    manifest = Manifest.load(manifest_path)
    log = Log(log_path)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def handler(stream: trio.SocketStream) -> None:
        await serve_one(stream, manifest, mode, port, log)

    print(json.dumps({"event": "listening", "host": "127.0.0.1", "port": port}), flush=True)
    await trio.serve_listeners(handler, listeners)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[2] not in MODES:
        sys.exit(f"usage: {sys.argv[0]} MANIFEST {{{'|'.join(MODES)}}} LOGFILE")
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3])
