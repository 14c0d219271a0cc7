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
from .states import State
from .stats import BUCKETS, ERROR_NAMES, ServerStats, bucket_bounds, merge, percentile

if TYPE_CHECKING:
    from .registry import Registry
    from .server import Server

log = logging.getLogger("bunancer.telemetry")

_CODE_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")
# Prometheus `le` edges: every power of two of microseconds from 128 us to 32 s. They are
# edges of the fine buckets too, so the cumulative counts are exact, not interpolated.
_PROM_EDGES = [index for index in range(BUCKETS) if index % 4 == 0 and 32 <= index <= 100]


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def summary(stats: ServerStats) -> dict[str, Any]:
    last10 = stats.window_summary(10)
    last60 = stats.window_summary(60)
    return {
        "requests": stats.requests,
        "rps": stats.rate(1),
        "rps_10s": last10["rps"],
        "error_rate_10s": _round(last10["error_rate"]),  # type: ignore[arg-type]
        "p50_10s": _round(last10["p50"]),  # type: ignore[arg-type]
        "p90_10s": _round(last10["p90"]),  # type: ignore[arg-type]
        "p99_10s": _round(last10["p99"]),  # type: ignore[arg-type]
        "max_10s": _round(last10["max"]),  # type: ignore[arg-type]
        "p50_60s": _round(last60["p50"]),  # type: ignore[arg-type]
        "p99_60s": _round(last60["p99"]),  # type: ignore[arg-type]
        "error_rate_60s": _round(last60["error_rate"]),  # type: ignore[arg-type]
        "errors": dict(zip(ERROR_NAMES, stats.errors, strict=True)),
        "codes": {
            name: count for name, count in zip(_CODE_CLASSES, stats.by_class, strict=False) if count
        },
        "bytes_in": stats.bytes_in,
        "bytes_out": stats.bytes_out,
        "history": stats.history(60),
    }


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

    def server_snapshot(self, server: Server) -> dict[str, Any]:
        connections = server.connections
        data = summary(server.stats)
        data.update(
            {
                "id": server.id,
                "state": server.state.value,
                "reason": server.health.reason,
                "in_flight": server.in_flight,
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
            servers = list(pool.servers.values())
            total = merge([*(s.stats for s in servers), pool.rejected])
            data = summary(total)
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
