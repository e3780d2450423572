"""Swarm commands run with a short thread switch interval and put the old one back."""

from __future__ import annotations

import sys

import pytest

from thetadist.cli.runner import run_until_signal
from thetadist.net.switching import SWITCH_INTERVAL


def test_a_command_runs_with_the_short_interval_and_restores_the_old_one() -> None:
    before = sys.getswitchinterval()
    assert before != SWITCH_INTERVAL
    seen: list[float] = []

    async def call() -> int:
        seen.append(sys.getswitchinterval())
        return 7

    assert run_until_signal(call) == (7, False)
    assert seen == [pytest.approx(SWITCH_INTERVAL)]  # the interpreter keeps microseconds
    assert sys.getswitchinterval() == before


def test_the_old_interval_comes_back_after_an_error() -> None:
    before = sys.getswitchinterval()

    async def call() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_until_signal(call)
    assert sys.getswitchinterval() == before


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0.002", 0.002), ("nonsense", SWITCH_INTERVAL), ("50", SWITCH_INTERVAL)],
)
def test_the_environment_may_set_the_interval_within_bounds(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: float
) -> None:
    from thetadist.net.switching import short_switch_interval

    monkeypatch.setenv("THETADIST_SWITCH_INTERVAL", value)
    with short_switch_interval():
        assert sys.getswitchinterval() == pytest.approx(expected)
