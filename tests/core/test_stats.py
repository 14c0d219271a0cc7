"""Counters, windows and histograms, without sockets."""

from __future__ import annotations

import random

import pytest

from bunancer.core.stats import (
    BUCKETS,
    CONNECT,
    UPSTREAM_5XX,
    ServerStats,
    bucket_bounds,
    bucket_of,
    merge,
    percentile,
)


def test_buckets_cover_every_value_in_order() -> None:
    previous = -1
    for us in [0, 1, 2, 3, 4, 5, 7, 8, 100, 999, 1000, 65_535, 10**6, 10**8]:
        index = bucket_of(us)
        low, high = bucket_bounds(index)
        assert low <= us < high or index == BUCKETS - 1, (us, index, low, high)
        assert index >= previous
        previous = index
    # Each bucket is at most 25% wider than its lower edge (from 4 us on).
    for index in range(8, BUCKETS):
        low, high = bucket_bounds(index)
        assert high - low <= low / 4 + 1


def test_percentiles_within_one_bucket_of_exact() -> None:
    rng = random.Random(42)
    samples = sorted(int(rng.lognormvariate(8, 1)) + 1 for _ in range(20_000))  # ~3 ms median
    stats = ServerStats()
    for us in samples:
        stats.record(200, us, 0, 0, -1)
    stats.rotate()  # the lifetime histogram takes in each second's at rotation
    assert stats.seconds[-1].max_us >= samples[-1]
    for q in (0.5, 0.9, 0.99):
        exact = samples[int(q * len(samples)) - 1]
        estimate_us = percentile(stats.latency, q) * 1e6  # type: ignore[operator]
        low, high = bucket_bounds(bucket_of(exact))
        assert low <= estimate_us <= high * 1.25 + 1, (q, exact, estimate_us)


def test_rate_and_window_fall_to_zero_after_traffic_stops() -> None:
    stats = ServerStats()
    for _ in range(50):
        stats.record(200, 1000, 10, 20, -1)
    stats.rotate()
    assert stats.rate(1) == 50
    assert stats.window_summary(10)["rps"] == 5.0
    for _ in range(9):
        stats.rotate()
    assert stats.rate(1) == 0
    assert stats.window_summary(10)["requests"] == 50
    stats.rotate()
    assert stats.window_summary(10)["requests"] == 0
    assert stats.window_summary(10)["p99"] is None
    assert stats.requests == 50  # lifetime totals stay
    assert stats.history(5) == [0, 0, 0, 0, 0]


def test_errors_and_classes() -> None:
    stats = ServerStats()
    stats.record(200, 10, 1, 1, -1)
    stats.record(503, 10, 1, 1, UPSTREAM_5XX)
    stats.record(502, 10, 1, 1, CONNECT)
    stats.record(0, 10, 1, 0, CONNECT)
    stats.rotate()
    summary = stats.window_summary(1)
    assert summary["errors"] == 3
    assert summary["error_rate"] == pytest.approx(0.75)
    assert stats.by_class[2] == 1
    assert stats.by_class[5] == 2
    assert stats.by_class[0] == 1
    assert stats.errors[CONNECT] == 2


def test_merge_sums_servers_second_by_second() -> None:
    a, b = ServerStats(), ServerStats()
    for _ in range(3):
        a.record(200, 100, 1, 2, -1)
    a.rotate()
    b.rotate()
    b.record(200, 5000, 1, 2, -1)
    a.rotate()
    b.rotate()
    total = merge([a, b])
    assert total.requests == 4
    assert [s.requests for s in total.seconds] == [3, 1]
    assert total.bytes_out == 8
    assert percentile(total.seconds[-1].latency, 1.0) == pytest.approx(
        bucket_bounds(bucket_of(5000))[1] / 1e6
    )
