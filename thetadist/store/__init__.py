"""The on-disk side of a fetch: staging, resume journal, atomic finish, local reuse."""

from thetadist.store.atomic import atomic_write_bytes, fsync_directory
from thetadist.store.piece_store import STAGING_DIR, PieceStore
from thetadist.store.plan import (
    AssembleResult,
    ReusePlan,
    ReuseResult,
    apply_reuse,
    apply_reuse_async,
    assemble_from_local,
    plan_local_reuse,
)

__all__ = [
    "STAGING_DIR",
    "AssembleResult",
    "PieceStore",
    "ReusePlan",
    "ReuseResult",
    "apply_reuse",
    "apply_reuse_async",
    "assemble_from_local",
    "atomic_write_bytes",
    "fsync_directory",
    "plan_local_reuse",
]
