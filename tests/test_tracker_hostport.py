from __future__ import annotations

import pytest

from thetadist.errors import UsageError
from thetadist.tracker.hostport import parse_hostport


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:6969", ("127.0.0.1", 6969)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:80", ("localhost", 80)),
        ("tracker.example.org:65535", ("tracker.example.org", 65535)),
        ("[::1]:6969", ("::1", 6969)),
        ("[::]:1", ("::", 1)),
        (" 127.0.0.1:1 ", ("127.0.0.1", 1)),
    ],
)
def test_good(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "6969",
        ":6969",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:+1",
        "127.0.0.1:٣",
        "::1:6969",
        "[::1]6969",
        "[nothost]:1",
        "bad host:1",
        "under_score:1",
        "999.1.1.1:1",
        "a" * 300 + ":1",
    ],
)
def test_bad(text: str) -> None:
    with pytest.raises(UsageError):
        parse_hostport(text)
