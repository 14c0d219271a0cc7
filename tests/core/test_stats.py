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
        assert low <= estimate_us <= high, (q, exact, estimate_us)  # within its bucket


def test_percentiles_are_interpolated_inside_their_bucket() -> None:
    # Fast servers whose p99 falls in the same bucket used to read the same value (its
    # upper edge); interpolation keeps them within the bucket but tells them apart.
    low, high = bucket_bounds(bucket_of(1000))
    stats = ServerStats()
    for _ in range(100):
        stats.record(200, 1000, 0, 0, -1)
    stats.rotate()
    p50, p99 = percentile(stats.latency, 0.5), percentile(stats.latency, 0.99)
    assert p50 is not None
    assert p99 is not None
    assert low / 1e6 <= p50 < p99 <= high / 1e6
    mostly_faster = ServerStats()  # the same bucket, but half of it one bucket below
    for _ in range(50):
        mostly_faster.record(200, low - 1, 0, 0, -1)
        mostly_faster.record(200, 1000, 0, 0, -1)
    mostly_faster.rotate()
    other = percentile(mostly_faster.latency, 0.99)
    assert other is not None
    assert low / 1e6 <= other < p99
    assert percentile([0] * BUCKETS, 0.99) is None


def test_history_falls_to_zero_after_traffic_stops() -> None:
    stats = ServerStats()
    for _ in range(50):
        stats.record(200, 1000, 10, 20, -1)
    stats.rotate()
    assert stats.seconds[-1].requests == 50
    for _ in range(5):
        stats.rotate()
    assert stats.requests == 50  # lifetime totals stay
    assert stats.history(5) == [0, 0, 0, 0, 0]
    assert stats.history(6)[0] == 50


def test_retried_answers_count_against_the_server() -> None:
    stats = ServerStats()
    stats.record_retried(503, UPSTREAM_5XX, redispatched=True)
    stats.record_retried(0, CONNECT, redispatched=False)
    stats.record(200, 10, 1, 1, -1)
    stats.rotate()
    second = stats.seconds[-1]
    assert (second.requests, second.errors, second.retried) == (3, 2, 2)
    assert (stats.retries, stats.redispatches, stats.retried) == (1, 1, 2)
    assert stats.by_class[5] == 1
    assert stats.by_class[0] == 1
    assert sum(second.latency) == 1  # only the answer a client got is timed


def test_errors_and_classes() -> None:
    stats = ServerStats()
    stats.record(200, 10, 1, 1, -1)
    stats.record(503, 10, 1, 1, UPSTREAM_5XX)
    stats.record(502, 10, 1, 1, CONNECT)
    stats.record(0, 10, 1, 0, CONNECT)
    stats.rotate()
    assert stats.seconds[-1].errors == 3
    assert stats.by_class[2] == 1
    assert stats.by_class[5] == 2
    assert stats.by_class[0] == 1
    assert stats.errors[CONNECT] == 2


def test_merge_sums_servers_second_by_second() -> None:
    a, b = ServerStats(), ServerStats()
    for _ in range(3):
        a.record(200, 100, 1, 2, -1)
    a.record_retried(503, UPSTREAM_5XX, redispatched=True)
    a.rotate()
    b.rotate()
    b.record(200, 5000, 1, 2, -1)
    a.rotate()
    b.rotate()
    total = merge([a, b])
    assert total.requests == 5
    assert total.redispatches == 1
    assert [s.requests for s in total.seconds] == [4, 1]
    assert [s.retried for s in total.seconds] == [1, 0]
    assert total.bytes_out == 8
    assert percentile(total.seconds[-1].latency, 1.0) == pytest.approx(
        bucket_bounds(bucket_of(5000))[1] / 1e6
    )
