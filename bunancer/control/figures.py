"""Figures read from the data plane's counters: windows over the last seconds, rates, error
rates (one definition), percentiles, summaries. The one source of every figure shown:
`/api/stats`, `/metrics`, the CLI and the dashboard. Sans-I/O: counters in, numbers out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.stats import BUCKETS, ERROR_NAMES, Second, ServerStats, percentile

if TYPE_CHECKING:
    from ..core.pool import ServerPool
    from .records import ServerRecord

CODE_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")


def round_or_none(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def error_rate(errors: int, requests: int) -> float | None:
    """The one definition of an error rate, everywhere it is shown: errors over requests;
    None (shown as "-") when there were no requests."""
    return errors / requests if requests else None


class Window:
    """Figures summed over the last `seconds` closed seconds of one or more counter sets.

    A server's window counts every answer it gave; with `client_view` (a pool, the whole
    balancer) the answers that were retried elsewhere are left out again, since clients
    never saw them: each retried answer was counted once as a request and once as an error.
    """

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "client_view",
        "errors",
        "histogram",
        "last_errors",
        "last_requests",
        "last_retried",
        "max_us",
        "requests",
        "retried",
        "seconds",
    )

    def __init__(self, seconds: int, *, client_view: bool = False) -> None:
        self.seconds = seconds
        self.client_view = client_view
        self.requests = self.errors = self.retried = 0
        self.last_requests = self.last_errors = self.last_retried = 0
        self.bytes_in = self.bytes_out = self.max_us = 0
        self.histogram = [0] * BUCKETS

    def add(self, stats: ServerStats) -> Window:
        if stats.seconds:
            self._add_last(stats.seconds[-1])
        histogram = self.histogram
        for second in stats.last(self.seconds):
            self.requests += second.requests
            self.errors += second.errors
            self.retried += second.retried
            self.bytes_in += second.bytes_in
            self.bytes_out += second.bytes_out
            self.max_us = max(self.max_us, second.max_us)
            if second.requests:  # idle seconds share one empty histogram: skip it
                for index, count in enumerate(second.latency):
                    if count:
                        histogram[index] += count
        return self

    def _add_last(self, last: Second) -> None:
        self.last_requests += last.requests
        self.last_errors += last.errors
        self.last_retried += last.retried

    def add_window(self, other: Window) -> Window:
        self.requests += other.requests
        self.errors += other.errors
        self.retried += other.retried
        self.last_requests += other.last_requests
        self.last_errors += other.last_errors
        self.last_retried += other.last_retried
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.max_us = max(self.max_us, other.max_us)
        for index, count in enumerate(other.histogram):
            if count:
                self.histogram[index] += count
        return self

    # -- what it says ------------------------------------------------------------------------

    @property
    def answered(self) -> int:
        return self.requests - self.retried if self.client_view else self.requests

    @property
    def failed(self) -> int:
        return self.errors - self.retried if self.client_view else self.errors

    @property
    def last_second(self) -> tuple[int, int]:
        """Requests and errors of the newest closed second."""
        if self.client_view:
            return (
                self.last_requests - self.last_retried,
                self.last_errors - self.last_retried,
            )
        return self.last_requests, self.last_errors

    @property
    def rps(self) -> float:
        return self.answered / self.seconds

    @property
    def error_rate(self) -> float | None:
        return error_rate(self.failed, self.answered)

    def percentile(self, q: float) -> float | None:
        return percentile(self.histogram, q) if self.answered else None

    @property
    def max(self) -> float | None:
        return self.max_us / 1e6 if self.answered else None


def summary(stats: ServerStats, *, client_view: bool = False) -> dict[str, Any]:
    """The JSON figures of one counter set (`/api/stats`, `bunancer status` and `top`)."""
    last10 = Window(10, client_view=client_view).add(stats)
    last60 = Window(60, client_view=client_view).add(stats)
    requests = stats.requests - (stats.retried if client_view else 0)
    return {
        "requests": requests,
        "errors_total": sum(stats.errors) - (stats.retried if client_view else 0),
        "rps": last10.last_second[0],
        "rps_10s": last10.rps,
        "requests_10s": last10.answered,
        "errors_10s": last10.failed,
        "error_rate_10s": round_or_none(last10.error_rate),
        "p50_10s": round_or_none(last10.percentile(0.50)),
        "p90_10s": round_or_none(last10.percentile(0.90)),
        "p99_10s": round_or_none(last10.percentile(0.99)),
        "max_10s": round_or_none(last10.max),
        "p50_60s": round_or_none(last60.percentile(0.50)),
        "p99_60s": round_or_none(last60.percentile(0.99)),
        "error_rate_60s": round_or_none(last60.error_rate),
        "retries": stats.retries,
        "redispatches": stats.redispatches,
        "retried_10s": last10.retried,
        "errors": dict(zip(ERROR_NAMES, stats.errors, strict=True)),
        "codes": {
            name: count for name, count in zip(CODE_CLASSES, stats.by_class, strict=False) if count
        },
        "bytes_in": stats.bytes_in,
        "bytes_out": stats.bytes_out,
        "history": _history(stats, client_view),
    }


def _history(stats: ServerStats, client_view: bool) -> list[int]:
    """Requests per second over the last minute, oldest first (zeros before the first)."""
    window = stats.last(60)
    pad = [0] * (60 - len(window))
    return pad + [s.requests - (s.retried if client_view else 0) for s in window]


# The order states are shown in (the dashboard's tiles and tables).
STATES = ("healthy", "pending", "unhealthy", "dead", "draining", "disabled")


def server_figures(record: ServerRecord, now: float) -> tuple[dict[str, Any], Window]:
    """What a server's badge shows: state, the last second's requests and errors, and over
    10 s its error rate, p99 and retried answers; totals as HAProxy's stats page has them.
    `now` is the loop's time (states are timed on it)."""
    server = record.server
    stats = server.stats
    window = Window(10).add(stats)
    last = server.stats.seconds[-1] if server.stats.seconds else None
    busy = last is not None and last.requests > 0
    rps, errors = window.last_second
    return {
        "state": server.state.value,
        "reason": record.health.reason,
        "rps": rps,
        "errors": errors,
        "error_rate": window.error_rate,
        "p99": window.percentile(0.99),
        "retried": window.retried,
        "p50_1s": percentile(last.latency, 0.5) if busy and last else None,
        "p99_1s": percentile(last.latency, 0.99) if busy and last else None,
        "in_flight": server.in_flight,
        "max_in_flight": server.max_in_flight,
        "weight": server.weight,
        "requests_total": stats.requests,
        "errors_total": sum(stats.errors),
        "retries": stats.retries,
        "redispatches": stats.redispatches,
        "downtime": round(record.health.down_for(now), 1),
    }, window


def pool_figures(
    pool: ServerPool,
    records: list[ServerRecord],
    now: float,
    servers: dict[str, dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], Window]:
    """A pool's figures as its clients saw them (retried answers left out), and with
    `servers` each of its servers' figures (`records`: the pool's servers) too."""
    window = Window(10, client_view=True).add(pool.rejected)  # answered with no server
    for record in records:
        figures, server_window = server_figures(record, now)
        if servers is not None:
            servers[f"{pool.name}/{record.server.id}"] = figures
        window.add_window(server_window)
    rps, errors = window.last_second
    return {
        "rps": rps,
        "errors": errors,
        "error_rate": window.error_rate,
        "p99": window.percentile(0.99),
        "retried": window.retried,
        "algorithm": pool.selector.name,
        "routable": len(pool.routable),
        "servers": len(pool.servers),
        "panic": pool.panic,
    }, window
