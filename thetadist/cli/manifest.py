"""``thetadist manifest create|show|verify|diff|delta|apply``."""

from __future__ import annotations

import os
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from thetadist.cli.common import JsonOption, TrustOption, load_manifest
from thetadist.cli.output import Output
from thetadist.errors import IntegrityError, ManifestError
from thetadist.events import Event, FileScanned
from thetadist.manifest.create import create_manifest
from thetadist.manifest.delta import apply_delta, encode_delta
from thetadist.manifest.diff import diff
from thetadist.manifest.model import DEFAULT_PIECE_SIZE, ChunkerParams, Manifest, ManifestLimits
from thetadist.manifest.signing import load_private_key, parse_public_key
from thetadist.manifest.verify import verify_tree
from thetadist.store.atomic import atomic_write_bytes
from thetadist.units import parse_size

app = typer.Typer(help="Create, inspect, verify and compare manifests.", no_args_is_help=True)


class Chunker(StrEnum):
    cdc = "cdc"
    fixed = "fixed"


@app.command()
def create(
    directory: Annotated[Path, typer.Argument(help="The build to describe.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Manifest file to write.")],
    chunker: Annotated[
        Chunker, typer.Option(help="Content-defined (cdc) or fixed-size chunks.")
    ] = Chunker.cdc,
    avg_size: Annotated[
        str | None,
        typer.Option(
            help="Average chunk size for cdc (default 16KiB), the chunk size for fixed (1MiB)."
        ),
    ] = None,
    piece_size: Annotated[str, typer.Option(help="Target piece size (unit of transfer).")] = "1MiB",
    name: Annotated[str | None, typer.Option(help="Build name (default: directory name).")] = None,
    version: Annotated[str, typer.Option("--version-label", help="Version label.")] = "",
    sign: Annotated[
        Path | None, typer.Option("--sign", metavar="KEYFILE", help="Sign with this Ed25519 key.")
    ] = None,
    previous: Annotated[
        Path | None, typer.Option(metavar="OLD_MANIFEST", help="The manifest this version patches.")
    ] = None,
    previous_dir: Annotated[
        Path | None,
        typer.Option(
            metavar="OLD_DIR",
            help="The previous version's tree: cut chunks where new content starts and ends, "
            "and list old content around edits as derived chunks, so a holder of the old "
            "version fetches little more than the new bytes.",
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Hashing threads (default: all cores).")
    ] = None,
    json_mode: JsonOption = False,
) -> None:
    """Chunk and hash DIRECTORY and write its manifest."""
    out = Output(json_mode)
    if chunker is Chunker.cdc:
        params = ChunkerParams.fastcdc(parse_size(avg_size) if avg_size else 16 * 1024)
    else:
        params = ChunkerParams.fixed(parse_size(avg_size) if avg_size else 1024 * 1024)
    params.validate()
    key = load_private_key(sign) if sign else None
    previous_manifest = Manifest.load(previous) if previous else None
    started = time.perf_counter()
    from thetadist.manifest.chunking import walk_tree

    total = sum(item.size for item in walk_tree(directory)[0]) if directory.is_dir() else 0

    def on_event(event: Event) -> None:
        out.event(event)
        if isinstance(event, FileScanned):
            out.advance(event.size)

    with out.progress("hashing", total):
        manifest = create_manifest(
            directory,
            name=name,
            version=version,
            chunker=params,
            piece_size=parse_size(piece_size) if piece_size else DEFAULT_PIECE_SIZE,
            previous=previous_manifest,
            previous_dir=previous_dir,
            sign_key=key,
            on_event=on_event,
            workers=workers,
        )
    elapsed = time.perf_counter() - started
    manifest_bytes = manifest.save(output)
    out.summary(
        {
            **_describe(manifest),
            "manifest_file": str(output),
            "manifest_bytes": manifest_bytes,
            "seconds": round(elapsed, 3),
            "throughput_bytes_per_s": int(manifest.total_size / elapsed) if elapsed else 0,
        },
        "manifest created",
    )


def _describe(manifest: Manifest) -> dict[str, object]:
    return {
        "id": manifest.id_hex,
        "info_hash": manifest.info_hash.hex(),
        "name": manifest.name,
        "version": manifest.version,
        "previous": manifest.previous.hex() if manifest.previous else None,
        "chunker": f"{manifest.chunker.algorithm} min={manifest.chunker.min_size} "
        f"avg={manifest.chunker.avg_size} max={manifest.chunker.max_size}",
        "files": len(manifest.files),
        "empty_directories": len(manifest.directories),
        "total_bytes": manifest.total_size,
        "chunks": manifest.chunk_count,
        "derived_chunks": len(manifest.derived),
        "pieces": len(manifest.pieces),
        "piece_size": manifest.piece_size,
        "signers": [key.hex() for key in sorted(manifest.signatures)],
    }


@app.command()
def show(
    manifest_file: Annotated[Path, typer.Argument(metavar="FILE")],
    files: Annotated[bool, typer.Option("--files", help="List every file.")] = False,
    trust: TrustOption = None,
    json_mode: JsonOption = False,
) -> None:
    """Describe a manifest (its id, info-hash, files and signers)."""
    out = Output(json_mode)
    manifest = load_manifest(manifest_file, trust)
    if files:
        if json_mode:
            for entry in manifest.files:
                out.emit(
                    {
                        "event": "file",
                        "path": entry.path,
                        "size": entry.size,
                        "executable": entry.executable,
                        "chunks": entry.chunk_count,
                    }
                )
        else:
            out.table(
                "files",
                ["path", "size", "exec", "chunks"],
                [
                    [e.path, e.size, "x" if e.executable else "", e.chunk_count]
                    for e in manifest.files
                ],
            )
    out.summary({**_describe(manifest), "manifest_bytes": len(manifest.encode())}, "manifest")


@app.command()
def verify(
    manifest_file: Annotated[Path, typer.Argument(metavar="FILE")],
    directory: Annotated[Path, typer.Argument(metavar="DIR")],
    trust: TrustOption = None,
    json_mode: JsonOption = False,
) -> None:
    """Check DIR against FILE; exit 0 only if every file and chunk is intact."""
    out = Output(json_mode)
    manifest = load_manifest(manifest_file, trust)
    report = verify_tree(manifest, directory, on_event=out.event)
    for problem in report.problems:
        if json_mode:
            out.emit({"event": "file_problem", **problem.as_json()})
    if report.problems and not json_mode:
        out.table(
            "problems",
            ["path", "state", "bad pieces", "bad bytes"],
            [
                [p.path, _state(p), _ranges(p.corrupt_pieces), p.corrupt_bytes]
                for p in report.problems
            ],
        )
    out.summary(
        {
            "intact": report.intact,
            "files_checked": report.files_checked,
            "bytes_checked": report.bytes_checked,
            "files_with_problems": len(report.problems),
            "bad_pieces": report.missing_pieces,
        },
        "verify",
    )
    if not report.intact:
        raise IntegrityError(
            f"{len(report.problems)} of {report.files_checked} files are missing or corrupt"
        )


def _state(problem: object) -> str:
    from thetadist.manifest.verify import FileProblem

    assert isinstance(problem, FileProblem)
    if problem.missing:
        return "missing"
    parts = []
    if problem.size_on_disk is not None:
        parts.append(f"size {problem.size_on_disk}")
    if problem.corrupt_pieces:
        parts.append("corrupt")
    if problem.executable_mismatch:
        parts.append("exec bit")
    return ", ".join(parts)


def _ranges(numbers: list[int]) -> str:
    spans: list[str] = []
    for number in numbers:
        if spans and spans[-1].split("-")[-1] == str(number - 1):
            spans[-1] = f"{spans[-1].split('-')[0]}-{number}"
        else:
            spans.append(str(number))
    text = ",".join(spans)
    return text if len(text) < 60 else text[:57] + "…"


@app.command("diff")
def diff_command(
    old: Annotated[Path, typer.Argument(metavar="OLD")],
    new: Annotated[Path, typer.Argument(metavar="NEW")],
    trust: TrustOption = None,
    json_mode: JsonOption = False,
) -> None:
    """What changed from OLD to NEW, and how many bytes a holder of OLD must fetch."""
    out = Output(json_mode)
    old_manifest = load_manifest(old, trust)
    new_manifest = load_manifest(new, trust)
    result = diff(old_manifest, new_manifest)
    changes = (
        [["added", path] for path in result.added]
        + [["removed", path] for path in result.removed]
        + [["changed", path] for path in result.changed]
        + [["renamed", f"{r.old_path} → {r.new_path}"] for r in result.renamed]
    )
    if json_mode:
        for kind, paths in (
            ("added", result.added),
            ("removed", result.removed),
            ("changed", result.changed),
        ):
            for path in paths:
                out.emit({"event": "file_" + kind, "path": path})
        for rename in result.renamed:
            out.emit(
                {
                    "event": "file_renamed",
                    "old_path": rename.old_path,
                    "new_path": rename.new_path,
                    "size": rename.size,
                }
            )
    else:
        out.table("changes", ["change", "path"], changes[:200])
        if len(changes) > 200:
            out.note(f"… and {len(changes) - 200} more (use --json for all)")
    out.summary(result.summary(), "diff")


@app.command("delta")
def delta_command(
    old: Annotated[Path, typer.Argument(metavar="OLD")],
    new: Annotated[Path, typer.Argument(metavar="NEW")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Delta file to write.")],
    trust: TrustOption = None,
    json_mode: JsonOption = False,
) -> None:
    """Write the delta from OLD to NEW: all a holder of OLD needs to rebuild NEW exactly."""
    out = Output(json_mode)
    old_manifest = load_manifest(old, trust)
    new_manifest = load_manifest(new, trust)
    data = encode_delta(old_manifest, new_manifest)
    atomic_write_bytes(output, data)
    manifest_bytes = len(new_manifest.encode())
    out.summary(
        {
            "base": old_manifest.id_hex,
            "target": new_manifest.id_hex,
            "manifest_bytes": manifest_bytes,
            "delta_bytes": len(data),
            "ratio": round(len(data) / manifest_bytes, 6),
            "delta_file": str(output),
        },
        "manifest delta",
    )
    out.note(
        f"the delta is {len(data) / manifest_bytes:.2%} of the manifest "
        f"({manifest_bytes / len(data):.1f}× smaller)"
    )


@app.command("apply")
def apply_command(
    old: Annotated[Path, typer.Argument(metavar="OLD")],
    delta_file: Annotated[Path, typer.Argument(metavar="DELTA")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Manifest file to write.")],
    trust: TrustOption = None,
    json_mode: JsonOption = False,
) -> None:
    """Rebuild the new manifest from OLD and DELTA (made by `manifest delta`) and write it.

    The result is checked like any downloaded manifest; --trust applies to it, not to OLD.
    """
    out = Output(json_mode)
    keys = [parse_public_key(text) for text in trust or []]
    old_manifest = load_manifest(old, None)
    limits = ManifestLimits()
    data = _read_delta(delta_file, limits)
    manifest = apply_delta(old_manifest, data, trust=keys, limits=limits)
    manifest_bytes = manifest.save(output)
    out.summary(
        {
            "id": manifest.id_hex,
            "name": manifest.name,
            "version": manifest.version,
            "base": old_manifest.id_hex,
            "signers": [key.hex() for key in sorted(manifest.signatures)],
            "manifest_file": str(output),
            "bytes": manifest_bytes,
            "delta_bytes": len(data),
        },
        "manifest rebuilt",
    )


def _read_delta(path: Path, limits: ManifestLimits) -> bytes:
    """At most one byte past the limit, so apply_delta rejects an oversized delta by size."""
    try:
        with open(path, "rb") as handle:
            return handle.read(limits.max_bytes + 1)
    except OSError as exc:
        raise ManifestError(f"cannot read delta {os.fspath(path)!r}: {exc.strerror}") from None
