"""Run one thetadist swarm on 127.0.0.1 (tracker, seeder, N fetchers) and time it.

Used by :mod:`bench.bench_swarm`.  Every process is ``python -m thetadist ... --json`` in its own
session; NDJSON lines are read as they arrive and time-stamped on arrival.  The clock starts just
before the fetchers are spawned (tracker and seeder already listening) and stops at the arrival of
the last fetcher's ``complete`` event (``--keep-seeding``) or its final ``summary`` with
``"complete": true``.  Peak RSS and CPU of every process come from ``os.wait4``.  Everything is
bounded: a process that overruns is killed by PID and the run is reported as failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from bench.common import read_vmhwm

HOST = "127.0.0.1"
#: How long a process may take to exit after SIGINT before it is killed.
STOP_TIMEOUT_S = 20.0
#: How long the tracker and the seeder may take to start listening.
READY_TIMEOUT_S = 120.0


class SwarmError(RuntimeError):
    """A run that cannot count (a process failed, overran or produced a wrong copy)."""


def thetadist_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "thetadist", *args]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (all bound at once, then released)."""
    sockets = []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def is_listening(port: int) -> bool:
    """True when something LISTENs on 127.0.0.1:port (from /proc/net/tcp: no probe connection)."""
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    try:
        with open("/proc/net/tcp") as table:
            next(table)
            for line in table:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A" and fields[1] in wanted:
                    return True
        return False
    except OSError:  # no procfs: fall back to a probe connection
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((HOST, port)) == 0


def sys_busy_seconds() -> float:
    """Machine-wide busy CPU seconds so far (from /proc/stat)."""
    try:
        with open("/proc/stat") as stat:
            values = [int(x) for x in stat.readline().split()[1:]]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq = (values + [0] * 7)[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a live process has used so far (/proc), None once reaped."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait: float, threshold: float = 0.15, need: int = 2) -> float:
    """Wait (at most ``max_wait`` s) for ``need`` 1 s windows with < ``threshold`` cores busy.

    The same rule ``swarm.py --quiet-wait`` applies before each libtorrent run.
    """
    started = time.monotonic()
    good = 0
    while time.monotonic() - started < max_wait and good < need:
        before = sys_busy_seconds()
        time.sleep(1.0)
        good = good + 1 if sys_busy_seconds() - before < threshold else 0
    return time.monotonic() - started


def tree_digests(root: Path) -> dict[str, str]:
    """Relative path → BLAKE3 hex of every regular file under ``root``.

    Reads through one 8 MiB buffer, no mmap: this process must stay small, because a child's
    ``ru_maxrss`` starts at its parent's peak RSS (Linux records the old mm's high-water mark at
    exec), so anything big here would show up as the fetchers' peak RSS.
    """
    digests = {}
    buffer = bytearray(8 * 1024 * 1024)
    view = memoryview(buffer)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        with open(path, "rb", buffering=0) as handle:
            while n := handle.readinto(buffer):
                hasher.update(view[:n])
        digests[path.relative_to(root).as_posix()] = hasher.hexdigest()
    return digests


def own_peak_rss() -> int:
    """This process's peak RSS: the floor under every child's ``ru_maxrss``."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Proc:
    """One child process with its NDJSON events (arrival time, record) and its rusage."""

    name: str
    argv: list[str]
    log_dir: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] = field(init=False)
    started: float = field(init=False)
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    exit_code: int | None = None
    ended: float | None = None
    peak_rss: int | None = None
    cpu_s: float | None = None
    vmhwm: int | None = None
    _sampled: float = 0.0
    _buf: bytes = b""
    _eof: bool = False

    def __post_init__(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / f"{self.name}.argv").write_text(json.dumps(self.argv) + "\n")
        with open(self.log_dir / f"{self.name}.stderr", "wb") as err:
            self.started = time.monotonic()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env={**os.environ, **self.env} if self.env else None,
                start_new_session=True,  # our SIGINTs only; a terminal Ctrl-C reaches us alone
            )
        assert self.popen.stdout is not None
        os.set_blocking(self.popen.stdout.fileno(), False)

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def pump(self) -> None:
        """Read whatever stdout has (non-blocking) and parse complete lines."""
        stdout = self.popen.stdout
        if self._eof or stdout is None:
            return
        while True:
            try:
                chunk = os.read(stdout.fileno(), 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                self._eof = True
                break
            self._buf += chunk
        now = time.monotonic()
        *lines, self._buf = self._buf.split(b"\n")
        with open(self.log_dir / f"{self.name}.ndjson", "ab") as log:
            for line in lines:
                log.write(line + b"\n")
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    record = {"event": "_not_json", "line": line[:200].decode("latin-1")}
                if isinstance(record, dict):
                    self.events.append((now, record))

    def reap(self) -> bool:
        """Collect the exit status and rusage if the process has ended; True when it has."""
        if self.exit_code is not None:
            return True
        now = time.monotonic()
        if now - self._sampled > 0.1:  # VmHWM only grows: the last sample is the peak so far
            self._sampled = now
            self.vmhwm = max(self.vmhwm or 0, read_vmhwm(self.popen.pid) or 0) or None
        pid, status, usage = os.wait4(self.popen.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.ended = time.monotonic()
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.popen.returncode = self.exit_code  # so Popen never waits for it again
        self.peak_rss = usage.ru_maxrss * 1024
        self.cpu_s = usage.ru_utime + usage.ru_stime
        self.pump()
        return True

    def first(self, predicate: Callable[[dict[str, Any]], bool]) -> tuple[float, dict[str, Any]]:
        return next(((t, r) for t, r in self.events if predicate(r)), (0.0, {}))

    def last_error(self) -> str:
        _, error = self.first(lambda r: r.get("event") == "error")
        if error:
            return f"{error.get('error')}: {error.get('message')}"
        try:
            tail = (self.log_dir / f"{self.name}.stderr").read_bytes()[-600:]
        except OSError:
            tail = b""
        return tail.decode("utf-8", "replace").strip() or "(no output)"

    def send(self, sig: int) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, sig)

    def close(self) -> None:
        if self.popen.stdout is not None:
            self.popen.stdout.close()


def pump_until(procs: list[Proc], done: Callable[[], bool], deadline: float) -> bool:
    """Read events and reap exits until ``done()`` or the deadline; returns ``done()``."""
    selector = selectors.DefaultSelector()
    for proc in procs:
        if proc.popen.stdout is not None and not proc._eof:
            selector.register(proc.popen.stdout, selectors.EVENT_READ, proc)
    try:
        while True:
            for proc in procs:
                proc.pump()
                proc.reap()
            if done():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for key, _ in selector.select(min(left, 0.1)):
                owner: Proc = key.data
                owner.pump()
                if owner._eof:
                    selector.unregister(key.fileobj)
    finally:
        selector.close()


def stop(procs: list[Proc], timeout: float = STOP_TIMEOUT_S) -> list[str]:
    """SIGINT, wait, then SIGKILL (by PID) whatever is left; returns the names killed."""
    for proc in procs:
        proc.send(signal.SIGINT)
    pump_until(procs, lambda: not any(p.running for p in procs), time.monotonic() + timeout)
    killed = []
    for proc in procs:
        if proc.running:
            killed.append(proc.name)
            proc.send(signal.SIGKILL)
    pump_until(procs, lambda: not any(p.running for p in procs), time.monotonic() + 10)
    return killed


def wait_listening(proc: Proc, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not is_listening(port):
        if proc.reap():
            raise SwarmError(
                f"{proc.name} exited with code {proc.exit_code} before listening on :{port}: "
                f"{proc.last_error()}"
            )
        if time.monotonic() > deadline:
            raise SwarmError(f"{proc.name} did not listen on :{port} within {timeout:.0f} s")
        time.sleep(0.02)


def _complete_at(proc: Proc) -> float | None:
    for arrived, record in proc.events:
        kind = record.get("event")
        if kind == "complete" or (kind == "summary" and record.get("complete") is True):
            return arrived
    return None


@dataclass
class SwarmSpec:
    data_dir: Path
    manifest: Path
    size: int
    fetchers: int
    run_dir: Path
    source_digests: dict[str, str]
    keep_seeding: bool = False
    max_upload_rate: str | None = None
    super_seed: bool = False
    run_timeout: float = 600.0
    keep: bool = False
    #: Extra arguments and environment for the seeder and the fetchers (a paid run).
    seed_args: list[str] = field(default_factory=list)
    fetch_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def run_swarm(spec: SwarmSpec) -> dict[str, Any]:
    """One timed run; returns a result dict (``ok`` false with ``error`` on any failure)."""
    result: dict[str, Any] = {"ok": False, "error": None}
    procs: list[Proc] = []
    fetchers: list[Proc] = []
    outputs: list[Path] = []
    logs = spec.run_dir / "logs"
    try:
        tracker_port, seeder_port, *fetcher_ports = free_ports(2 + spec.fetchers)
        tracker_url = f"http://{HOST}:{tracker_port}/announce"
        # The clock mirrors the libtorrent anchor's "go" (every session listening, then
        # connections start): the tracker and every fetcher start first and announce; then
        # the seeder starts, and t0 is its "listening" event.  It announces, learns the
        # fetchers and dials them: its announce and connects are inside the clock.
        # ``wall_from_launch_s`` keeps the figure that includes all process start-ups.
        tracker = Proc(
            "tracker",
            thetadist_argv("tracker", "--listen", f"{HOST}:{tracker_port}", "--json"),
            logs,
        )
        procs.append(tracker)
        wait_listening(tracker, tracker_port, READY_TIMEOUT_S)
        launched = time.monotonic()
        for i in range(spec.fetchers):
            out = spec.run_dir / f"fetch{i}"
            outputs.append(out)
            fetch_args = ["fetch", str(spec.manifest), "-o", str(out)]
            fetch_args += ["--tracker", tracker_url, "--listen", f"{HOST}:{fetcher_ports[i]}"]
            if spec.keep_seeding:
                fetch_args.append("--keep-seeding")
            fetch_args += [*spec.fetch_args, "--json"]
            fetchers.append(Proc(f"fetch{i}", thetadist_argv(*fetch_args), logs, spec.env))
        procs.extend(fetchers)

        def announced(proc: Proc) -> bool:
            return bool(proc.first(lambda r: r.get("event") == "tracker_announced")[1])

        if not pump_until(
            fetchers, lambda: all(announced(f) for f in fetchers), launched + READY_TIMEOUT_S
        ):
            raise SwarmError("fetchers did not all announce to the tracker in time")
        seed_args = [
            "seed",
            str(spec.data_dir),
            "--manifest",
            str(spec.manifest),
            "--listen",
            f"{HOST}:{seeder_port}",
            "--tracker",
            tracker_url,
            "--json",
            # The anchor's libtorrent seeder checks its data before "go" (no seed_mode): ours
            # hashes it before it listens, so neither verifies its own data inside the clock.
            "--check",
        ]
        if spec.max_upload_rate:
            seed_args += ["--max-upload-rate", spec.max_upload_rate]
        if spec.super_seed:
            seed_args.append("--super-seed")
        seed_args += spec.seed_args
        seeder = Proc("seeder", thetadist_argv(*seed_args), logs, spec.env)
        procs.append(seeder)

        def seeder_listening() -> bool:
            return bool(seeder.first(lambda r: r.get("event") == "listening")[1])

        if not pump_until(
            [seeder, *fetchers], seeder_listening, time.monotonic() + READY_TIMEOUT_S
        ):
            raise SwarmError(f"seeder did not start listening: {seeder.last_error()}")
        t0 = seeder.first(lambda r: r.get("event") == "listening")[0]
        result["seeder_ready_s"] = round(t0 - seeder.started, 3)
        busy0 = sys_busy_seconds()
        # Each process's CPU inside the clock (start-up, imports and wallet unlock excluded).
        cpu0 = {p.name: process_cpu_seconds(p.popen.pid) for p in procs}

        def all_done() -> bool:
            for proc in procs:
                if proc.running or (proc in fetchers and _complete_at(proc) is not None):
                    continue
                raise SwarmError(
                    f"{proc.name} exited with code {proc.exit_code} before the fetchers "
                    f"completed: {proc.last_error()}"
                )
            return all(_complete_at(f) is not None for f in fetchers)

        if not pump_until(procs, all_done, t0 + spec.run_timeout):
            missing = [f.name for f in fetchers if _complete_at(f) is None]
            raise SwarmError(
                f"run timeout ({spec.run_timeout:.0f} s): {', '.join(missing)} not complete"
            )
        busy1 = sys_busy_seconds()
        cpu1 = {p.name: process_cpu_seconds(p.popen.pid) for p in procs}
        for proc in procs:  # one that exited already: its total from wait4
            if cpu1[proc.name] is None:
                cpu1[proc.name] = proc.cpu_s
        done_at = [_complete_at(f) or 0.0 for f in fetchers]
        wall = max(done_at) - t0
        result.update(
            {
                "wall_s": round(wall, 4),
                "wall_from_launch_s": round(max(done_at) - launched, 4),
                "fetcher_done_s": sorted(round(t - t0, 4) for t in done_at),
                "MBps": round(spec.size / wall / 1e6, 1),
                "aggregate_MBps": round(spec.fetchers * spec.size / wall / 1e6, 1),
                "sys_busy_cores": round((busy1 - busy0) / max(wall, 1e-9), 2),
                "cpu_in_clock_s": {
                    name: round(end - start, 3)
                    for name, start in cpu0.items()
                    if start is not None and (end := cpu1.get(name)) is not None
                },
            }
        )

        # Fetchers without --keep-seeding exit by themselves; the others are told to stop now.
        if not spec.keep_seeding:
            pump_until(
                fetchers,
                lambda: not any(f.running for f in fetchers),
                time.monotonic() + STOP_TIMEOUT_S,
            )
        killed = stop(fetchers)
        killed += stop([p for p in procs if p not in fetchers])
        if killed:
            result["killed_after_sigint"] = killed
        for proc in fetchers:
            if not spec.keep_seeding and proc.exit_code != 0:
                raise SwarmError(
                    f"{proc.name} exited with code {proc.exit_code}: {proc.last_error()}"
                )
        _, seed_summary = seeder.first(lambda r: r.get("event") == "summary")
        uploaded = seed_summary.get("uploaded_bytes")
        result["seeder_uploaded"] = uploaded
        result["seeder_upload_ratio"] = (
            round(uploaded / spec.size, 3) if isinstance(uploaded, int) else None
        )
        if not seed_summary:
            result["warning"] = "seeder printed no summary on SIGINT (no uploaded_bytes)"
        summaries = [f.first(lambda r: r.get("event") == "summary")[1] for f in fetchers]
        result["bytes_from_peers"] = [s.get("bytes_from_peers") for s in summaries]
        result["fetch_self_reported_s"] = [s.get("seconds") for s in summaries]
        # ru_maxrss from os.wait4 (floored at harness_peak_rss_bytes, see tree_digests) and
        # VmHWM sampled from /proc every 0.1 s while running (what swarm.py reports for libtorrent)
        result["fetcher_peak_rss_bytes"] = [f.peak_rss for f in fetchers]
        result["fetcher_vmhwm_bytes"] = [f.vmhwm for f in fetchers]
        result["seeder_peak_rss_bytes"] = seeder.peak_rss
        result["seeder_vmhwm_bytes"] = seeder.vmhwm
        result["harness_peak_rss_bytes"] = own_peak_rss()
        result["cpu_s"] = {p.name: round(p.cpu_s or 0.0, 2) for p in procs}

        for out in outputs:
            got = tree_digests(out) if out.is_dir() else {}
            wrong = [n for n, digest in spec.source_digests.items() if got.get(n) != digest]
            if wrong:
                raise SwarmError(f"{out} differs from the source: {', '.join(wrong[:5])}")
        result["verified"] = True
        result["ok"] = True
    except SwarmError as problem:
        result["error"] = str(problem)
    finally:
        stop(procs, timeout=5.0)
        for proc in procs:
            proc.close()
        if not spec.keep:
            for out in outputs:
                shutil.rmtree(out, ignore_errors=True)
    return result


def preflight(need_tracker: bool) -> str | None:
    """None when the CLI has what the benchmark drives, else a message saying what is missing."""
    checks = [("seed", ["--manifest", "--listen"]), ("fetch", ["--peer"])]
    if need_tracker:
        checks[1][1].extend(["--tracker", "--keep-seeding", "--listen"])
        checks.append(("tracker", ["--listen"]))
    problems = []
    for command, options in checks:
        try:
            done = subprocess.run(
                thetadist_argv(command, "--help"),
                capture_output=True,
                timeout=60,
                env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
            )
        except subprocess.TimeoutExpired:
            problems.append(f"`thetadist {command} --help` timed out")
            continue
        text = (done.stdout + done.stderr).decode("utf-8", "replace")
        if done.returncode != 0:
            first = next((ln for ln in text.splitlines() if ln.strip()), "")
            problems.append(f"`thetadist {command}` does not exist yet ({first.strip()[:120]})")
            continue
        missing = [opt for opt in options if opt not in text]
        if missing:
            problems.append(f"`thetadist {command}` lacks {', '.join(missing)}")
    return "; ".join(problems) or None
