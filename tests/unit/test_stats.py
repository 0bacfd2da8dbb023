"""Latency summaries on hand-made values."""

from __future__ import annotations

from polypstream.stats import cdf, percentile, percentiles


def test_percentiles_interpolate_between_values_and_round() -> None:
    assert percentiles([5.0, 1.0, 4.0, 2.0, 3.0]) == {"p50": 3.0, "p90": 4.6, "p99": 4.96, "max": 5.0}
    assert percentile([1.0, 2.0], 50, digits=0) == 2.0  # 1.5 rounds to even
    assert percentile([1.23456], 50, digits=2) == 1.23


def test_no_values_have_no_percentiles() -> None:
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None, "max": None}
    assert percentile([], 50) is None
    assert cdf([]) == []


def test_cdf_has_the_value_at_each_step_of_the_distribution() -> None:
    assert cdf([0.0, 100.0], points=5) == [0.0, 25.0, 50.0, 75.0, 100.0]
    assert len(cdf([1.0, 2.0, 3.0])) == 101


def test_milliseconds_are_reported_to_the_microsecond() -> None:
    # 3 decimals of a millisecond by default: 1.23456 ms is 1.235, not 1.23 or 1.2346.
    assert percentile([1.23456], 50) == 1.235
    assert percentiles([1.23456]) == {"p50": 1.235, "p90": 1.235, "p99": 1.235, "max": 1.235}
    assert cdf([1.23456, 1.23456], points=2) == [1.235, 1.235]
