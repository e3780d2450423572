"""``thetadist fetch``: assemble a build described by a manifest.

Until the swarm lands, the sources are local directories (an older version, a sibling build,
a mirror); pieces found nowhere are reported and the staged work is kept for a later run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from thetadist.cli.common import JsonOption, TrustOption, load_manifest
from thetadist.cli.output import Output
from thetadist.errors import TransportError
from thetadist.events import ChunksCopied, Event
from thetadist.store.plan import assemble_from_local


def fetch(
    manifest_file: Annotated[Path, typer.Argument(metavar="MANIFEST")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory to assemble into.")],
    sources: Annotated[
        list[Path] | None,
        typer.Option(
            "--from", metavar="DIR", help="Local directory to reuse pieces from (repeatable)."
        ),
    ] = None,
    trust: TrustOption = None,
    workers: Annotated[int | None, typer.Option(help="I/O and hashing threads.")] = None,
    json_mode: JsonOption = False,
) -> None:
    """Assemble OUT from the pieces found in local directories, verifying every chunk."""
    out = Output(json_mode)
    manifest = load_manifest(manifest_file, trust)
    started = time.perf_counter()

    def on_event(event: Event) -> None:
        out.event(event)
        if isinstance(event, ChunksCopied):
            out.advance(event.bytes)

    with out.progress("assembling", manifest.total_size):
        result = assemble_from_local(
            manifest, output, sources or [], on_event=on_event, workers=workers
        )
    elapsed = time.perf_counter() - started
    out.summary(
        {
            "manifest_id": manifest.id_hex,
            "output": str(output),
            "complete": result.complete,
            "bytes_total": result.bytes_total,
            "bytes_already_present": result.bytes_present_before,
            "bytes_from_local": {str(k): v for k, v in result.bytes_from_local.items()},
            "bytes_from_local_total": sum(result.bytes_from_local.values()),
            "bytes_missing": result.bytes_missing,
            "seconds": round(elapsed, 3),
        },
        "fetch",
    )
    if not result.complete:
        raise TransportError(
            f"{result.bytes_missing} bytes are in none of the sources; the staged work in "
            f"{output} is kept, rerun with more sources to finish"
        )
