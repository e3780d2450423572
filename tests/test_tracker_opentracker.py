"""Interop: our announce client against a real opentracker process (Debian's, whitelist mode).

Debian builds opentracker with a whitelist and it chroots into ``-d DIR``, so the whitelist
path ``/wl`` is inside DIR; it holds one hex info-hash per line.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from thetadist.errors import TrackerError
from thetadist.tracker import announce

OPENTRACKER = shutil.which("opentracker") or "/usr/sbin/opentracker"
LISTED = bytes.fromhex("5d" * 4) + os.urandom(16)
UNLISTED = b"\x01" * 20


@pytest.fixture(autouse=True)
def _require_opentracker() -> None:
    # Never skip: CI installs it (.ci/run), and a skipped interop test would prove nothing.
    assert os.path.exists(OPENTRACKER), "opentracker is not installed (apt install opentracker)"


def _free_port() -> int:
    # opentracker wants the same number for TCP and UDP: take one free on both.
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def _wait_listening(port: int, process: subprocess.Popen[bytes], deadline: float) -> bool:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@pytest.fixture
def opentracker(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "chroot"
    root.mkdir()
    (root / "wl").write_text(LISTED.hex() + "\n")
    root.chmod(0o755)
    (root / "wl").chmod(0o644)
    for _ in range(3):  # a port race with another process is retried
        port = _free_port()
        process = subprocess.Popen(
            [
                OPENTRACKER,
                "-i",
                "127.0.0.1",
                "-p",
                str(port),
                "-P",
                str(port),
                "-d",
                str(root),
                "-w",
                "/wl",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        if _wait_listening(port, process, time.monotonic() + 10):
            break
        process.kill()
        process.wait()
        if process.stdout:
            process.stdout.close()
    else:
        output = process.stdout.read() if process.stdout else b""
        pytest.fail(f"opentracker did not start: {output[-500:]!r}")
    try:
        yield f"http://127.0.0.1:{port}/announce"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


async def _announce(url: str, info_hash: bytes, peer: bytes, port: int, **kw: object) -> object:
    return await announce(
        url,
        info_hash=info_hash,
        peer_id=b"-TD0001-" + peer * 12,
        port=port,
        uploaded=0,
        downloaded=0,
        left=1000,
        timeout=5,
        **kw,  # type: ignore[arg-type]
    )


async def test_two_peers_meet_through_opentracker(opentracker: str) -> None:
    first = await _announce(opentracker, LISTED, b"a", 7101, event="started")
    second = await _announce(opentracker, LISTED, b"b", 7102, event="started")
    # opentracker answers in compact form and echoes the announcer itself.
    assert ("127.0.0.1", 7101) in second.peers  # type: ignore[attr-defined]
    assert second.interval > 0 and second.incomplete == 2  # type: ignore[attr-defined]
    again = await _announce(opentracker, LISTED, b"a", 7101)
    assert ("127.0.0.1", 7102) in again.peers  # type: ignore[attr-defined]
    assert first.interval > 0  # type: ignore[attr-defined]
    await _announce(opentracker, LISTED, b"b", 7102, event="stopped")
    after = await _announce(opentracker, LISTED, b"a", 7101)
    assert ("127.0.0.1", 7102) not in after.peers  # type: ignore[attr-defined]


async def test_unlisted_info_hash_is_refused(opentracker: str) -> None:
    with pytest.raises(TrackerError, match="not authorized"):
        await _announce(opentracker, UNLISTED, b"a", 7101)


async def test_non_compact_request_is_an_http_error(opentracker: str) -> None:
    # opentracker only speaks compact (BEP 23 allows that); our client sends compact=1 by
    # default, and a refusal is a TrackerError, not a traceback.
    with pytest.raises(TrackerError, match="HTTP 400"):
        await _announce(opentracker, LISTED, b"c", 7103, compact=False)
