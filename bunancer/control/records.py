"""What the control plane keeps about pools and servers, beside the data plane's objects.

`ServerRecord`: one server's state machine, what it is checked with, its own overrides of
the pool's check settings, where it came from, and its slow-start ramp; it holds the data
plane's `Server`, whose `state` it keeps in step. `PoolSettings`: a pool's validated
settings (pydantic, from the config or the API) and what the data plane is given of them.
Views turn both into the JSON the API, events and the dashboard show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..config import (
    DEFAULT_ALGORITHM,
    BalancingConfig,
    HealthConfig,
    OutlierConfig,
    PoolConfig,
    UpstreamTlsConfig,
    parse_expect,
)
from ..core.pool import ServerPool
from ..core.server import Server, State
from ..core.settings import BalancingSettings
from ..core.tls import client_context
from .health import CheckSpec
from .states import CheckResult, HealthPolicy, ServerHealth


class RegistryError(Exception):
    """A change the registry refuses; `status` is the HTTP status that says why."""

    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(RegistryError):
    status = 404


class Conflict(RegistryError):
    status = 409


@dataclass(frozen=True, slots=True)
class PoolSettings:
    algorithm: str = DEFAULT_ALGORITHM
    health: HealthConfig = field(default_factory=HealthConfig)
    outlier: OutlierConfig = field(default_factory=OutlierConfig)
    source: str = "config"
    balancing: BalancingConfig = field(default_factory=BalancingConfig)
    tls: UpstreamTlsConfig | None = None  # TLS to the servers (the config file's pools)

    @classmethod
    def from_config(cls, config: PoolConfig, source: str = "config") -> PoolSettings:
        return cls(config.algorithm, config.health, config.outlier, source, config.balancing,
                   config.upstream_tls)  # fmt: skip

    def for_data_plane(self) -> BalancingSettings:
        """What the request path reads: plain values, no pydantic."""
        b = self.balancing
        return BalancingSettings(
            algorithm=self.algorithm,
            hash_key=b.hash_key,
            sticky_cookie=b.sticky_cookie,
            sticky_fallback=b.sticky_fallback,
            retries=b.retries,
            retry_on=frozenset(b.retry_on),
            retry_timeouts=b.retry_timeouts,
            retry_budget=b.retry_budget,
            retry_body_max=b.retry_body_max,
            max_pending=b.max_pending,
            panic_threshold=b.panic_threshold,
            decision_sample=b.decision_sample,
        )


def health_policy(health: HealthConfig, outlier: OutlierConfig) -> HealthPolicy:
    return HealthPolicy(
        rise=health.rise,
        fall=health.fall,
        dead_after=health.dead_after,
        interval=health.interval,
        fast_interval=health.fast_interval,
        down_interval=health.down_interval,
        backoff=health.backoff,
        max_down_interval=health.max_down_interval,
        dead_interval=health.dead_interval,
        jitter=health.jitter,
        eject_after=outlier.consecutive_failures,
        eject_base=outlier.base_ejection_time,
        eject_max=outlier.max_ejection_time,
    )


def check_spec(health: HealthConfig, tls: UpstreamTlsConfig | None = None) -> CheckSpec:
    return CheckSpec(
        enabled=health.enabled,
        kind=health.type,
        method=health.method,
        path=health.path,
        expect=parse_expect(health.expect),
        timeout=health.timeout,
        tls=client_context(tls.verify, tls.ca_file) if tls is not None else None,
        server_name=tls.server_name if tls is not None else None,
    )


class ServerRecord:
    """The control plane's knowledge of one server (the data plane's `Server` inside)."""

    __slots__ = ("check", "health", "overrides", "ramp_since", "removing", "server", "source")

    def __init__(
        self, server: Server, health: ServerHealth, source: str, overrides: dict[str, Any]
    ) -> None:
        self.server = server
        self.health = health
        self.check = CheckSpec()
        self.source = source  # "config" or "api"
        self.overrides = overrides  # health settings of its own over the pool's
        self.removing = False  # deregistered: draining until it is removed
        self.ramp_since: float | None = None  # slow start under way since then

    @property
    def state(self) -> State:
        return self.health.state

    @property
    def key(self) -> tuple[str, str]:
        return (self.server.pool_name, self.server.id)

    def apply_settings(self, settings: PoolSettings) -> None:
        """The pool's check and ejection settings, with this server's overrides."""
        health = settings.health.merged(self.overrides) if self.overrides else settings.health
        self.check = check_spec(health, settings.tls)
        self.health.policy = health_policy(health, settings.outlier)
        outlier = settings.outlier
        self.server.eject_after = outlier.consecutive_failures
        self.server.eject_statuses = frozenset(outlier.statuses) if outlier.enabled else frozenset()

    def __repr__(self) -> str:
        return f"<ServerRecord {self.server!r} {self.health!r}>"


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key putting s2 before s10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def server_view(record: ServerRecord, loop_now: float, wall_now: float) -> dict[str, Any]:
    """A server as the API, events and the dashboard show it. States and checks are timed
    on the loop's monotonic clock; what is shown is wall time (seconds since the epoch)."""
    server, health = record.server, record.health

    def wall(at: float) -> float:
        return round(wall_now - (loop_now - at), 3)

    def check(c: CheckResult) -> dict[str, Any]:
        return {"at": wall(c.at), "ok": c.ok, "detail": c.detail, "latency": c.latency}

    last = health.last_check
    return {
        "id": server.id,
        "pool": server.pool_name,
        "host": server.host,
        "port": server.port,
        "address": server.address,
        "weight": server.weight,
        "effective_weight": round(server.effective_weight, 2),
        "state": health.state.value,
        "reason": health.reason,
        "since": wall(health.since),
        "for": round(loop_now - health.since, 3),  # seconds in this state
        "downtime": round(health.down_for(loop_now), 3),
        "source": record.source,
        "in_flight": server.in_flight,
        "max_in_flight": server.max_in_flight,
        "ejections": health.ejections_total,
        "ejections_recent": health.ejections,  # what the next ejection's length grows with
        "last_check": None if last is None else check(last),
        "checks": [check(c) for c in health.history],
    }


def pool_view(pool: ServerPool, settings: PoolSettings) -> dict[str, Any]:
    counts = {state.value: 0 for state in State}
    for server in pool.servers.values():
        counts[server.state.value] += 1
    return {
        "name": pool.name,
        "algorithm": pool.selector.name,
        "source": settings.source,
        "health": settings.health.model_dump(),
        "outlier": settings.outlier.model_dump(),
        "balancing": settings.balancing.model_dump(),
        "panic": pool.panic,
        "servers": len(pool.servers),
        "routable": len(pool.routable),
        "states": counts,
    }
