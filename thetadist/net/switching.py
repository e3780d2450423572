"""A short interpreter switch interval while a swarm moves data.

Hashing and writing run in worker threads, and BLAKE3 releases the GIL for each chunk it
hashes (64 a piece at the default sizes); every time it wants the GIL back it waits until the
event-loop thread blocks in a system call or has held the GIL for the switch interval (5 ms by
default).  py-spy showed a fetcher's hashing thread spending most of its time in that wait.
A short interval bounds it: a 1 GiB loopback fetch took 1.78 s instead of 1.95 s with 0.1 ms
(median of 6, alternating; 0.5 ms: 1.82 s).  Re-measured once the swarm read pages on the
event loop and pooled its buffers, 0.5 ms is as fast on one fetcher and faster on eight, which
share the two cores: 1 → 8 took 0.938 the time of 0.1 ms (the median of 5 paired rounds; 2 ms
0.909, but 1.029 on 1 → 1), and a paid 1 GiB transfer 0.973–0.993 (12-round A/B runs).  The
interval is process-wide, so the CLI sets it around a swarm command and library users may do
the same with :func:`short_switch_interval`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

SWITCH_INTERVAL = 5e-4


@contextmanager
def short_switch_interval(seconds: float | None = None) -> Iterator[None]:
    """Set the interpreter's thread switch interval to ``seconds`` for the block (default:
    ``$THETADIST_SWITCH_INTERVAL`` if set, else :data:`SWITCH_INTERVAL`)."""
    if seconds is None:
        seconds = _from_environment()
    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _from_environment() -> float:
    try:
        seconds = float(os.environ.get("THETADIST_SWITCH_INTERVAL", ""))
    except ValueError:
        return SWITCH_INTERVAL
    return seconds if 1e-6 <= seconds <= 1.0 else SWITCH_INTERVAL
