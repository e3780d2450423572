"""thetadist: peer-to-peer content distribution with content-defined manifests.

Scripts import from here; the modules behind these names may move.
"""

from thetadist.api import FetchResult, fetch, seed
from thetadist.errors import (
    EXIT_CODES,
    IntegrityError,
    ManifestError,
    SignatureError,
    StoreError,
    ThetadistError,
    UsageError,
)
from thetadist.events import Event, EventCallback
from thetadist.manifest.create import create_manifest
from thetadist.manifest.diff import ManifestDiff, diff
from thetadist.manifest.model import ChunkerParams, FileEntry, Manifest, ManifestLimits, Piece
from thetadist.manifest.signing import (
    generate_key,
    load_private_key,
    parse_public_key,
    public_key_bytes,
    save_private_key,
    sign_manifest,
)
from thetadist.manifest.verify import VerifyReport, verify_tree
from thetadist.net.swarm import SwarmConfig
from thetadist.store import AssembleResult, PieceStore, assemble_from_local

__version__ = "0.1.0"

__all__ = [
    "EXIT_CODES",
    "AssembleResult",
    "ChunkerParams",
    "Event",
    "EventCallback",
    "FetchResult",
    "FileEntry",
    "IntegrityError",
    "Manifest",
    "ManifestDiff",
    "ManifestError",
    "ManifestLimits",
    "Piece",
    "PieceStore",
    "SignatureError",
    "StoreError",
    "SwarmConfig",
    "ThetadistError",
    "UsageError",
    "VerifyReport",
    "__version__",
    "assemble_from_local",
    "create_manifest",
    "diff",
    "fetch",
    "generate_key",
    "load_private_key",
    "parse_public_key",
    "public_key_bytes",
    "save_private_key",
    "seed",
    "sign_manifest",
    "verify_tree",
]
