"""Canonical bencode: encoding through bencode.py, strict bounded decoding of untrusted bytes.

bencode.py's decoder recurses without a depth bound, accepts unsorted dictionary keys and
builds integers of any size, so untrusted input is decoded here instead: every string length
is checked against the bytes that remain, integers are limited in digits, nesting in depth,
containers in item count, and only the canonical form (sorted unique keys, no leading zeros,
no ``-0``, no trailing bytes) is accepted.  Errors are :class:`ManifestError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import bencode as _bencode

from thetadist.errors import ManifestError

Value = int | bytes | list["Value"] | dict[bytes, "Value"]


@dataclass(frozen=True)
class DecodeLimits:
    max_depth: int = 8
    max_int_digits: int = 20
    max_items: int = 2_000_000


def encode(value: Value) -> bytes:
    """Encode ``value`` canonically (dictionary keys sorted as raw bytes)."""
    encoded: bytes = _bencode.bencode(value)
    return encoded


def decode(data: bytes | bytearray | memoryview, limits: DecodeLimits = DecodeLimits()) -> Value:
    """Decode one canonical bencoded value that spans all of ``data``."""
    parser = _Parser(memoryview(data).cast("B"), limits)
    value = parser.value(0)
    if parser.pos != len(parser.buf):
        raise ManifestError(f"trailing bytes after the bencoded value at offset {parser.pos}")
    return value


class _Parser:
    def __init__(self, buf: memoryview, limits: DecodeLimits) -> None:
        self.buf = buf
        self.pos = 0
        self.limits = limits
        self.items = 0

    def _byte(self) -> int:
        if self.pos >= len(self.buf):
            raise ManifestError("bencoded data ends early")
        return int(self.buf[self.pos])

    def _count_item(self) -> None:
        self.items += 1
        if self.items > self.limits.max_items:
            raise ManifestError(f"more than {self.limits.max_items} bencoded items")

    def value(self, depth: int) -> Value:
        if depth > self.limits.max_depth:
            raise ManifestError(f"bencoded nesting deeper than {self.limits.max_depth}")
        self._count_item()
        lead = self._byte()
        if lead == ord("i"):
            return self._int()
        if 0x30 <= lead <= 0x39:
            return self._bytes()
        if lead == ord("l"):
            self.pos += 1
            items: list[Value] = []
            while self._byte() != ord("e"):
                items.append(self.value(depth + 1))
            self.pos += 1
            return items
        if lead == ord("d"):
            self.pos += 1
            result: dict[bytes, Value] = {}
            previous: bytes | None = None
            while self._byte() != ord("e"):
                if not 0x30 <= self._byte() <= 0x39:
                    raise ManifestError(f"dictionary key is not a string at offset {self.pos}")
                key = self._bytes()
                if previous is not None and key <= previous:
                    raise ManifestError("dictionary keys are not sorted and unique")
                previous = key
                result[key] = self.value(depth + 1)
            self.pos += 1
            return result
        raise ManifestError(f"unexpected byte {lead:#04x} at offset {self.pos}")

    def _digits(self, terminator: int) -> tuple[bytes, int]:
        end = self.pos
        limit = min(len(self.buf), self.pos + self.limits.max_int_digits + 2)
        while end < limit and self.buf[end] != terminator:
            end += 1
        if end >= limit:
            raise ManifestError(f"integer or length too long or unterminated at offset {self.pos}")
        return bytes(self.buf[self.pos : end]), end

    def _int(self) -> int:
        self.pos += 1
        text, end = self._digits(ord("e"))
        body = text[1:] if text.startswith(b"-") else text
        if not body or not body.isdigit() or (body.startswith(b"0") and len(body) > 1):
            raise ManifestError(f"non-canonical integer {text[:24]!r}")
        if text == b"-0":
            raise ManifestError("non-canonical integer -0")
        self.pos = end + 1
        return int(text)

    def _bytes(self) -> bytes:
        text, end = self._digits(ord(":"))
        if not text.isdigit() or (text.startswith(b"0") and len(text) > 1):
            raise ManifestError(f"non-canonical string length {text[:24]!r}")
        length = int(text)
        start = end + 1
        if length > len(self.buf) - start:
            raise ManifestError(f"string of {length} bytes runs past the end of the data")
        self.pos = start + length
        return bytes(self.buf[start : self.pos])
