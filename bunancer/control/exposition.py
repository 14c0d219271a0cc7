"""The figures for other programs: Prometheus text (`/metrics`) and StatsD datagrams.

Both are built from the same counters as every other view (the data plane's `ServerStats`
and the control plane's records), on request or once a second, never on the request path.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol

from ..core.server import State
from ..core.stats import BUCKETS, ERROR_NAMES, ServerStats, bucket_bounds, percentile
from .figures import CODE_CLASSES

if TYPE_CHECKING:
    from .records import ServerRecord
    from .registry import Registry

# Prometheus `le` edges: every power of two of microseconds from 128 us to 32 s. They are
# edges of the fine buckets too, so the cumulative counts are exact, not interpolated.
_PROM_EDGES = [index for index in range(BUCKETS) if index % 4 == 0 and 32 <= index <= 100]


class WorkerFigures(Protocol):
    """What `--workers` adds: the workers hold the upstream connections, and have figures
    of their own (control/workers.py)."""

    def connections(self, pool: str, server_id: str) -> tuple[int, int]: ...

    def metrics(self, out: Exposition) -> None: ...


def prometheus_text(
    registry: Registry,
    listener_stats: list[ServerStats],
    workers: WorkerFigures | None = None,
    certificates: list[tuple[dict[str, str], float]] | None = None,
) -> str:
    """Every pool's and server's counters, states and checks, and the process's figures."""
    out = Exposition()
    out.family("bunancer_requests_total", "counter", "Requests answered, by status class.")
    out.family("bunancer_errors_total", "counter", "Failed requests and attempts, by kind.")
    out.family("bunancer_request_duration_seconds", "histogram", "Time from request to last byte.")
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
    for pool in registry.pools.values():
        for record in registry.in_order(pool.name):
            _server_samples(out, record, workers)
        _counters(out, pool.rejected, {"pool": pool.name, "server": ""})
    for stats in listener_stats:
        _counters(out, stats, {"pool": "", "server": ""})
    if workers is not None:
        workers.metrics(out)
    if certificates:
        out.family(
            "bunancer_tls_certificate_expiry_timestamp_seconds",
            "gauge",
            "When a TLS listener's certificate expires (Unix time).",
        )
        for labels, not_after in certificates:
            out.sample("bunancer_tls_certificate_expiry_timestamp_seconds", labels, not_after)
    _process_metrics(out)
    return out.text()


def _server_samples(out: Exposition, record: ServerRecord, workers: WorkerFigures | None) -> None:
    server, health = record.server, record.health
    labels = {"pool": server.pool_name, "server": server.id}
    _counters(out, server.stats, labels)
    out.sample("bunancer_server_up", labels, int(server.routable))
    for state in State:
        out.sample(
            "bunancer_server_state", {**labels, "state": state.value}, int(server.state is state)
        )
    out.sample("bunancer_server_in_flight", labels, server.in_flight)
    out.sample("bunancer_server_max_in_flight", labels, server.max_in_flight)
    stats = server.stats
    out.sample("bunancer_retries_total", {**labels, "kind": "retry"}, stats.retries)
    out.sample("bunancer_retries_total", {**labels, "kind": "redispatch"}, stats.redispatches)
    out.sample("bunancer_health_checks_total", {**labels, "result": "pass"}, health.checks_passed)
    out.sample("bunancer_health_checks_total", {**labels, "result": "fail"}, health.checks_failed)
    connections = server.connections
    if workers is not None:  # the workers hold them
        active, idle = workers.connections(server.pool_name, server.id)
    elif connections is not None:
        active, idle = connections.active, connections.idle_count
    else:
        active = idle = 0
    out.sample("bunancer_upstream_connections", {**labels, "state": "active"}, active)
    out.sample("bunancer_upstream_connections", {**labels, "state": "idle"}, idle)
    out.sample("bunancer_ejections_total", labels, health.ejections_total)


def statsd_packets(registry: Registry, prefix: str) -> list[str]:
    """The last second of every server as StatsD lines, in datagrams of at most 1,400 bytes
    (under a typical 1,432-byte safe payload)."""
    lines: list[str] = []
    for record in registry.all_records():
        server = record.server
        stats = server.stats
        last = stats.seconds[-1] if stats.seconds else None
        name = f"{prefix}.{_metric_part(server.pool_name)}.{_metric_part(server.id)}"
        if last is not None and last.requests:
            lines.append(f"{name}.requests:{last.requests}|c")
            if last.errors:
                lines.append(f"{name}.errors:{last.errors}|c")
            p99 = p99_of_last_second(stats)
            if p99 is not None:
                lines.append(f"{name}.p99_ms:{p99 * 1000:.3f}|g")
        lines.append(f"{name}.in_flight:{server.in_flight}|g")
        lines.append(f"{name}.up:{int(server.routable)}|g")
    packets: list[str] = []
    packet: list[str] = []
    size = 0
    for line in lines:
        if size + len(line) + 1 > 1400 and packet:
            packets.append("\n".join(packet))
            packet, size = [], 0
        packet.append(line)
        size += len(line) + 1
    if packet:
        packets.append("\n".join(packet))
    return packets


def p99_of_last_second(stats: ServerStats) -> float | None:
    if not stats.seconds or not stats.seconds[-1].requests:
        return None
    return percentile(stats.seconds[-1].latency, 0.99)


def _metric_part(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _counters(out: Exposition, stats: ServerStats, labels: dict[str, str]) -> None:
    for name, count in zip(CODE_CLASSES, stats.by_class, strict=False):
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


def _process_metrics(out: Exposition) -> None:
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


class Exposition:
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
