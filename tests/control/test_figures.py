"""Figures read from counters: one error-rate definition, a server's view and its pool's."""

from __future__ import annotations

import pytest

from bunancer.control.figures import Window, error_rate, pool_figures, server_figures, summary
from bunancer.control.records import ServerRecord
from bunancer.control.states import HealthPolicy, ServerHealth
from bunancer.core.pool import ServerPool
from bunancer.core.server import Server, State
from bunancer.core.settings import BalancingSettings
from bunancer.core.stats import CONNECT, UPSTREAM_5XX, ServerStats


def record_of(server: Server) -> ServerRecord:
    return ServerRecord(server, ServerHealth(HealthPolicy(), 0.0, State.HEALTHY), "config", {})


def test_error_rate_has_one_definition() -> None:
    assert error_rate(0, 0) is None  # no requests: nothing to say, shown as "-"
    assert error_rate(1, 4) == 0.25
    stats = ServerStats()
    stats.rotate()
    assert Window(10).add(stats).error_rate is None
    assert summary(stats)["error_rate_10s"] is None


def test_window_falls_to_zero_after_traffic_stops() -> None:
    stats = ServerStats()
    for _ in range(50):
        stats.record(200, 1000, 10, 20, -1)
    stats.rotate()
    assert Window(10).add(stats).rps == 5.0
    assert summary(stats)["rps"] == 50
    for _ in range(9):
        stats.rotate()
    window = Window(10).add(stats)
    assert window.answered == 50
    assert window.last_second == (0, 0)
    stats.rotate()
    window = Window(10).add(stats)
    assert window.answered == 0
    assert window.percentile(0.99) is None
    assert summary(stats)["requests"] == 50  # the lifetime total stays


def test_a_failing_server_shows_its_errors_while_its_pool_shows_what_clients_saw() -> None:
    pool = ServerPool("web", BalancingSettings(algorithm="round-robin"))
    bad, good = Server("bad", "127.0.0.1", 1), Server("good", "127.0.0.1", 2)
    pool.add(bad)
    pool.add(good)
    for _ in range(10):  # each of bad's 503s was retried on good, which answered 200
        bad.stats.record_retried(503, UPSTREAM_5XX, redispatched=True)
        good.stats.record(200, 1000, 10, 10, -1)
    for _ in range(10):
        good.stats.record(200, 1000, 10, 10, -1)
    bad.stats.rotate()
    good.stats.rotate()
    pool.rejected.rotate()

    records = [record_of(bad), record_of(good)]
    bad_figures, _ = server_figures(records[0], 0.0)
    assert bad_figures["error_rate"] == 1.0
    assert bad_figures["retried"] == 10
    assert bad_figures["rps"] == 10
    figures, _ = pool_figures(pool, records, 0.0)
    assert figures["rps"] == 20  # client requests, not attempts
    assert figures["errors"] == 0
    assert figures["error_rate"] == 0.0
    assert figures["retried"] == 10

    bad_summary = summary(bad.stats)
    assert bad_summary["error_rate_10s"] == 1.0
    assert bad_summary["redispatches"] == 10


def test_a_connect_failure_that_was_not_retried_counts_once() -> None:
    stats = ServerStats()
    stats.record(502, 3000, 0, 0, CONNECT)
    stats.rotate()
    data = summary(stats)
    assert data["errors"]["connect"] == 1
    assert data["errors_total"] == 1
    assert data["error_rate_10s"] == pytest.approx(1.0)
