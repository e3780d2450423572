"""The embedded HTTP tracker: Trio sockets, h11 parsing, :class:`SwarmTable` memory.

``await nursery.start(serve_tracker, "127.0.0.1", 0)`` returns the bound port.  Only
``GET /announce`` exists; hostile clients are bounded everywhere (request head size,
per-request and per-connection deadlines, requests per connection, concurrent
connections, torrents and peers in memory).  See docs/tracker.md.

Run it alone with ``python -m thetadist.tracker [HOST:PORT]``.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import h11
import trio

from thetadist.errors import ThetadistError, TrackerError
from thetadist.tracker.protocol import (
    DEFAULT_INTERVAL,
    SwarmLimits,
    SwarmTable,
    build_announce_reply,
    build_failure,
    normalize_ip,
    parse_announce_query,
)

log = logging.getLogger("thetadist.tracker")

ANNOUNCE_PATH = b"/announce"


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int = 512
    max_requests_per_connection: int = 100
    #: Bound on the request line plus headers (h11 ``max_incomplete_event_size``).
    max_request_head: int = 8 * 1024
    #: Time allowed to receive one complete request, including keep-alive idle time.
    request_timeout: float = 10.0
    #: Total lifetime of one connection.
    connection_timeout: float = 60.0
    read_size: int = 8 * 1024


class TrackerServer:
    """Connection handling; one instance serves every listener of :func:`serve_tracker`."""

    def __init__(
        self,
        *,
        interval: int = DEFAULT_INTERVAL,
        swarm_limits: SwarmLimits | None = None,
        server_limits: ServerLimits | None = None,
        trust_ip_param_from_loopback: bool = True,
    ) -> None:
        if interval < 1:
            raise TrackerError("interval must be at least 1 second")
        self.interval = interval
        self.min_interval = max(1, interval // 2)
        self.table = SwarmTable(peer_ttl=2 * interval, limits=swarm_limits or SwarmLimits())
        self.limits = server_limits or ServerLimits()
        self.trust_ip_param_from_loopback = trust_ip_param_from_loopback
        self.connections = 0

    # -- one request ------------------------------------------------------------------

    def respond(self, request: h11.Request, remote_ip: str) -> tuple[int, bytes]:
        """Status and body for ``request`` from ``remote_ip``."""
        if request.method != b"GET":
            return 405, build_failure("only GET is supported")
        path, _, query = request.target.partition(b"?")
        if path != ANNOUNCE_PATH:
            return 404, build_failure("not found: the announce URL ends in /announce")
        try:
            announce = parse_announce_query(query)
        except TrackerError as problem:
            # BEP 3: the reason goes in a 200 reply so that clients show it (opentracker too).
            return 200, build_failure(str(problem))
        ip = remote_ip
        if announce.ip is not None and self.trust_ip_param_from_loopback:
            claimed = normalize_ip(announce.ip)
            if claimed is not None and ipaddress.ip_address(remote_ip).is_loopback:
                ip = claimed
        reply = self.table.announce(announce, ip, trio.current_time())
        return 200, build_announce_reply(
            interval=self.interval,
            min_interval=self.min_interval,
            peers=reply.peers,
            complete=reply.complete,
            incomplete=reply.incomplete,
            compact=announce.compact,
            no_peer_id=announce.no_peer_id,
        )

    # -- one connection ---------------------------------------------------------------

    async def handle(self, stream: trio.SocketStream) -> None:
        """The ``serve_listeners`` handler: never raises (a raise would stop the server)."""
        if self.connections >= self.limits.max_connections:
            await trio.aclose_forcefully(stream)
            return
        self.connections += 1
        try:
            with trio.move_on_after(self.limits.connection_timeout):
                await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as problem:
            log.debug("tracker connection dropped: %s", problem)
        except Exception:
            log.exception("tracker connection failed (a bug)")
        finally:
            self.connections -= 1
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.SocketStream) -> None:
        try:
            peer = stream.socket.getpeername()
        except OSError:
            return
        remote_ip = normalize_ip(str(peer[0])) or "0.0.0.0"
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_request_head)
        for _ in range(self.limits.max_requests_per_connection):
            try:
                with trio.move_on_after(self.limits.request_timeout) as scope:
                    request = await self._read_request(conn, stream)
                if scope.cancelled_caught or request is None:
                    return
                if isinstance(request, int):
                    status, body = request, build_failure("a GET request has no body")
                else:
                    status, body = self.respond(request, remote_ip)
            except h11.RemoteProtocolError as problem:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    too_long = problem.error_status_hint == 431
                    reason = "request line or headers too long" if too_long else "bad HTTP request"
                    await self._send(
                        conn, stream, problem.error_status_hint, build_failure(reason), close=True
                    )
                return
            # After an error the client gets no second chance on this connection.
            await self._send(conn, stream, status, body, close=status >= 400)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _read_request(
        self, conn: h11.Connection, stream: trio.SocketStream
    ) -> h11.Request | int | None:
        """The next request with its (empty) body read; ``413`` if it has a body; ``None``
        when the client went away."""
        request: h11.Request | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(self.limits.read_size)
                conn.receive_data(data)
                if not data and request is None and conn.their_state is h11.IDLE:
                    return None
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                if event.data:
                    return 413
            elif isinstance(event, h11.EndOfMessage):
                return request
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def _send(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        status: int,
        body: bytes,
        *,
        close: bool,
    ) -> None:
        headers = [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
        if status == 405:
            headers.append(("Allow", "GET"))
        if close:
            headers.append(("Connection", "close"))
        try:
            data = conn.send(h11.Response(status_code=status, headers=headers))
            assert data is not None
            data += conn.send(h11.Data(data=body)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as problem:
            log.debug("cannot answer: %s", problem)
            return
        with trio.move_on_after(self.limits.request_timeout):
            await stream.send_all(data)

    async def sweep(self) -> None:
        """Expire silent peers periodically (announces expire their own torrent too)."""
        while True:
            await trio.sleep(min(self.interval, 60))
            dropped = self.table.expire(trio.current_time())
            if dropped:
                log.debug("expired %d peers", dropped)


async def serve_tracker(
    host: str,
    port: int,
    *,
    interval: int = DEFAULT_INTERVAL,
    swarm_limits: SwarmLimits | None = None,
    server_limits: ServerLimits | None = None,
    trust_ip_param_from_loopback: bool = True,
    server: TrackerServer | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``http://HOST:PORT/announce`` until cancelled; report the bound port.

    Pass ``server`` (a :class:`TrackerServer`) to keep a handle on its table; the other
    keyword arguments then are ignored.  A failure to listen (address in use, bad host)
    raises :class:`TrackerError`.
    """
    if server is None:
        server = TrackerServer(
            interval=interval,
            swarm_limits=swarm_limits,
            server_limits=server_limits,
            trust_ip_param_from_loopback=trust_ip_param_from_loopback,
        )
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as problem:
        raise TrackerError(
            f"cannot listen on {host}:{port}: {problem.strerror or problem}"
        ) from None
    bound = int(listeners[0].socket.getsockname()[1])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.sweep)
        await nursery.start(trio.serve_listeners, server.handle, listeners)
        log.info("tracker listening on %s:%d", host, bound)
        task_status.started(bound)


async def run_tracker_until_signal(
    host: str,
    port: int,
    *,
    server: TrackerServer,
    on_listening: Callable[[int], None],
) -> None:
    """Serve until SIGINT or SIGTERM, then return normally (for commands and ``-m``).

    Signals are received, not raised as ``KeyboardInterrupt`` into the handlers; a failure to
    listen is raised as a bare :class:`TrackerError` (not inside an exception group).
    """
    failure: TrackerError | None = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            try:
                bound = await nursery.start(partial(serve_tracker, host, port, server=server))
            except TrackerError as problem:
                failure = problem
                nursery.cancel_scope.cancel()
            else:
                on_listening(bound)
    if failure is not None:
        raise failure


def main(argv: list[str] | None = None) -> int:
    """``python -m thetadist.tracker [HOST:PORT]``: prints ``listening PORT``."""
    from thetadist.tracker.hostport import parse_hostport

    args = sys.argv[1:] if argv is None else argv
    try:
        host, port = parse_hostport(args[0] if args else "127.0.0.1:6969")
        trio.run(
            partial(
                run_tracker_until_signal,
                host,
                port,
                server=TrackerServer(),
                on_listening=lambda bound: print(f"listening {bound}", flush=True),
            )
        )
    except ThetadistError as problem:
        print(f"error: {problem}", file=sys.stderr)
        return problem.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
