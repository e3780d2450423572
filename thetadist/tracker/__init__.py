"""Discovery through BitTorrent HTTP trackers (BEP 3 announce, BEP 23 compact peers).

``protocol`` is the sans-I/O core, ``server`` the embedded Trio tracker, ``client`` the
announce call that speaks to any tracker.  The swarm key is ``Manifest.info_hash`` (the
first 20 bytes of the manifest id).  See docs/tracker.md.
"""

from __future__ import annotations

from thetadist.tracker.client import announce
from thetadist.tracker.hostport import parse_hostport
from thetadist.tracker.protocol import (
    AnnounceRequest,
    AnnounceResult,
    SwarmLimits,
    SwarmTable,
    build_announce_query,
    parse_announce_query,
    parse_announce_reply,
)
from thetadist.tracker.server import ServerLimits, TrackerServer, serve_tracker

__all__ = [
    "AnnounceRequest",
    "AnnounceResult",
    "ServerLimits",
    "SwarmLimits",
    "SwarmTable",
    "TrackerServer",
    "announce",
    "build_announce_query",
    "parse_announce_query",
    "parse_announce_reply",
    "parse_hostport",
    "serve_tracker",
]
