"""Server: one upstream endpoint of a pool, with its connection pool, health and counters."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .health import CheckSpec
from .states import HealthPolicy, ServerHealth, State
from .stats import ServerStats

if TYPE_CHECKING:
    from .upstream import UpstreamPool

OutlierHandler = Callable[["Server", str], None]
DEFAULT_EJECT_STATUSES = frozenset({502, 503, 504})


class Server:
    """An upstream endpoint: address, weight, health state, in-flight and passive counters.

    The data plane touches only plain attributes here (`in_flight`, `passive_failures`),
    and calls `passive_failure` on an error; everything else belongs to the control plane.
    """

    __slots__ = (
        "check",
        "connections",
        "effective_weight",
        "eject_after",
        "eject_statuses",
        "health",
        "host",
        "id",
        "in_flight",
        "label",
        "latency_at",
        "latency_ewma",
        "max_in_flight",
        "on_outlier",
        "passive_failures",
        "pool_name",
        "port",
        "source",
        "stats",
        "watched",
        "weight",
    )

    def __init__(
        self,
        id: str,
        host: str,
        port: int,
        weight: int = 1,
        pool_name: str = "default",
        *,
        health: ServerHealth | None = None,
        check: CheckSpec | None = None,
        source: str = "config",
    ) -> None:
        self.id = id
        self.host = host
        self.port = port
        self.label = self.address.encode()  # for access log lines
        self.weight = weight
        self.effective_weight = float(weight)  # below `weight` while slow start ramps up
        self.latency_ewma = 0.0  # microseconds, kept by latency-aware selectors
        self.latency_at = 0.0
        self.pool_name = pool_name
        self.source = source
        # Without a control plane (unit tests, benchmarks) a server simply takes traffic.
        self.health = health or ServerHealth(HealthPolicy(), 0.0, State.HEALTHY, "no checks")
        self.check = check or CheckSpec()
        self.watched = False
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests (or tunnels) in flight at once
        self.passive_failures = 0
        self.eject_after = self.health.policy.eject_after
        self.eject_statuses = DEFAULT_EJECT_STATUSES
        self.on_outlier: OutlierHandler | None = None
        self.connections: UpstreamPool | None = None
        self.stats = ServerStats()

    @property
    def routable(self) -> bool:
        return self.health.state is State.HEALTHY

    @property
    def state(self) -> State:
        return self.health.state

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def passive_failure(self, what: str) -> None:
        """One failure seen on real traffic; after `eject_after` in a row, report it."""
        self.passive_failures += 1
        if self.passive_failures >= self.eject_after and self.on_outlier is not None:
            count = self.passive_failures
            self.passive_failures = 0
            self.on_outlier(self, f"{count} consecutive {what}")

    def __repr__(self) -> str:
        return (
            f"<Server {self.pool_name}/{self.id} {self.address} {self.health.state} "
            f"in_flight={self.in_flight}>"
        )
