"""Views of the live statistics: the one-second tick, JSON snapshots, Prometheus, StatsD.

Once a second `Telemetry.tick` closes the current window of every counter set, publishes a
`stats.tick` event carrying only the servers whose figures changed, and (when configured)
sends StatsD lines over UDP. Snapshots and the Prometheus text are built on request from
the same counters; none of this runs on the request path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .events import STATS_TICK, EventBus
from .registry import in_order
from .states import State
from .stats import BUCKETS, ERROR_NAMES, Second, ServerStats, bucket_bounds, merge, percentile

if TYPE_CHECKING:
    from .pool import ServerPool
    from .registry import Registry
    from .server import Server

log = logging.getLogger("bunancer.telemetry")

_CODE_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")
# Prometheus `le` edges: every power of two of microseconds from 128 us to 32 s. They are
# edges of the fine buckets too, so the cumulative counts are exact, not interpolated.
_PROM_EDGES = [index for index in range(BUCKETS) if index % 4 == 0 and 32 <= index <= 100]


def _round(value: float | None, digits: int = 6) -> float | None:
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
        "error_rate_10s": _round(last10.error_rate),
        "p50_10s": _round(last10.percentile(0.50)),
        "p90_10s": _round(last10.percentile(0.90)),
        "p99_10s": _round(last10.percentile(0.99)),
        "max_10s": _round(last10.max),
        "p50_60s": _round(last60.percentile(0.50)),
        "p99_60s": _round(last60.percentile(0.99)),
        "error_rate_60s": _round(last60.error_rate),
        "retries": stats.retries,
        "redispatches": stats.redispatches,
        "retried_10s": last10.retried,
        "errors": dict(zip(ERROR_NAMES, stats.errors, strict=True)),
        "codes": {
            name: count for name, count in zip(_CODE_CLASSES, stats.by_class, strict=False) if count
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


def server_figures(server: Server, now: float) -> tuple[dict[str, Any], Window]:
    """What a server's badge shows: state, the last second's requests and errors, and over
    10 s its error rate, p99 and retried answers; totals as HAProxy's stats page has them.
    `now` is the loop's time (states are timed on it)."""
    stats = server.stats
    window = Window(10).add(stats)
    last = server.stats.seconds[-1] if server.stats.seconds else None
    busy = last is not None and last.requests > 0
    rps, errors = window.last_second
    return {
        "state": server.state.value,
        "reason": server.health.reason,
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
        "downtime": round(server.health.down_for(now), 1),
    }, window


def pool_figures(
    pool: ServerPool, now: float, servers: dict[str, dict[str, Any]] | None = None
) -> tuple[dict[str, Any], Window]:
    """A pool's figures as its clients saw them (retried answers left out), and with
    `servers` each of its servers' figures too."""
    window = Window(10, client_view=True).add(pool.rejected)  # answered with no server
    for server in pool.servers.values():
        figures, server_window = server_figures(server, now)
        if servers is not None:
            servers[f"{pool.name}/{server.id}"] = figures
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


class Telemetry:
    def __init__(
        self,
        registry: Registry,
        bus: EventBus,
        loop: asyncio.AbstractEventLoop,
        *,
        listener_stats: Iterable[ServerStats] = (),
        statsd: tuple[str, int] | None = None,
        statsd_prefix: str = "bunancer",
    ) -> None:
        self.registry = registry
        self.bus = bus
        self.loop = loop
        self.listener_stats = list(listener_stats)
        # Set by the app: the listeners with their open connections and tunnels.
        self.listeners_view: Callable[[], list[dict[str, Any]]] = list
        self.started_at = time.time()
        self._handle: asyncio.TimerHandle | None = None
        self._last: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._statsd: socket.socket | None = None
        self._statsd_address = statsd
        self._statsd_prefix = statsd_prefix
        self._statsd_marks: dict[tuple[str, str], tuple[int, ...]] = {}
        if statsd is not None:
            self._statsd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._statsd.setblocking(False)

    # -- the tick -----------------------------------------------------------------------------

    def start(self) -> None:
        self._handle = self.loop.call_later(1.0, self.tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._statsd is not None:
            self._statsd.close()
            self._statsd = None

    def tick(self) -> None:
        # Re-arm against the loop clock so ticks do not drift with the work done here.
        self._handle = self.loop.call_later(1.0, self.tick)
        try:
            self._rotate_all()
            self._publish_changes()
            if self._statsd is not None:
                self._send_statsd()
        except Exception:
            log.exception("stats tick failed")

    def _rotate_all(self) -> None:
        for pool in self.registry.pools.values():
            pool.rejected.rotate()
            for server in pool.servers.values():
                server.stats.rotate()
        for stats in self.listener_stats:
            stats.rotate()

    def _publish_changes(self) -> None:
        changed: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for server in self.registry.all_servers():
            key = (server.pool_name, server.id)
            seen.add(key)
            last = server.stats.seconds[-1] if server.stats.seconds else None
            figures = (
                last.requests if last else 0,
                last.errors if last else 0,
                server.in_flight,
                server.state.value,
            )
            if self._last.get(key) != figures:
                self._last[key] = figures
                changed.append(
                    {
                        "pool": server.pool_name,
                        "id": server.id,
                        "rps": figures[0],
                        "errors": figures[1],
                        "in_flight": figures[2],
                        "state": figures[3],
                        "p99": _round(
                            _p99_of_last_second(server.stats),
                        ),
                    }
                )
        for key in set(self._last) - seen:
            del self._last[key]
        if changed:
            self.bus.publish(STATS_TICK, {"servers": changed})

    # -- snapshots -----------------------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        """Every figure the dashboard shows, for all pools and servers, and the counts of
        servers by state: the payload of its live updates."""
        counts = dict.fromkeys(STATES, 0)
        servers: dict[str, dict[str, Any]] = {}
        pools: dict[str, dict[str, Any]] = {}
        total = Window(10, client_view=True)
        for stats in self.listener_stats:  # refused before routing (bad requests)
            total.add(stats)
        for name, pool in self.registry.pools.items():
            figures, window = pool_figures(pool, self.loop.time(), servers)
            pools[name] = figures
            total.add_window(window)
        for figures in servers.values():
            counts[figures["state"]] += 1
        rps, errors = total.last_second
        return {
            "at": time.time(),
            "counts": counts,
            "total": len(servers),
            "traffic": {
                "rps": rps,
                "errors": errors,
                "error_rate": total.error_rate,
                "p99": total.percentile(0.99),
            },
            "pools": pools,
            "servers": servers,
        }

    def server_snapshot(self, server: Server) -> dict[str, Any]:
        connections = server.connections
        data = summary(server.stats)
        data.update(
            {
                "id": server.id,
                "state": server.state.value,
                "reason": server.health.reason,
                "in_flight": server.in_flight,
                "max_in_flight": server.max_in_flight,
                "connections": {
                    "active": connections.active if connections else 0,
                    "idle": len(connections.idle) if connections else 0,
                },
                "check_latency": (
                    server.health.last_check.latency if server.health.last_check else None
                ),
                "ejections": server.health.ejections,
            }
        )
        return data

    def snapshot(self) -> dict[str, Any]:
        pools: dict[str, Any] = {}
        for name, pool in self.registry.pools.items():
            servers = in_order(pool)
            total = merge([*(s.stats for s in servers), pool.rejected])
            data = summary(total, client_view=True)
            data["in_flight"] = sum(s.in_flight for s in servers)
            data["routable"] = len(pool.routable)
            data["rejected"] = pool.rejected.requests
            data["servers"] = {s.id: self.server_snapshot(s) for s in servers}
            pools[name] = data
        rejected = merge(self.listener_stats)
        return {
            "at": time.time(),
            "uptime": time.time() - self.started_at,
            "listeners": self.listeners_view(),
            "pools": pools,
            "listener_rejected": rejected.requests,
        }

    # -- Prometheus -----------------------------------------------------------------------------

    def prometheus(self) -> str:
        out = _Exposition()
        out.family("bunancer_requests_total", "counter", "Requests answered, by status class.")
        out.family("bunancer_errors_total", "counter", "Failed requests and attempts, by kind.")
        out.family(
            "bunancer_request_duration_seconds", "histogram", "Time from request to last byte."
        )
        out.family("bunancer_server_up", "gauge", "1 when the server takes traffic.")
        out.family("bunancer_server_state", "gauge", "The server's state (one of them is 1).")
        out.family("bunancer_server_in_flight", "gauge", "Requests in flight to the server.")
        out.family("bunancer_server_max_in_flight", "gauge", "The most requests in flight at once.")
        out.family(
            "bunancer_retries_total",
            "counter",
            "Failed attempts tried again: on the same server (retry) or another (redispatch).",
        )
        out.family("bunancer_health_checks_total", "counter", "Active health checks, by result.")
        out.family("bunancer_upstream_connections", "gauge", "Upstream connections, by state.")
        out.family("bunancer_ejections_total", "counter", "Passive ejections of the server.")
        out.family("bunancer_bytes_total", "counter", "Bytes, in (from clients) and out.")
        for pool in self.registry.pools.values():
            for server in pool.servers.values():
                labels = {"pool": pool.name, "server": server.id}
                _counters(out, server.stats, labels)
                health = server.health
                out.sample("bunancer_server_up", labels, int(server.routable))
                for state in State:
                    out.sample(
                        "bunancer_server_state",
                        {**labels, "state": state.value},
                        int(server.state is state),
                    )
                out.sample("bunancer_server_in_flight", labels, server.in_flight)
                out.sample("bunancer_server_max_in_flight", labels, server.max_in_flight)
                stats = server.stats
                out.sample("bunancer_retries_total", {**labels, "kind": "retry"}, stats.retries)
                out.sample(
                    "bunancer_retries_total", {**labels, "kind": "redispatch"}, stats.redispatches
                )
                out.sample(
                    "bunancer_health_checks_total",
                    {**labels, "result": "pass"},
                    health.checks_passed,
                )
                out.sample(
                    "bunancer_health_checks_total",
                    {**labels, "result": "fail"},
                    health.checks_failed,
                )
                connections = server.connections
                out.sample(
                    "bunancer_upstream_connections",
                    {**labels, "state": "active"},
                    connections.active if connections else 0,
                )
                out.sample(
                    "bunancer_upstream_connections",
                    {**labels, "state": "idle"},
                    len(connections.idle) if connections else 0,
                )
                out.sample("bunancer_ejections_total", labels, health.ejections_total)
            _counters(out, pool.rejected, {"pool": pool.name, "server": ""})
        for stats in self.listener_stats:
            _counters(out, stats, {"pool": "", "server": ""})
        _process_metrics(out)
        return out.text()

    # -- StatsD ----------------------------------------------------------------------------------

    def _send_statsd(self) -> None:
        assert self._statsd is not None
        assert self._statsd_address is not None
        lines: list[str] = []
        prefix = self._statsd_prefix
        for server in self.registry.all_servers():
            stats = server.stats
            last = stats.seconds[-1] if stats.seconds else None
            name = f"{prefix}.{_metric_part(server.pool_name)}.{_metric_part(server.id)}"
            if last is not None and last.requests:
                lines.append(f"{name}.requests:{last.requests}|c")
                if last.errors:
                    lines.append(f"{name}.errors:{last.errors}|c")
                p99 = _p99_of_last_second(stats)
                if p99 is not None:
                    lines.append(f"{name}.p99_ms:{p99 * 1000:.3f}|g")
            lines.append(f"{name}.in_flight:{server.in_flight}|g")
            lines.append(f"{name}.up:{int(server.routable)}|g")
        # One datagram per few lines, well under a typical 1432-byte safe payload.
        packet: list[str] = []
        size = 0
        for line in lines:
            if size + len(line) + 1 > 1400 and packet:
                self._send_packet("\n".join(packet))
                packet, size = [], 0
            packet.append(line)
            size += len(line) + 1
        if packet:
            self._send_packet("\n".join(packet))

    def _send_packet(self, payload: str) -> None:
        assert self._statsd is not None
        assert self._statsd_address is not None
        try:
            self._statsd.sendto(payload.encode(), self._statsd_address)
        except OSError as error:  # UDP: a lost packet is fine, a log line per tick is not
            log.debug("statsd send failed: %s", error)


def _p99_of_last_second(stats: ServerStats) -> float | None:
    if not stats.seconds or not stats.seconds[-1].requests:
        return None
    return percentile(stats.seconds[-1].latency, 0.99)


def _metric_part(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _counters(out: _Exposition, stats: ServerStats, labels: dict[str, str]) -> None:
    for name, count in zip(_CODE_CLASSES, stats.by_class, strict=False):
        if count:
            out.sample("bunancer_requests_total", {**labels, "code_class": name}, count)
    for name, count in zip(ERROR_NAMES, stats.errors, strict=True):
        if count:
            out.sample("bunancer_errors_total", {**labels, "kind": name}, count)
    out.sample("bunancer_bytes_total", {**labels, "direction": "in"}, stats.bytes_in)
    out.sample("bunancer_bytes_total", {**labels, "direction": "out"}, stats.bytes_out)
    cumulative = 0
    # The lifetime histogram takes in the current second at rotation: add it here.
    latency = [
        done + current for done, current in zip(stats.latency, stats.cur_latency, strict=True)
    ]
    start = 0
    for edge in _PROM_EDGES:
        cumulative += sum(latency[start:edge])
        start = edge
        le = bucket_bounds(edge)[0] / 1e6
        out.sample(
            "bunancer_request_duration_seconds_bucket", {**labels, "le": f"{le:g}"}, cumulative
        )
    total = sum(latency)
    out.sample("bunancer_request_duration_seconds_bucket", {**labels, "le": "+Inf"}, total)
    out.sample("bunancer_request_duration_seconds_count", labels, total)
    # The sum is estimated from bucket midpoints (the exact sum would cost a float add per
    # request on the hot path).
    estimate = sum(
        count * sum(bucket_bounds(index)) / 2e6 for index, count in enumerate(latency) if count
    )
    out.sample("bunancer_request_duration_seconds_sum", labels, round(estimate, 6))


def _process_metrics(out: _Exposition) -> None:
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        with open("/proc/stat") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime"))
        start = boot + int(fields[19]) / ticks
        rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        fds = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError, IndexError, StopIteration):
        return  # not Linux: no process metrics
    out.family("process_cpu_seconds_total", "counter", "User and system CPU time.")
    out.sample("process_cpu_seconds_total", {}, round(cpu, 3))
    out.family("process_resident_memory_bytes", "gauge", "Resident memory.")
    out.sample("process_resident_memory_bytes", {}, rss)
    out.family("process_open_fds", "gauge", "Open file descriptors.")
    out.sample("process_open_fds", {}, fds)
    out.family("process_start_time_seconds", "gauge", "Start time since the Unix epoch.")
    out.sample("process_start_time_seconds", {}, round(start, 2))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Exposition:
    """Prometheus text format 0.0.4: HELP and TYPE once per family, then its samples."""

    def __init__(self) -> None:
        self._families: dict[str, list[str]] = {}
        self._order: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self._families[name] = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        self._order.append(name)

    def sample(self, name: str, labels: dict[str, str], value: float) -> None:
        family = name
        for suffix in ("_bucket", "_count", "_sum"):
            if name.endswith(suffix) and name[: -len(suffix)] in self._families:
                family = name[: -len(suffix)]
        label_text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
        self._families[family].append(
            f"{name}{{{label_text}}} {value}" if labels else f"{name} {value}"
        )

    def text(self) -> str:
        return "\n".join(line for name in self._order for line in self._families[name]) + "\n"
