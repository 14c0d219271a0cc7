"""Server: one upstream endpoint as the data plane sees it.

Address, weight, its state (set by the control plane; only `healthy` is routed), its
connection pool, its counters, and the figures selectors keep (in flight, latency). Health
checks, overrides and the reasons of its states live in the control plane's record of it
(bunancer.control.records.ServerRecord).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Final, Protocol

from .settings import UpstreamSettings
from .stats import ServerStats


class State(StrEnum):
    """A server's state; the control plane's state machine (control/states.py) moves it."""

    PENDING = "pending"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    DEAD = "dead"
    DRAINING = "draining"
    DISABLED = "disabled"


# Taken out by an admin: no new requests whatever the checks say (draining ones finish).
OUT_OF_ROTATION: Final = frozenset((State.DISABLED, State.DRAINING))


class Connections(Protocol):
    """A server's keep-alive connections (core/connections.py) as everything but the
    request path sees them; the exchange takes the concrete pool."""

    @property
    def active(self) -> int: ...

    @property
    def idle_count(self) -> int: ...

    def close(self) -> None: ...

    def close_idle(self) -> None: ...

    def reconfigure(self, settings: UpstreamSettings) -> None: ...


# A server seen failing on real traffic, with why ("5 consecutive 503"): the control plane's.
OutlierHandler = Callable[["Server", str], None]
DEFAULT_EJECT_STATUSES: Final = frozenset({502, 503, 504})


class Server:
    """An upstream endpoint: address, weight, state, connections and counters."""

    __slots__ = (
        "connections",
        "effective_weight",
        "eject_after",
        "eject_statuses",
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
        "state",
        "stats",
        "weight",
    )

    def __init__(
        self,
        id: str,
        host: str,
        port: int,
        weight: int = 1,
        pool_name: str = "default",
        state: State = State.HEALTHY,
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
        # Without a control plane (unit tests, benchmarks) a server simply takes traffic.
        self.state = state
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests (or tunnels) in flight at once
        self.passive_failures = 0
        self.eject_after = 5
        self.eject_statuses = DEFAULT_EJECT_STATUSES
        self.on_outlier: OutlierHandler | None = None
        self.connections: Connections | None = None
        self.stats = ServerStats()

    @property
    def routable(self) -> bool:
        return self.state is State.HEALTHY

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def answered(self, status: int) -> None:
        """Passive health: statuses configured as failures count, any other answer resets."""
        if status in self.eject_statuses:
            self.passive_failure(str(status))
        elif self.passive_failures:
            self.passive_failures = 0

    def passive_failure(self, what: str) -> None:
        """One failure seen on real traffic; after `eject_after` in a row, report it."""
        self.passive_failures += 1
        if self.passive_failures >= self.eject_after and self.on_outlier is not None:
            count = self.passive_failures
            self.passive_failures = 0
            self.on_outlier(self, f"{count} consecutive {what}")

    def __repr__(self) -> str:
        return (
            f"<Server {self.pool_name}/{self.id} {self.address} {self.state} "
            f"in_flight={self.in_flight}>"
        )
