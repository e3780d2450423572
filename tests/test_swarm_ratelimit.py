"""The token bucket and parse_rate, with explicit ``now`` values: no sleeping, no clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thetadist.errors import UsageError
from thetadist.swarm import TokenBucket, parse_rate

MB = 1_000_000


def test_burst_then_rate() -> None:
    bucket = TokenBucket(1 * MB, burst=100_000, now=0.0)
    assert bucket.reserve(100_000, 0.0) == 0.0  # the burst is free
    assert bucket.reserve(500_000, 0.0) == pytest.approx(0.5)  # then the rate
    # the balance is -0.5 s: another 100 kB waits 0.6 s counted from now
    assert bucket.reserve(100_000, 0.0) == pytest.approx(0.6)
    assert bucket.available(0.6) == pytest.approx(0.0)
    assert bucket.reserve(1, 10.0) == 0.0
    assert bucket.available(10.0) == pytest.approx(100_000 - 1)  # refills up to the burst only


def test_large_frame_never_starves() -> None:
    bucket = TokenBucket(10_000, burst=1000, now=0.0)
    delay = bucket.reserve(1_000_000, 0.0)  # far larger than the burst
    assert delay == pytest.approx(99.9)
    assert bucket.available(delay) == pytest.approx(0.0)


def test_long_run_average_is_the_rate() -> None:
    """A sender that sleeps each returned delay moves the burst, then ``rate`` per second."""
    rate = 20 * MB
    bucket = TokenBucket(rate, now=0.0)
    now = 0.0
    sent = 0
    while now < 10.0:
        now += bucket.reserve(1 << 20, now)  # 1 MiB frames
        sent += 1 << 20
    assert sent == pytest.approx(bucket.burst + rate * now, rel=1e-9)
    assert sent / now == pytest.approx(rate, rel=0.03)


@given(
    rate=st.integers(1_000, 10**9),
    sizes=st.lists(st.integers(0, 4 << 20), min_size=1, max_size=50),
    gaps=st.lists(st.floats(0, 2), min_size=50, max_size=50),
)
def test_never_exceeds_burst_plus_rate(rate: int, sizes: list[int], gaps: list[float]) -> None:
    bucket = TokenBucket(rate, now=0.0)
    now = 0.0
    total = 0
    for size, gap in zip(sizes, gaps, strict=False):
        now += gap
        release = now + bucket.reserve(size, now)
        total += size
        # everything released by ``release`` fits burst + rate × elapsed
        assert total <= bucket.burst + rate * release + 1e-6 * total + 1
        now = release


def test_unlimited() -> None:
    for bucket in (TokenBucket.unlimited(), TokenBucket(None), TokenBucket(0)):
        assert bucket.is_unlimited
        assert bucket.reserve(10**12, 0.0) == 0.0
        assert bucket.delay(10**12, 0.0) == 0.0
        assert bucket.available(0.0) == float("inf")


def test_default_burst_and_set_rate() -> None:
    assert TokenBucket(20 * MB).burst == 5 * MB  # a quarter second
    assert TokenBucket(1000).burst == 64 * 1024  # at least one frame
    bucket = TokenBucket(1 * MB, burst=MB, now=0.0)
    bucket.reserve(MB, 0.0)
    bucket.set_rate(2 * MB, 1.0, burst=MB)  # balance refilled to 1 MB at the old rate first
    assert bucket.available(1.0) == pytest.approx(MB)
    assert bucket.reserve(2 * MB, 1.0) == pytest.approx(0.5)
    bucket.set_rate(None, 1.0)
    assert bucket.reserve(10**9, 1.0) == 0.0


def test_delay_does_not_take_tokens() -> None:
    bucket = TokenBucket(1000, burst=1000, now=0.0)
    assert bucket.delay(1500, 0.0) == pytest.approx(0.5)
    assert bucket.available(0.0) == 1000


def test_time_going_backwards_is_ignored() -> None:
    bucket = TokenBucket(1000, burst=1000, now=10.0)
    bucket.reserve(1000, 10.0)
    assert bucket.reserve(0, 5.0) == 0.0
    assert bucket.available(5.0) == 0.0
    assert bucket.available(11.0) == pytest.approx(1000)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        TokenBucket(-1)
    with pytest.raises(ValueError):
        TokenBucket(1000, burst=0)
    with pytest.raises(ValueError):
        TokenBucket(1000).reserve(-1, 0.0)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("20MB/s", 20 * MB),
        ("20MB", 20 * MB),
        ("20 MB / s", 20 * MB),
        ("512KiB/s", 512 * 1024),
        ("1.5MB/s", 1_500_000),
        ("1GiB/sec", 1 << 30),
        ("1000", 1000),
        ("0", 0),
        ("unlimited", 0),
        ("None", 0),
        ("off", 0),
    ],
)
def test_parse_rate(text: str, value: int) -> None:
    assert parse_rate(text) == value


@pytest.mark.parametrize(
    "text", ["", "/s", "fast", "20Mbit/s", "20Mbps", "20 XB/s", "-5MB/s", "20MB/h", "MB/s"]
)
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_rate(text)
