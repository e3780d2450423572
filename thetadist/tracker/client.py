"""Announce to any BEP 3 HTTP tracker (ours, opentracker, …) with httpx on Trio.

Every failure — refusal (``failure reason``), HTTP status, timeout, connection error, an
oversized or malformed reply — is raised as :class:`~thetadist.errors.TrackerError`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING, cast

import trio

if TYPE_CHECKING:
    import httpx

from thetadist.errors import TrackerError
from thetadist.tracker.protocol import (
    DEFAULT_NUMWANT,
    AnnounceEvent,
    AnnounceRequest,
    AnnounceResult,
    announce_url,
    failure_reason,
    parse_announce_reply,
)

__all__ = ["MAX_REPLY_BYTES", "AnnounceResult", "announce"]

#: Replies longer than this are refused (about 170 000 compact IPv4 peers).
MAX_REPLY_BYTES = 1024 * 1024
DEFAULT_TIMEOUT = 15.0
USER_AGENT = "thetadist/0.1"


async def announce(
    url: str,
    *,
    info_hash: bytes,
    peer_id: bytes,
    port: int,
    uploaded: int,
    downloaded: int,
    left: int,
    event: AnnounceEvent | None = None,
    numwant: int = DEFAULT_NUMWANT,
    compact: bool = True,
    key: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_reply_bytes: int = MAX_REPLY_BYTES,
    client: httpx.AsyncClient | None = None,
) -> AnnounceResult:
    """Announce to ``url`` (``http(s)://host[:port]/announce``, a query is kept).

    ``timeout`` bounds the whole exchange, slow-drip replies included.  Pass ``client`` to
    reuse connections across announces.  Raises :class:`TrackerError`; bad arguments raise
    :class:`~thetadist.errors.LocalProtocolError`.
    """
    import httpx  # imported on first use: it costs ~0.1 s at start-up

    request = AnnounceRequest(
        info_hash=bytes(info_hash),
        peer_id=bytes(peer_id),
        port=port,
        uploaded=uploaded,
        downloaded=downloaded,
        left=left,
        event=event,
        numwant=numwant,
        compact=compact,
        key=key,
    )
    full_url = announce_url(url, request)  # validates the request
    if not url.lower().startswith(("http://", "https://")):
        raise TrackerError(f"unsupported tracker URL {url!r} (only http:// and https://)")
    with trio.move_on_after(timeout) as scope:
        try:
            if client is None:
                async with tracker_client(url, timeout) as own:
                    body, status = await _fetch(own, full_url, max_reply_bytes)
            else:
                body, status = await _fetch(client, full_url, max_reply_bytes)
        except httpx.TimeoutException:
            raise TrackerError(f"tracker {url} timed out") from None
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError) as problem:
            raise TrackerError(
                f"tracker {url} unreachable: {problem or type(problem).__name__}"
            ) from None
    if scope.cancelled_caught:
        raise TrackerError(f"tracker {url} did not answer within {timeout:g} s")
    if status != 200:
        # A bencoded failure reason in an error reply is the most useful message there is.
        reason = failure_reason(body)
        detail = f": {reason}" if reason else ""
        raise TrackerError(f"tracker {url} answered HTTP {status}{detail}")
    return parse_announce_reply(body)


def tracker_client(url: str, timeout: float = 15.0) -> httpx.AsyncClient:
    """An HTTP client for announcing to ``url``, to reuse across announces.

    Certificates are loaded only for an https tracker: building the default TLS context
    reads the system CA store, about 50 ms of CPU that a plain-http announce never uses.
    """
    import httpx

    return httpx.AsyncClient(timeout=timeout, verify=url.lower().startswith("https://"))


async def _fetch(client: httpx.AsyncClient, url: str, limit: int) -> tuple[bytes, int]:
    headers = {"Accept-Encoding": "identity", "User-Agent": USER_AGENT}
    async with client.stream("GET", url, headers=headers, follow_redirects=False) as response:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise TrackerError(f"tracker reply uses content-encoding {encoding!r}")
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise TrackerError(f"tracker reply of {declared} bytes exceeds {limit}")
        body = bytearray()
        # aiter_raw is an async generator: close it now, not when the GC finds it.
        raw = cast("AsyncGenerator[bytes, None]", response.aiter_raw())
        async with aclosing(raw) as chunks:
            async for chunk in chunks:
                body += chunk
                if len(body) > limit:
                    raise TrackerError(f"tracker reply exceeds {limit} bytes")
        return bytes(body), response.status_code
