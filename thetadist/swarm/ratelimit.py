"""A pure token bucket for upload/download rate caps, and ``parse_rate``.

Sans-I/O: the caller passes ``now`` (any monotonic clock, seconds) and sleeps the delay that
:meth:`TokenBucket.reserve` returns.  The balance may go negative, so one frame larger than
the burst is sent after a proportionate wait instead of never::

    delay = bucket.reserve(len(frame), trio.current_time())
    if delay > 0:
        await trio.sleep(delay)
    await stream.send_all(frame)

Over any interval the bytes reserved are at most ``burst + rate × elapsed`` plus the one
reservation that drove the balance negative, so the long-run average never exceeds ``rate``.
"""

from __future__ import annotations

import re

from thetadist.errors import UsageError
from thetadist.units import parse_size

__all__ = ["DEFAULT_BURST_SECONDS", "MIN_BURST", "TokenBucket", "parse_rate"]

#: Default burst: a quarter of a second of traffic, but at least one 64 KiB frame.
DEFAULT_BURST_SECONDS = 0.25
MIN_BURST = 64 * 1024


class TokenBucket:
    """Tokens are bytes.  ``rate_bytes_per_s`` of ``None`` or ``0`` means unlimited.

    The bucket starts full (``burst`` tokens) at ``now``.  Time going backwards is ignored.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(
        self, rate_bytes_per_s: float | None, burst: float | None = None, now: float = 0.0
    ) -> None:
        self.rate = 0.0
        self.burst = 0.0
        self._tokens = 0.0
        self._last = now
        self.set_rate(rate_bytes_per_s, now, burst)
        self._tokens = self.burst

    @classmethod
    def unlimited(cls) -> TokenBucket:
        return cls(None)

    @property
    def is_unlimited(self) -> bool:
        return self.rate == 0.0

    def set_rate(
        self, rate_bytes_per_s: float | None, now: float, burst: float | None = None
    ) -> None:
        """Change the cap (e.g. from a control command); the current balance is kept."""
        if rate_bytes_per_s is not None and rate_bytes_per_s < 0:
            raise ValueError("rate must be >= 0 (0 or None: unlimited)")
        if burst is not None and burst <= 0:
            raise ValueError("burst must be > 0")
        self._refill(now)
        self.rate = float(rate_bytes_per_s or 0.0)
        if burst is not None:
            self.burst = float(burst)
        else:
            self.burst = max(self.rate * DEFAULT_BURST_SECONDS, float(MIN_BURST))
        self._tokens = min(self._tokens, self.burst)

    def _refill(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._last = now

    def available(self, now: float) -> float:
        """Tokens in the bucket at ``now`` (negative while paying back a large reservation)."""
        if self.is_unlimited:
            return float("inf")
        self._refill(now)
        return self._tokens

    def reserve(self, nbytes: int, now: float) -> float:
        """Take ``nbytes`` tokens now and return how many seconds the caller must wait before
        using them (0.0 when the bucket had enough)."""
        if nbytes < 0:
            raise ValueError("nbytes must be >= 0")
        if self.is_unlimited:
            return 0.0
        self._refill(now)
        self._tokens -= nbytes
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self.rate

    def delay(self, nbytes: int, now: float) -> float:
        """How long until ``nbytes`` could be reserved without waiting (takes nothing)."""
        if self.is_unlimited:
            return 0.0
        self._refill(now)
        missing = nbytes - self._tokens
        return missing / self.rate if missing > 0 else 0.0


_RATE = re.compile(r"\s*(.*?)\s*(?:/\s*s(?:ec)?)?\s*", re.IGNORECASE)
_UNLIMITED = {"0", "unlimited", "none", "off", "inf"}


def parse_rate(text: str) -> int:
    """``"20MB/s"`` → 20_000_000 bytes per second; ``"512KiB/s"`` and ``"1.5MB"`` work too.

    Units are bytes, case-insensitive as in :func:`~thetadist.units.parse_size` (``MB`` = 10⁶,
    ``MiB`` = 2²⁰); bit rates (``Mbit/s``, ``Mbps``) are refused rather than guessed.
    ``"0"``, ``"unlimited"``, ``"none"``, ``"off"`` → 0 (no cap).  Raises :class:`UsageError`.
    """
    stripped = text.strip()
    if stripped.lower() in _UNLIMITED:
        return 0
    match = _RATE.fullmatch(stripped)
    body = match.group(1) if match else ""
    if not body or body.lower().endswith(("bit", "ps")):
        raise UsageError(f"not a rate: {text[:40]!r} (examples: 20MB/s, 512KiB/s, unlimited)")
    try:
        value = parse_size(body)
    except UsageError:
        raise UsageError(
            f"not a rate: {text[:40]!r} (examples: 20MB/s, 512KiB/s, unlimited)"
        ) from None
    return value
