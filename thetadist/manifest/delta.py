"""Manifest deltas: rebuild manifest v2 from v1 and a small delta instead of all of v2.

A manifest is mostly its chunk table (36 bytes a chunk: about 1.8 MiB per GiB of content), and
a patch keeps most of the previous version's chunks, in long runs.  A delta therefore carries
new's top-level dictionary without the table, verbatim, plus the table expressed against old's:
runs copied from old's table and the few entries that are new.  Whoever holds old rebuilds the
exact canonical bytes of new — same id, every signature still valid — and the result goes
through :meth:`Manifest.decode` like any downloaded manifest, so a delta can never produce
anything a full manifest could not.  The format is specified in docs/manifest-delta.md.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

from thetadist.errors import ManifestError
from thetadist.manifest import bencoding
from thetadist.manifest.model import (
    DIGEST_SIZE,
    Manifest,
    ManifestLimits,
    pack_u32s,
    unpack_u32s,
)

DELTA_FORMAT = 1
SIZE_BYTES = 4  # a chunk size: unsigned 32-bit big-endian
OP_BYTES = 12  # an op: three unsigned 32-bit big-endian integers
U32_MAX = 0xFFFF_FFFF
DEFAULT_LIMITS = ManifestLimits()
_TABLE_KEYS = (b"chunk hashes", b"chunk sizes")
_DELTA_KEYS = frozenset(
    {b"base", b"format", b"literal hashes", b"literal sizes", b"manifest", b"ops", b"target"}
)


# ------------------------------------------------------------------------- encoding


def encode_delta(old: Manifest, new: Manifest) -> bytes:
    """A canonical bencoded delta that turns ``old`` into ``new`` (see docs/manifest-delta.md).

    Every key of ``new`` but its chunk table is carried verbatim — signatures and any key
    this version does not know included — so the rebuilt bytes are exactly ``new.encode()``.
    """
    if old.chunk_count > U32_MAX or new.chunk_count > U32_MAX:
        raise ManifestError("chunk table too large for a delta (more than 2**32 - 1 chunks)")
    encoded = new.encode()
    items = 6 * len(new.files) + len(new.directories) + 2 * len(new.signatures) + 64
    value = bencoding.decode(encoded, bencoding.DecodeLimits(max_items=items))
    if not isinstance(value, dict):  # pragma: no cover - Manifest.encode makes a dictionary
        raise ManifestError("manifest is not a dictionary")
    for key in _TABLE_KEYS:
        del value[key]
    ops, literal_hashes, literal_sizes = _diff_tables(
        old.chunk_digests,
        pack_u32s(old.chunk_sizes),
        new.chunk_digests,
        pack_u32s(new.chunk_sizes),
    )
    return bencoding.encode(
        {
            b"base": old.id,
            b"format": DELTA_FORMAT,
            b"literal hashes": literal_hashes,
            b"literal sizes": literal_sizes,
            b"manifest": value,
            b"ops": ops,
            b"target": new.id,
        }
    )


def _diff_tables(
    old_digests: bytes, old_sizes: bytes, new_digests: bytes, new_sizes: bytes
) -> tuple[bytes, bytes, bytes]:
    """Express new's table as ops against old's: ``(packed ops, literal digests, literal sizes)``.

    One pass over new's entries.  A copy run is first extended in place (old index = previous
    + 1), which keeps runs long even through repeated chunks (a file of zeros); only where the
    run breaks is the entry looked up by digest.  Run lengths are found by galloping over
    slices (:func:`_run_length`), so a copied run costs O(log length) Python steps and a
    memcmp of its bytes; a streak of new chunks costs one slice and one dict lookup each.
    """
    old_n = len(old_sizes) // SIZE_BYTES
    new_n = len(new_sizes) // SIZE_BYTES
    index: dict[bytes, int] | None = None  # digest → first old index; built on first need
    ops: list[int] = []  # flat (start, count, literals) triples
    literal_spans: list[tuple[int, int]] = []  # [first, end) ranges of new's entries
    tables = (new_digests, new_sizes, old_digests, old_sizes)
    i = 0
    follow = 0  # the old index right after the last copied run
    while i < new_n:
        start = follow
        run = _run_length(tables, i, follow, min(new_n - i, old_n - follow))
        if not run:
            if index is None:
                keys = [
                    old_digests[k : k + DIGEST_SIZE]
                    for k in range(0, len(old_digests), DIGEST_SIZE)
                ]
                # Reversed so that the first occurrence of a repeated digest wins.
                index = dict(zip(reversed(keys), range(old_n - 1, -1, -1), strict=True))
                del keys
            found = index.get(new_digests[i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE])
            if found is not None:
                start = found
                run = _run_length(tables, i, found, min(new_n - i, old_n - found))
        if run:
            if ops and ops[-1] == 0 and ops[-3] + ops[-2] == start:
                ops[-2] += run  # the previous op ends where this run starts: extend it
            else:
                ops.extend((start, run, 0))
            follow = start + run
            i += run
            continue
        # A streak of new chunks: scan on while their digests are unknown to old's table.
        # (An entry equal to old[follow] is in the index too, so the streak stops there.)
        assert index is not None
        get = index.get
        first = i
        position, stop = (i + 1) * DIGEST_SIZE, new_n * DIGEST_SIZE
        while position < stop and get(new_digests[position : position + DIGEST_SIZE]) is None:
            position += DIGEST_SIZE
        i = position // DIGEST_SIZE
        if not ops:
            ops.extend((0, 0, 0))
        ops[-1] += i - first
        if literal_spans and literal_spans[-1][1] == first:
            literal_spans[-1] = (literal_spans[-1][0], i)
        else:
            literal_spans.append((first, i))
    literal_hashes = b"".join(
        new_digests[first * DIGEST_SIZE : end * DIGEST_SIZE] for first, end in literal_spans
    )
    literal_sizes = b"".join(
        new_sizes[first * SIZE_BYTES : end * SIZE_BYTES] for first, end in literal_spans
    )
    return pack_u32s(array("I", ops)), literal_hashes, literal_sizes


def _run_length(tables: tuple[bytes, bytes, bytes, bytes], i: int, j: int, limit: int) -> int:
    """How many entries from new index ``i`` equal old's from ``j`` (digest and size), at most
    ``limit``: gallop (1, 2, 4, … entries) then bisect, comparing only the entries not yet
    known equal, so the bytes compared add up to about three times the run's."""
    new_digests, new_sizes, old_digests, old_sizes = tables

    def same(low: int, high: int) -> bool:  # entries [low, high) of the run are equal
        return (
            new_digests[(i + low) * DIGEST_SIZE : (i + high) * DIGEST_SIZE]
            == old_digests[(j + low) * DIGEST_SIZE : (j + high) * DIGEST_SIZE]
            and new_sizes[(i + low) * SIZE_BYTES : (i + high) * SIZE_BYTES]
            == old_sizes[(j + low) * SIZE_BYTES : (j + high) * SIZE_BYTES]
        )

    if limit <= 0 or not same(0, 1):
        return 0
    low, probe = 1, 2  # entries [0, low) are known equal
    while probe <= limit and same(low, probe):
        low, probe = probe, probe * 2
    high = min(probe, limit + 1)  # entry high - 1 differs, or lies past the limit
    while high - low > 1:
        middle = (low + high) // 2
        if same(low, middle):
            low = middle
        else:
            high = middle
    return low


# ------------------------------------------------------------------------- applying


def apply_delta(
    old: Manifest,
    delta: bytes,
    *,
    trust: Sequence[bytes] = (),
    limits: ManifestLimits = DEFAULT_LIMITS,
) -> Manifest:
    """Rebuild the manifest ``delta`` describes from ``old``; the delta is untrusted.

    Every field and op is checked before anything is allocated for it, the rebuilt bytes are
    validated by :meth:`Manifest.decode` (canonical form, every rule, every signature present,
    each key in ``trust``) and must hash to the delta's ``target``.  Any failure is a
    :class:`ManifestError` with one line.
    """
    if len(delta) > limits.max_bytes:
        raise ManifestError(f"delta larger than {limits.max_bytes} bytes")
    value = bencoding.decode(
        delta,
        bencoding.DecodeLimits(max_items=limits.max_files * 6 + limits.max_directories + 64),
    )
    if not isinstance(value, dict):
        raise ManifestError("delta is not a dictionary")
    if b"format" not in value:
        raise ManifestError("delta lacks key b'format'")
    form = value[b"format"]
    if not isinstance(form, int) or form != DELTA_FORMAT:
        raise ManifestError(f"unsupported delta format {_short(form)}")
    unknown = set(value) - _DELTA_KEYS
    if unknown:
        raise ManifestError(f"unknown delta key {_short(min(unknown))}")
    missing = _DELTA_KEYS - set(value)
    if missing:
        raise ManifestError(f"delta lacks key {_short(min(missing))}")
    base = _digest(value[b"base"], "base")
    target = _digest(value[b"target"], "target")
    if base != old.id:
        raise ManifestError(f"delta is for manifest {base.hex()[:16]}…, not {old.id_hex[:16]}…")
    body = value[b"manifest"]
    if not isinstance(body, dict):
        raise ManifestError("delta manifest is not a dictionary")
    for key in _TABLE_KEYS:
        if key in body:
            raise ManifestError(f"delta manifest must not hold {key.decode()!r}")
    digests, sizes = _rebuild_table(
        old,
        _field(value[b"ops"], "ops", OP_BYTES),
        _field(value[b"literal hashes"], "literal hashes", DIGEST_SIZE),
        _field(value[b"literal sizes"], "literal sizes", SIZE_BYTES),
        limits,
    )
    rebuilt = dict(body)
    rebuilt[b"chunk hashes"] = digests
    rebuilt[b"chunk sizes"] = sizes
    try:
        data = bencoding.encode(rebuilt)
    except (TypeError, ValueError) as exc:  # pragma: no cover - decode only makes encodables
        raise ManifestError(f"delta manifest cannot be encoded: {exc}") from None
    result = Manifest.decode(data, trust=trust, limits=limits)
    if result.id != target:
        raise ManifestError(
            f"delta rebuilt manifest {result.id_hex[:16]}…, not its target {target.hex()[:16]}…"
        )
    return result


def _rebuild_table(
    old: Manifest, ops: bytes, literal_hashes: bytes, literal_sizes: bytes, limits: ManifestLimits
) -> tuple[bytes, bytes]:
    """Run the ops against old's table; every bound is checked before its slice is taken."""
    literal_count = len(literal_hashes) // DIGEST_SIZE
    if len(literal_sizes) // SIZE_BYTES != literal_count:
        raise ManifestError("delta literal hashes and literal sizes differ in length")
    op_count = len(ops) // OP_BYTES
    if op_count > limits.max_chunks:
        raise ManifestError(f"delta has more ops than {limits.max_chunks} chunks")
    if literal_count > limits.max_chunks:
        raise ManifestError(f"delta has more than {limits.max_chunks} literal chunks")
    old_count = old.chunk_count
    old_digests = old.chunk_digests
    old_sizes = pack_u32s(old.chunk_sizes)
    digest_parts: list[bytes] = []
    size_parts: list[bytes] = []
    total = 0
    used = 0  # literal entries consumed so far
    fields = iter(unpack_u32s(ops))
    for number, (start, count, literals) in enumerate(zip(fields, fields, fields, strict=True)):
        if count == 0 and literals == 0:
            raise ManifestError(f"delta op {number} is empty")
        if start + count > old_count:
            raise ManifestError(
                f"delta op {number} copies chunks {start}+{count}, "
                f"past the base's {old_count} chunks"
            )
        total += count + literals
        if total > limits.max_chunks:
            raise ManifestError(f"delta describes more than {limits.max_chunks} chunks")
        if total * (DIGEST_SIZE + SIZE_BYTES) > limits.max_bytes:
            # a few bytes of ops can copy the base's table many times over: refuse the table
            # before building what the manifest size limit would refuse afterwards
            raise ManifestError(f"delta describes a manifest larger than {limits.max_bytes} bytes")
        if used + literals > literal_count:
            raise ManifestError(
                f"delta op {number} needs literal chunks past the {literal_count} it holds"
            )
        if count:
            digest_parts.append(old_digests[start * DIGEST_SIZE : (start + count) * DIGEST_SIZE])
            size_parts.append(old_sizes[start * SIZE_BYTES : (start + count) * SIZE_BYTES])
        if literals:
            end = used + literals
            digest_parts.append(literal_hashes[used * DIGEST_SIZE : end * DIGEST_SIZE])
            size_parts.append(literal_sizes[used * SIZE_BYTES : end * SIZE_BYTES])
            used = end
    if used != literal_count:
        raise ManifestError(f"delta holds {literal_count} literal chunks but its ops use {used}")
    return b"".join(digest_parts), b"".join(size_parts)


def _field(raw: object, what: str, record: int) -> bytes:
    if not isinstance(raw, bytes):
        raise ManifestError(f"delta {what} is not a byte string")
    if len(raw) % record:
        raise ManifestError(f"delta {what} length {len(raw)} is not a multiple of {record}")
    return raw


def _digest(raw: object, what: str) -> bytes:
    if not isinstance(raw, bytes) or len(raw) != DIGEST_SIZE:
        raise ManifestError(f"delta {what} is not a {DIGEST_SIZE}-byte manifest id")
    return raw


def _short(raw: object) -> str:
    """A hostile value, quoted briefly enough for a one-line error (never repr'd whole)."""
    if isinstance(raw, bytes):
        return repr(raw[:32]) + ("…" if len(raw) > 32 else "")
    if isinstance(raw, int):
        return str(raw)
    return f"of type {type(raw).__name__}"
