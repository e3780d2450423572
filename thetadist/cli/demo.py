"""``thetadist demo``: the quick start's main job on embedded defaults.

Writes a sample game build (version 1 and its patch, version 2), creates both manifests,
shows what the patch changes, then updates a copy of version 1 to version 2 in place,
reusing every local piece it can and taking the rest from the origin's build, and verifies
the result.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from thetadist.cli.common import JsonOption
from thetadist.cli.output import Output
from thetadist.errors import IntegrityError
from thetadist.manifest.create import create_manifest
from thetadist.manifest.diff import diff
from thetadist.manifest.verify import verify_tree
from thetadist.sample import write_sample_builds
from thetadist.store.plan import assemble_from_local


def demo(
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the sample builds (default: a temporary directory, removed after)."
        ),
    ] = None,
    scale: Annotated[int, typer.Option(min=1, max=64, help="Sample size, ×40 MiB.")] = 1,
    json_mode: JsonOption = False,
) -> None:
    """Create manifests of a sample build and patch an installed copy from version 1 to 2."""
    out = Output(json_mode)
    temporary = workdir is None
    root = Path(tempfile.mkdtemp(prefix="thetadist-demo-")) if workdir is None else workdir
    try:
        started = time.perf_counter()
        v1, v2 = write_sample_builds(root, scale=scale)
        out.note(f"sample builds written to {root}")
        manifest_v1 = create_manifest(v1, name="sample-game", version="1")
        manifest_v2 = create_manifest(v2, name="sample-game", version="2", previous=manifest_v1)
        manifest_v1.save(root / "v1.manifest")
        manifest_v2.save(root / "v2.manifest")
        changes = diff(manifest_v1, manifest_v2)
        out.note(
            f"patch 1 → 2: {len(changes.changed)} changed, {len(changes.added)} added, "
            f"{len(changes.removed)} removed, {len(changes.renamed)} renamed files"
        )
        installed = root / "installed"
        if installed.exists():
            shutil.rmtree(installed)
        shutil.copytree(v1, installed, symlinks=True)
        # The installed copy is both the destination and the first source (in-place update);
        # the origin's build stands in for the network until the swarm exists.
        result = assemble_from_local(manifest_v2, installed, [installed, v2], on_event=out.event)
        report = verify_tree(manifest_v2, installed)
        if not report.intact or not result.complete:
            raise IntegrityError("demo update did not produce an intact version 2")
        local = result.bytes_from_local
        out.summary(
            {
                "manifest_v2_id": manifest_v2.id_hex,
                "bytes_total": manifest_v2.total_size,
                "bytes_reused_from_installed_v1": local.get(str(installed.resolve()), 0),
                "bytes_from_origin": local.get(str(v2.resolve()), 0),
                "bytes_to_fetch_predicted": changes.bytes_to_fetch,
                "manifest_bytes": changes.manifest_bytes,
                "verified": report.intact,
                "seconds": round(time.perf_counter() - started, 3),
            },
            "demo: sample-game 1 → 2",
        )
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
