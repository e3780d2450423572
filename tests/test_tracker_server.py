"""The embedded tracker over real TCP, and the client against it and against bad servers."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import pytest
import trio

from thetadist.errors import LocalProtocolError, TrackerError
from thetadist.tracker import announce, serve_tracker
from thetadist.tracker.protocol import build_failure, parse_announce_reply
from thetadist.tracker.server import ServerLimits, TrackerServer

H = bytes(range(20))
PID_A = b"-TD0001-aaaaaaaaaaaa"
PID_B = b"-TD0001-bbbbbbbbbbbb"
Q = "info_hash=" + "".join(f"%{b:02x}" for b in H) + "&peer_id=" + "A" * 20 + "&port=7000"


async def _start(nursery: trio.Nursery, **kwargs: object) -> tuple[str, TrackerServer]:
    server = TrackerServer(**kwargs)  # type: ignore[arg-type]
    port = await nursery.start(functools.partial(serve_tracker, "127.0.0.1", 0, server=server))
    return f"http://127.0.0.1:{port}/announce", server


async def _raw(port: int, data: bytes, *, timeout: float = 5) -> bytes:
    """Send ``data``, read until the server closes (or ``timeout``)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = bytearray()
    with trio.move_on_after(timeout):
        try:
            await stream.send_all(data)
            while chunk := await stream.receive_some(65536):
                received += chunk
        except trio.BrokenResourceError:
            pass
    await stream.aclose()
    return bytes(received)


def _port(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


def _body(response: bytes) -> bytes:
    return response.split(b"\r\n\r\n", 1)[1]


async def test_two_peers_see_each_other_and_stop(nursery: trio.Nursery) -> None:
    url, server = await _start(nursery, interval=120)
    common = {"info_hash": H, "uploaded": 0, "downloaded": 0, "left": 100}
    first = await announce(url, peer_id=PID_A, port=7001, event="started", **common)  # type: ignore[arg-type]
    assert first.peers == [] and first.interval == 120 and first.min_interval == 60
    second = await announce(url, peer_id=PID_B, port=7002, event="started", **common)  # type: ignore[arg-type]
    assert second.peers == [("127.0.0.1", 7001)]
    assert (second.complete, second.incomplete) == (0, 2)
    again = await announce(url, peer_id=PID_A, port=7001, **common)  # type: ignore[arg-type]
    assert again.peers == [("127.0.0.1", 7002)]
    # The original dictionary-list form, with peer ids.
    full = await announce(url, peer_id=PID_A, port=7001, compact=False, **common)  # type: ignore[arg-type]
    assert full.peers == [("127.0.0.1", 7002)]
    assert full.peer_ids == {("127.0.0.1", 7002): PID_B}
    await announce(url, peer_id=PID_B, port=7002, event="stopped", **common)  # type: ignore[arg-type]
    assert server.table.peers_of(H) == [("127.0.0.1", 7001)]
    last = await announce(url, peer_id=PID_A, port=7001, numwant=0, **common)  # type: ignore[arg-type]
    assert last.peers == []


async def test_ip_param_trusted_from_loopback_only(nursery: trio.Nursery) -> None:
    url, server = await _start(nursery)
    response = await _raw(
        _port(url),
        f"GET /announce?{Q}&ip=10.1.2.3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    )
    assert response.startswith(b"HTTP/1.1 200")
    assert server.table.peers_of(H) == [("10.1.2.3", 7000)]
    # From elsewhere the claim is ignored: the connection's address is used.
    import h11

    request = h11.Request(
        method="GET", target=f"/announce?{Q}&ip=10.9.9.9", headers=[("Host", "x")]
    )
    server.respond(request, "192.0.2.7")
    assert ("192.0.2.7", 7000) in server.table.peers_of(H)
    assert ("10.9.9.9", 7000) not in server.table.peers_of(H)


@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        (b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n", b"404", b"not found"),
        (b"GET /announce HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"200", b"info_hash"),
        (
            f"GET /announce?{Q[:-4]}0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
            b"200",
            b"port 0",
        ),
        (b"POST /announce HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", b"405", b"GET"),
        (b"DELETE /announce HTTP/1.1\r\nHost: x\r\n\r\n", b"405", b"GET"),
        (b"GET /announce HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", b"413", b"body"),
        (b"GET /announce HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431", b"long"),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", b"431", b"long"),
        (b"\x00\x01garbage\r\n\r\n", b"400", b"bad HTTP"),
        (b"GET /announce HTTP/1.1\r\n\r\n", b"400", b"bad HTTP"),  # no Host
    ],
)
async def test_hostile_requests(
    nursery: trio.Nursery, request_bytes: bytes, status: bytes, reason: bytes
) -> None:
    url, _ = await _start(nursery)
    response = await _raw(_port(url), request_bytes)
    assert response.split(b" ")[1] == status, response[:200]
    body = _body(response)
    assert reason in body
    with pytest.raises(TrackerError):
        parse_announce_reply(body)


async def test_keep_alive_then_request_limit(nursery: trio.Nursery) -> None:
    url, _ = await _start(nursery, server_limits=ServerLimits(max_requests_per_connection=3))
    one = f"GET /announce?{Q} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    response = await _raw(_port(url), one * 5)
    assert response.count(b"HTTP/1.1 200") == 3  # then the server hangs up


async def test_idle_and_slow_connections_are_closed(nursery: trio.Nursery) -> None:
    limits = ServerLimits(request_timeout=0.2, connection_timeout=0.5)
    url, _ = await _start(nursery, server_limits=limits)
    with trio.fail_after(3):
        assert await _raw(_port(url), b"") == b""
        assert await _raw(_port(url), b"GET /announce HTTP/1.1\r\n") == b""


async def test_connection_limit(nursery: trio.Nursery) -> None:
    url, server = await _start(nursery, server_limits=ServerLimits(max_connections=2))
    port = _port(url)
    held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
    while server.connections < 2:
        await trio.sleep(0.01)
    with trio.fail_after(3):
        assert await _raw(port, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    for stream in held:
        await stream.aclose()
    while server.connections:
        await trio.sleep(0.01)
    response = await _raw(port, b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 404")


async def test_listen_failure_is_a_tracker_error(nursery: trio.Nursery) -> None:
    url, _ = await _start(nursery)
    with pytest.raises(TrackerError, match="cannot listen"):
        await serve_tracker("127.0.0.1", _port(url))


# -- the client against bad trackers --------------------------------------------------


async def _fake(
    nursery: trio.Nursery, reply: bytes | Callable[[trio.SocketStream], Awaitable[None]]
) -> str:
    async def handler(stream: trio.SocketStream) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                head += chunk
            if callable(reply):
                await reply(stream)
            else:
                await stream.send_all(reply)
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return f"http://127.0.0.1:{port}/announce"


def _http(status: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    ).encode() + body


async def _announce(url: str, **kwargs: object) -> object:
    return await announce(
        url,
        info_hash=H,
        peer_id=PID_A,
        port=1,
        uploaded=0,
        downloaded=0,
        left=0,
        **kwargs,  # type: ignore[arg-type]
    )


async def _hang(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


async def _drip(stream: trio.SocketStream) -> None:
    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    while True:
        await stream.send_all(b"d")
        await trio.sleep(0.05)


async def _flood(stream: trio.SocketStream) -> None:
    await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 65536
    for _ in range(40):
        await stream.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk))


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (_http("200 OK", build_failure("go away")), "go away"),
        (_http("500 Oops", b"<html>oops</html>"), "HTTP 500"),
        (_http("400 Bad", build_failure("info_hash is wrong")), "HTTP 400: info_hash is wrong"),
        (_http("302 Found", b"", "Location: http://example.invalid/\r\n"), "HTTP 302"),
        (_http("200 OK", b"<html>hello</html>"), "not valid bencode"),
        (_http("200 OK", b"d8:intervali60e5:peers7:1234567e"), "multiple of 6"),
        (_http("200 OK", b"x" * 10, "Content-Encoding: gzip\r\n"), "content-encoding"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n", "exceeds"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "unreachable"),
        (_flood, "exceeds"),
        (_hang, "did not answer|timed out"),
        (_drip, "did not answer|timed out"),
    ],
)
async def test_client_maps_every_failure(
    nursery: trio.Nursery,
    reply: bytes | Callable[[trio.SocketStream], Awaitable[None]],
    message: str,
) -> None:
    url = await _fake(nursery, reply)
    with trio.fail_after(5), pytest.raises(TrackerError, match=message):
        await _announce(url, timeout=0.5)


async def test_client_accepts_a_good_fake_reply(nursery: trio.Nursery) -> None:
    body = b"d8:intervali60e5:peers6:\x7f\x00\x00\x01\x1a\xe1e"
    url = await _fake(nursery, _http("200 OK", body))
    result = await _announce(url)
    assert result.peers == [("127.0.0.1", 6881)]  # type: ignore[attr-defined]


async def test_client_refused_bad_url_and_bad_arguments() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with pytest.raises(TrackerError, match="unreachable"):
        await _announce(f"http://127.0.0.1:{port}/announce")
    with pytest.raises(TrackerError, match="unsupported"):
        await _announce("udp://tracker.example:80/announce")
    with pytest.raises(TrackerError):
        await _announce("http://[::1/announce")
    with pytest.raises(LocalProtocolError):
        await announce(
            "http://x/announce",
            info_hash=b"short",
            peer_id=PID_A,
            port=1,
            uploaded=0,
            downloaded=0,
            left=0,
        )
