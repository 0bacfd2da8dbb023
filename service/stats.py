"""Latency summaries of millisecond lists: percentiles and CDFs (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float, digits: int = 3) -> float | None:
    """The q-th percentile (linear interpolation), rounded; None for no values."""
    return round(float(np.percentile(np.asarray(values), q)), digits) if len(values) else None


def percentiles(values_ms: Sequence[float], digits: int = 3) -> dict[str, float | None]:
    """p50, p90, p99 and max of a list of milliseconds (None when empty)."""
    summary = {f"p{q}": percentile(values_ms, q, digits) for q in (50, 90, 99)}
    summary["max"] = round(float(max(values_ms)), digits) if len(values_ms) else None
    return summary


def cdf(values_ms: Sequence[float], points: int = 101) -> list[float]:
    """The values at 0, 1, ..., 100 % (for `points` = 101): for plots and comparisons."""
    if not len(values_ms):
        return []
    return [round(float(v), 3) for v in np.percentile(np.asarray(values_ms), np.linspace(0, 100, points))]
