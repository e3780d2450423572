"""Parsing and printing byte sizes such as ``32KiB``, ``1MiB`` or ``20MB``."""

from __future__ import annotations

import re

from thetadist.errors import UsageError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_PATTERN = re.compile(r"\s*(\d{1,15}(?:\.\d{1,6})?)\s*([a-zA-Z]{0,3})\s*")


def parse_size(text: str) -> int:
    """``"32KiB"`` → 32768, ``"20MB"`` → 20000000.  Raises :class:`UsageError`."""
    match = _PATTERN.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise UsageError(f"not a size: {text[:40]!r} (examples: 32KiB, 1MiB, 20MB)")
    value = (
        float(match.group(1)) * _UNITS[unit]
        if "." in match.group(1)
        else (int(match.group(1)) * _UNITS[unit])
    )
    return int(value)


def format_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
