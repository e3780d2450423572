"""Swarm policy, sans I/O: the piece picker and the token bucket.

Pure policy that takes ``now``: nothing here imports trio, os or time.  The trio shell in
``thetadist.net`` feeds events in and acts on the decisions.
"""

from thetadist.swarm.picker import (
    NeededRun,
    PeerRate,
    PickerConfig,
    PiecePicker,
    RequestRun,
    split_runs,
)
from thetadist.swarm.ratelimit import TokenBucket, parse_rate

__all__ = [
    "NeededRun",
    "PeerRate",
    "PickerConfig",
    "PiecePicker",
    "RequestRun",
    "TokenBucket",
    "parse_rate",
    "split_runs",
]
