"""The payment benchmark's interval of paid ÷ free over its rounds."""

from __future__ import annotations

import statistics

import pytest

from bench.bench_pay import bootstrap_interval

NOISY = [(2.03, 1.86), (2.12, 1.82), (1.93, 1.85), (1.93, 1.87), (2.09, 1.80), (2.02, 1.87)]


def test_a_constant_ratio_has_no_spread() -> None:
    rounds = [(1.1 * free, free) for free in (1.8, 1.9, 2.0, 2.1, 2.2)]
    assert bootstrap_interval(rounds) == pytest.approx([1.1, 1.1])


def test_the_interval_brackets_the_figure_and_is_reproducible() -> None:
    low, high = bootstrap_interval(NOISY)
    figure = statistics.median(p for p, _ in NOISY) / statistics.median(f for _, f in NOISY)
    assert low < figure < high
    assert bootstrap_interval(NOISY) == [low, high]


def test_one_round_gives_no_interval() -> None:
    assert bootstrap_interval(NOISY[:1]) == []
