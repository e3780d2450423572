"""Process helpers for the end-to-end swarm tests: start/stop with timeouts, NDJSON events.

Every process is started through a :class:`Procs` set whose ``close()`` (called in a
``finally`` by the test fixture) kills whatever is still running; every wait takes a
timeout and fails the test, with the process's stderr, when it runs out.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import blake3

TESTS = Path(__file__).resolve().parent
THETADIST = [sys.executable, "-m", "thetadist"]
EVIL_PEER = [sys.executable, str(TESTS / "evil_peer.py")]

Event = dict[str, Any]


class ProcessFailure(AssertionError):
    pass


class Proc:
    """One child process whose stdout is NDJSON, read by a thread into ``self.events``."""

    def __init__(self, name: str, args: Sequence[str], *, cwd: Path | None = None) -> None:
        self.name = name
        self.args = list(args)
        #: Where it listens, once known (seeders and evil peers).
        self.port = 0
        self.address = ""
        self.events: list[Event] = []
        self.bad_lines: list[bytes] = []
        self._stderr = bytearray()
        self._cond = threading.Condition()
        env = dict(os.environ)
        env.pop("THETADIST_DEBUG", None)  # the tests check the one-line error format
        env["PYTHONUNBUFFERED"] = "1"
        self.popen = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,  # signals from the test runner's terminal don't reach it
        )
        self.pid = self.popen.pid
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    # ------------------------------------------------------------------ reading

    def _read_stdout(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            with self._cond:
                if isinstance(event, dict):
                    self.events.append(event)
                else:
                    self.bad_lines.append(line)  # e.g. a line torn by SIGKILL
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None
        fd = self.popen.stderr.fileno()
        while chunk := os.read(fd, 65536):
            with self._cond:
                self._stderr += chunk

    @property
    def stderr(self) -> str:
        with self._cond:
            return self._stderr.decode(errors="replace")

    def drain(self, timeout: float = 5.0) -> None:
        """Wait for the reader threads to see end of file (after the process exited)."""
        for reader in self._readers:
            reader.join(timeout)

    def of_kind(self, kind: str) -> list[Event]:
        with self._cond:
            return [e for e in self.events if e.get("event") == kind]

    @property
    def summary(self) -> Event | None:
        found = self.of_kind("summary")
        return found[-1] if found else None

    def describe(self) -> str:
        with self._cond:
            tail = [e for e in self.events if e.get("event") != "piece_stored"][-8:]
        return (
            f"{self.name} (pid {self.pid}, rc {self.popen.poll()}): "
            f"last events {tail!r}; stderr {self.stderr[-1500:]!r}"
        )

    # ------------------------------------------------------------------ waiting

    def wait_for(
        self, predicate: Callable[[Event], bool], timeout: float, what: str = "an event"
    ) -> Event:
        """The first event (old or new) satisfying ``predicate``; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                if self.popen.poll() is not None and not self._readers[0].is_alive():
                    raise ProcessFailure(
                        f"{self.name} exited while waiting for {what}: {self.describe()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ProcessFailure(
                        f"timed out after {timeout} s waiting for {what}: {self.describe()}"
                    )
                self._cond.wait(min(left, 0.2))

    def wait_kind(self, kind: str, timeout: float) -> Event:
        return self.wait_for(lambda e: e.get("event") == kind, timeout, repr(kind))

    def wait_count(self, kind: str, count: int, timeout: float) -> None:
        def enough(_: Event) -> bool:
            return len(self.of_kind(kind)) >= count

        self.wait_for(enough, timeout, f"{count} {kind!r} events")

    def wait_exit(self, timeout: float) -> int:
        """The exit code; kills the process and fails if it has not exited in time."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ProcessFailure(
                f"{self.name} did not exit within {timeout} s: {self.describe()}"
            ) from None
        self.drain()
        return code

    # ------------------------------------------------------------------ control

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def is_alive(self) -> bool:
        return self.alive

    def send_signal(self, sig: int) -> None:
        if self.alive:
            self.popen.send_signal(sig)

    def interrupt_and_wait(self, timeout: float = 10.0) -> int:
        """Ctrl-C (SIGINT), then the exit code within ``timeout`` (else kill and fail)."""
        self.send_signal(signal.SIGINT)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL is not ignorable
            self.popen.wait(10)
        self.drain(2)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise ProcessFailure(f"no VmRSS for {self.name}")


class Procs:
    """The processes of one test; ``close()`` kills every one still running."""

    def __init__(self) -> None:
        self.all: list[Proc] = []

    def start(self, name: str, args: Sequence[str], *, cwd: Path | None = None) -> Proc:
        proc = Proc(name, args, cwd=cwd)
        self.all.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.all:
            with contextlib.suppress(Exception):  # best effort: the others must still die
                proc.kill()

    # ------------------------------------------------------------------ thetadist

    def thetadist(self, name: str, *args: str | os.PathLike[str]) -> Proc:
        return self.start(name, [*THETADIST, *map(str, args)])

    def seeder(
        self,
        src: Path,
        manifest: Path,
        *extra: str | os.PathLike[str],
        name: str = "seeder",
        timeout: float = 20.0,
    ) -> Proc:
        """A ``thetadist seed`` on a free port of 127.0.0.1; returns once it listens
        (``proc.port``, ``proc.address``)."""
        proc = self.thetadist(
            name, "seed", src, "--manifest", manifest, "--listen", "127.0.0.1:0", "--json", *extra
        )
        listening = proc.wait_kind("listening", timeout)
        proc.port = int(listening["port"])
        proc.address = f"127.0.0.1:{proc.port}"
        return proc

    def fetcher(
        self,
        manifest: Path,
        out: Path,
        *extra: str | os.PathLike[str],
        peers: Iterable[str] = (),
        trackers: Iterable[str] = (),
        name: str = "fetcher",
    ) -> Proc:
        args: list[str | os.PathLike[str]] = [
            "fetch",
            manifest,
            "-o",
            out,
            "--listen",
            "127.0.0.1:0",
            "--json",
        ]
        for peer in peers:
            args += ["--peer", peer]
        for url in trackers:
            args += ["--tracker", url]
        return self.thetadist(name, *args, *extra)

    def evil_peer(self, manifest: Path, mode: str, log: Path, timeout: float = 20.0) -> Proc:
        proc = self.start(f"evil-{mode}", [*EVIL_PEER, str(manifest), mode, str(log)])
        listening = proc.wait_kind("listening", timeout)
        proc.port = int(listening["port"])
        proc.address = f"127.0.0.1:{proc.port}"
        return proc


def run_thetadist(*args: str | os.PathLike[str], timeout: float = 60.0) -> Event:
    """Run a short ``thetadist ... --json`` command; its summary object."""
    done = subprocess.run(
        [*THETADIST, *map(str, args), "--json"],
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise ProcessFailure(f"thetadist {args} failed ({done.returncode}): {done.stderr!r}")
    records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert records and records[-1]["event"] == "summary", records[-3:]
    summary: Event = records[-1]
    return summary


# ---------------------------------------------------------------------- content


def prng_bytes(label: str, size: int) -> bytes:
    """Deterministic pseudo-random bytes (BLAKE3 in XOF mode)."""
    return blake3.blake3(label.encode()).digest(length=size)


def make_tree(root: Path, files: dict[str, int], label: str = "e2e") -> Path:
    for rel, size in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(prng_bytes(f"{label}/{rel}", size))
    return root


def create_manifest(src: Path, out: Path, *extra: str) -> Event:
    """``thetadist manifest create``; the summary (``id``, ``info_hash``, ``pieces`` …)."""
    return run_thetadist("manifest", "create", src, "-o", out, *extra)


def tree_files(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (the staging area excluded), by relative path."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts and rel.parts[0] == ".thetadist":
            continue
        if path.is_file():
            found[rel.as_posix()] = path.read_bytes()
    return found


def assert_identical(out: Path, src: Path) -> None:
    got, want = tree_files(out), tree_files(src)
    assert sorted(got) == sorted(want), f"files differ: {sorted(got)} vs {sorted(want)}"
    for rel, data in want.items():
        assert got[rel] == data, f"{rel} differs from the source"


# ---------------------------------------------------------------------- network


def free_port(*, udp_too: bool = False) -> int:
    """A port free on 127.0.0.1 (TCP, and UDP with ``udp_too``), by binding port 0."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            if not udp_too:
                return port
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def wait_tcp(port: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bool, bytes]:
    """Read until the peer closes; ``(closed, bytes read)``: closed is False on timeout."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False, bytes(data)
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return False, bytes(data)
        except ConnectionError:
            return True, bytes(data)
        if not chunk:
            return True, bytes(data)
        data += chunk


def network_pieces(proc: Proc, peers: Iterable[str] | None = None) -> list[int]:
    """Pieces a fetch reported stored from the network (``source`` is a peer label)."""
    wanted = set(peers) if peers is not None else None
    found = []
    for event in proc.of_kind("piece_stored"):
        source = str(event["source"])
        from_peer = source.startswith("127.0.0.1:")
        if from_peer and (wanted is None or source in wanted):
            found.append(int(event["piece"]))
    return found


def read_log(path: Path) -> list[Event]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            records.append(json.loads(line))
    return records
