"""The load generator's statistics: percentiles, windows and perf_analyzer's stability rule."""

from __future__ import annotations

import math

import pytest

from e2e.loadgen import (
    RequestRecord,
    WindowStats,
    first_stable_window,
    is_stable,
    percentile,
    summarize,
    window_stats,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 50, 5.0),
        ([5.0], 99, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        ([4.0, 3.0, 2.0, 1.0], 75, 3.0),
        ([4.0, 3.0, 2.0, 1.0], 76, 4.0),
        (list(range(1, 101)), 95, 95),
        (list(range(1, 101)), 99, 99),
        (list(range(1, 101)), 100, 100),
        (list(range(1, 1001)), 99, 990),
    ],
)
def test_percentile_is_nearest_rank(values, q, expected) -> None:
    assert percentile(values, q) == expected


def test_percentile_of_nothing_is_nan_and_q_is_checked() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="q"):
        percentile([1.0], 0)


def test_windows_count_by_finish_time_and_keep_failures_apart() -> None:
    records = [
        RequestRecord(0.1, 0.2, "a"),  # finishes at 0.3 -> window 0
        RequestRecord(0.5, 0.7, "a"),  # finishes at 1.2 -> window 1
        RequestRecord(1.0, 0.1, "b", error="timeout"),  # 1.1 -> window 1, failed
        RequestRecord(2.0, 0.4, "b"),  # 2.4 -> window 2 (a half window)
    ]
    windows = window_stats(records, duration_s=2.5, window_s=1.0)
    assert [(w.start_s, w.length_s, w.successes, w.failures) for w in windows] == [
        (0.0, 1.0, 1, 0),
        (1.0, 1.0, 1, 1),
        (2.0, 0.5, 1, 0),
    ]
    assert [w.throughput_rps for w in windows] == [1.0, 1.0, 2.0]
    assert windows[1].mean_latency_ms == pytest.approx(700.0)


def _window(throughput: float, latency_ms: float, length: float = 1.0) -> WindowStats:
    return WindowStats(0.0, length, int(throughput * length), 0, throughput, latency_ms)


@pytest.mark.parametrize(
    ("throughputs", "latencies", "stable"),
    [
        ([100, 105, 109], [10, 10, 10], True),
        ([100, 110, 105], [10, 10.5, 11], True),  # exactly 10% apart still counts
        ([100, 111, 105], [10, 10, 10], False),  # throughput spread 11%
        ([100, 100, 100], [10, 12, 10], False),  # perf_analyzer also requires steady latency
        ([0, 0, 0], [math.nan] * 3, False),  # an idle window is never stable
        ([100, 100, 0], [10, 10, math.nan], False),
    ],
)
def test_stability_rule(throughputs, latencies, stable) -> None:
    windows = [_window(t, lat) for t, lat in zip(throughputs, latencies, strict=True)]
    assert is_stable(windows) is stable


def test_first_stable_window_needs_three_consecutive_full_windows() -> None:
    warming = [_window(50, 30), _window(80, 15)]
    steady = [_window(100, 10), _window(104, 10.2), _window(98, 9.9)]
    assert first_stable_window(warming + steady) == 2
    assert first_stable_window(warming + steady[:2]) is None
    # A short trailing window is not a measurement window.
    assert first_stable_window(warming + steady[:2] + [_window(100, 10, length=0.3)]) is None


def test_summary_reports_percentiles_throughput_and_errors() -> None:
    # 100 successful requests with latencies 1..100 ms, 25 finishing in each second, plus 3 failures.
    records = [RequestRecord(i // 25 + 0.5, (i + 1) / 1000, "a") for i in range(100)]
    records += [RequestRecord(1.5, 0.01, "b", error="ConnectionError: refused")] * 2
    records += [RequestRecord(3.0, 0.01, "b", error="TimeoutError: ")]
    report = summarize(records, duration_s=4.0, window_s=1.0)
    assert (report.requests, report.failures) == (103, 3)
    assert (report.p50_ms, report.p95_ms, report.p99_ms) == pytest.approx((50.0, 95.0, 99.0))
    assert report.throughput_rps == pytest.approx(25.0)
    assert report.errors == {"ConnectionError: refused": 2, "TimeoutError: ": 1}
    assert sum(w.failures for w in report.windows) == 3
    assert sum(w.successes for w in report.windows) == 100
    # Throughput is steady (25/s) but latency grows with i, so the run is not stable.
    assert [w.successes for w in report.windows] == [25, 25, 25, 25]
    assert report.stable is False


def test_summary_of_a_steady_run_is_stable() -> None:
    records = [RequestRecord(0.01 * i, 0.005, "a") for i in range(500)]
    report = summarize(records, duration_s=5.0, window_s=1.0)
    assert report.failures == 0
    assert report.stable_from_window == 0
    assert report.p99_ms == pytest.approx(5.0)


def test_requests_and_failures_are_counted_per_endpoint() -> None:
    records = [RequestRecord(0.0, 0.01, "a:8000"), RequestRecord(0.0, 0.01, "b:8000", "boom"),
               RequestRecord(0.1, 0.01, "a:8000"), RequestRecord(0.2, 0.01, "b:8000")]
    report = summarize(records, 1.0)
    assert report.by_endpoint == {"a:8000": 2, "b:8000": 2}
    assert report.failures_by_endpoint == {"b:8000": 1}
