"""Our tracker as a real process: ``python -m thetadist.tracker`` and the command."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import trio

from thetadist.errors import UsageError
from thetadist.tracker import announce

H = b"\xab" * 20

# The command function as typer runs it (the lead wires it into ``thetadist tracker``).
RUN_COMMAND = (
    "import typer; from thetadist.cli.tracker import tracker; "
    "app = typer.Typer(add_completion=False); app.command()(tracker); app()"
)


async def _meet(url: str) -> None:
    common = {"info_hash": H, "uploaded": 0, "downloaded": 0, "left": 1}
    await announce(url, peer_id=b"A" * 20, port=7201, **common)  # type: ignore[arg-type]
    second = await announce(url, peer_id=b"B" * 20, port=7202, **common)  # type: ignore[arg-type]
    assert second.peers == [("127.0.0.1", 7201)]


async def _first_line(process: trio.Process) -> bytes:
    assert process.stdout is not None
    line = b""
    with trio.fail_after(15):
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)
            assert chunk, "the process exited before printing"
            line += chunk
    return line


async def _stop(process: trio.Process) -> bytes:
    process.send_signal(signal.SIGINT)
    assert process.stdout is not None
    rest = b""
    with trio.fail_after(15):
        while chunk := await process.stdout.receive_some(65536):
            rest += chunk
        await process.wait()
    return rest


async def test_server_module_as_a_process() -> None:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "thetadist.tracker", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
    )
    try:
        line = await _first_line(process)
        assert line.startswith(b"listening ")
        await _meet(f"http://127.0.0.1:{int(line.split()[1])}/announce")
        await _stop(process)
        assert process.returncode == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_tracker_command_json() -> None:
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-c",
            RUN_COMMAND,
            "--listen",
            "127.0.0.1:0",
            "--json",
            "--interval",
            "60",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        ready = json.loads(await _first_line(process))
        assert ready["event"] == "tracker_listening"
        await _meet(ready["url"])
        rest = await _stop(process)
        assert process.returncode == 0
        summary = json.loads(rest.splitlines()[-1])
        assert summary["event"] == "summary"
        assert (summary["torrents"], summary["peers"]) == (1, 2)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_tracker_command_bad_listen() -> None:
    from thetadist.cli.tracker import tracker

    with pytest.raises(UsageError):
        tracker(listen="nowhere", json_mode=True)
