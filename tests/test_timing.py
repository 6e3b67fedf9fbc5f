"""The latency figures' one definition: the rounds' median interval (backends.base.median_interval) and the summary
fields that runners fill (LatencyStats) and report.json holds (results.report.Latency, derived from them)."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest

from edgedistill.backends.base import LatencyStats, median_interval
from edgedistill.results.report import Latency


def exact_interval(n: int, confidence: float) -> tuple[int, float]:
    """(k, coverage) in exact integers: the widest k-th smallest to k-th largest round that holds the true median with
    `confidence` (k >= 1)."""
    k = 1
    while k + 1 <= (n + 1) // 2 and 1 - 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n >= confidence:
        k += 1
    return k, 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n


@pytest.mark.parametrize("confidence", [0.5, 0.8, 0.9, 0.95, 0.99])
def test_median_interval_is_the_exact_order_statistic_interval(confidence):
    for n in range(1, 120):
        values = np.random.default_rng(n).permutation(np.arange(n, dtype=float) * 1.5)
        median, low, high, coverage = median_interval(values, confidence)
        k, exact = exact_interval(n, confidence)
        assert (median, low, high) == (float(np.median(values)), 1.5 * (k - 1), 1.5 * (n - k)), n
        assert coverage == pytest.approx(exact, abs=1e-12)


def test_report_latency_is_latency_stats_summary():
    """A figure added to LatencyStats reaches report.json's schema with nothing else to edit; a summary round trips."""
    summary = [f.name for f in fields(LatencyStats) if f.name != "samples_ms"]
    assert list(Latency.model_fields) == summary
    stats = LatencyStats.from_rounds([np.arange(1, 11.0) + i for i in range(5)], batch=1)
    stats.busy_elsewhere_cores, stats.usable_cores = 0.5, 2
    assert Latency.model_validate(stats.as_dict()).as_dict() == stats.as_dict()
    assert Latency().as_dict() == {} and Latency().rounds == 1 and Latency().noisy is False and Latency().p99_ms is None
    assert Latency.model_fields["cv"].description == "spread of single calls (std / mean)"
