"""Telemetry: the one-second tick, and the views of the statistics built on request.

Once a second `Telemetry.tick` closes the current window of every counter set, publishes a
`stats.tick` event carrying only the servers whose figures changed, and (when configured)
sends StatsD datagrams over UDP. `figures()` (the dashboard's live summary), `snapshot()`
(`/api/stats`) and `prometheus()` (`/metrics`) are built from the same counters, through
figures.py; none of this runs on the request path.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..core.stats import ServerStats, merge
from .decisions import DecisionLog
from .events import STATS_TICK, EventBus
from .exposition import WorkerFigures, p99_of_last_second, prometheus_text, statsd_packets
from .figures import STATES, Window, pool_figures, round_or_none, summary

if TYPE_CHECKING:
    from .records import ServerRecord
    from .registry import Registry

log = logging.getLogger("bunancer.telemetry")


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
        # The TLS listeners' certificates: labels and expiry (Unix time), for /metrics.
        self.certificates: Callable[[], list[tuple[dict[str, str], float]]] = list
        self.workers: WorkerFigures | None = None  # set by the app with --workers
        self.decisions = DecisionLog(registry)  # why this server: the recorded selections
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
        self.decisions.collect(self.registry.pools.values())
        for pool in self.registry.pools.values():
            pool.rejected.rotate()
            for server in pool.servers.values():
                server.stats.rotate()
        for stats in self.listener_stats:
            stats.rotate()

    def _publish_changes(self) -> None:
        changed: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for record in self.registry.all_records():
            server = record.server
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
                        "p99": round_or_none(p99_of_last_second(server.stats)),
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
        now = self.loop.time()
        for name, pool in self.registry.pools.items():
            records = self.registry.in_order(name)
            figures, window = pool_figures(pool, records, now, servers)
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

    def server_snapshot(self, record: ServerRecord) -> dict[str, Any]:
        server, health = record.server, record.health
        connections = server.connections
        data = summary(server.stats)
        data.update(
            {
                "id": server.id,
                "state": server.state.value,
                "reason": health.reason,
                "in_flight": server.in_flight,
                "max_in_flight": server.max_in_flight,
                "connections": {
                    "active": connections.active if connections else 0,
                    "idle": connections.idle_count if connections else 0,
                },
                "check_latency": health.last_check.latency if health.last_check else None,
                "ejections": health.ejections,
            }
        )
        return data

    def snapshot(self) -> dict[str, Any]:
        pools: dict[str, Any] = {}
        for name, pool in self.registry.pools.items():
            records = self.registry.in_order(name)
            total = merge([*(r.server.stats for r in records), pool.rejected])
            data = summary(total, client_view=True)
            data["in_flight"] = sum(r.server.in_flight for r in records)
            data["routable"] = len(pool.routable)
            data["rejected"] = pool.rejected.requests
            data["servers"] = {r.server.id: self.server_snapshot(r) for r in records}
            pools[name] = data
        rejected = merge(self.listener_stats)
        return {
            "at": time.time(),
            "uptime": time.time() - self.started_at,
            "listeners": self.listeners_view(),
            "pools": pools,
            "listener_rejected": rejected.requests,
        }

    # -- Prometheus and StatsD ----------------------------------------------------------------

    def prometheus(self) -> str:
        return prometheus_text(
            self.registry, self.listener_stats, self.workers, self.certificates()
        )

    def _send_statsd(self) -> None:
        assert self._statsd is not None
        assert self._statsd_address is not None
        for payload in statsd_packets(self.registry, self._statsd_prefix):
            try:
                self._statsd.sendto(payload.encode(), self._statsd_address)
            except OSError as error:  # UDP: a lost packet is fine, a log line per tick is not
                log.debug("statsd send failed: %s", error)
