"""Deterministic inputs shared by the chunking test vectors and their generator."""

import blake3

from thetadist.manifest.model import ChunkerParams

VECTOR_PARAMS = {
    "fastcdc-32KiB": ChunkerParams.fastcdc(32 * 1024),
    "fastcdc-16KiB": ChunkerParams.fastcdc(16 * 1024),
    "fastcdc-1KiB": ChunkerParams.fastcdc(1024),
    "fixed-64KiB": ChunkerParams.fixed(64 * 1024),
}


def vector_input() -> bytes:
    """1 MiB of XOF noise, 256 KiB of zeros, then 300 KiB of repeating text."""
    noise = blake3.blake3(b"thetadist chunking vector").digest(length=1 << 20)
    text = b"the quick brown fox jumps over the lazy dog\n" * (300 * 1024 // 44)
    return noise + bytes(256 * 1024) + text
