"""Registry: the pools and their servers, and the one place that changes them.

It builds pools from the config and overlays the saved state, registers and removes
servers (API, CLI, stubs), applies admin changes (weight, enable, disable, drain), feeds
active check results and passive ejections to each server's state machine, rebuilds a
pool's routable snapshot on every change, publishes events and saves the state.

Config and saved state (documented in the README): the config file is the base; the
state overlays it. Pools and servers from the file always exist at start, with weight and
admin state (disabled, draining) changed through the API kept across restarts; pools
created and servers registered through the API are restored from the state. Every server
starts `pending` after a restart and is checked at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..config import (
    DEFAULT_ALGORITHM,
    BalancingConfig,
    HealthConfig,
    OutlierConfig,
    PoolConfig,
)
from .events import (
    POOL_ADDED,
    POOL_REMOVED,
    POOL_UPDATED,
    SERVER_ADDED,
    SERVER_CHECKED,
    SERVER_REMOVED,
    SERVER_STATE,
    SERVER_UPDATED,
    EventBus,
)
from .health import CheckSpec, HealthChecker, parse_expect
from .pool import ServerPool
from .server import Server
from .states import CheckResult, Event, HealthPolicy, ServerHealth, State, Transition
from .upstream import UpstreamPool, UpstreamSettings

log = logging.getLogger("bunancer.registry")


class RegistryError(Exception):
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

    @classmethod
    def from_config(cls, config: PoolConfig, source: str = "config") -> PoolSettings:
        return cls(config.algorithm, config.health, config.outlier, source, config.balancing)


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


def check_spec(health: HealthConfig) -> CheckSpec:
    return CheckSpec(
        enabled=health.enabled,
        kind=health.type,
        method=health.method,
        path=health.path,
        expect=parse_expect(health.expect),
        timeout=health.timeout,
    )


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key putting s2 before s10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def in_order(pool: ServerPool) -> list[Server]:
    """A pool's servers as the API, the CLI and the dashboard list them: by id, s2 before
    s10 (registration order depends on which backend came up first)."""
    return sorted(pool.servers.values(), key=lambda server: natural_key(server.id))


def _at_address(pool: ServerPool, host: str, port: int) -> Server | None:
    """The pool's server at host:port (register keeps addresses unique in a pool)."""
    for server in pool.servers.values():
        if (server.host, server.port) == (host, port):
            return server
    return None


def server_view(server: Server, loop_now: float, wall_now: float) -> dict[str, Any]:
    """A server as the API, events and the dashboard show it. States and checks are timed
    on the loop's monotonic clock; what is shown is wall time (seconds since the epoch)."""
    health = server.health

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
        "source": server.source,
        "in_flight": server.in_flight,
        "max_in_flight": server.max_in_flight,
        "ejections": health.ejections_total,
        "ejections_recent": health.ejections,  # what the next ejection's length grows with
        "last_check": None if last is None else check(last),
        "checks": [check(c) for c in health.history],
    }


class Registry:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        upstream: UpstreamSettings,
        bus: EventBus,
        *,
        drain_timeout: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self.loop = loop
        self.upstream = upstream
        self.bus = bus
        self.drain_timeout = drain_timeout
        self.pools: dict[str, ServerPool] = {}
        self.settings: dict[str, PoolSettings] = {}
        self.overrides: dict[Server, dict[str, Any]] = {}
        self.protected: set[str] = set()  # pools a listener or route points at
        self.removing: set[Server] = set()  # deregistered, draining until removed
        self.checker = HealthChecker(loop, self._on_check, rng)
        self.on_change: Callable[[], None] | None = None  # persistence hook (app)
        self._ramping: dict[Server, float] = {}
        self._ramp_handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lookups -------------------------------------------------------------------------------

    def pool(self, name: str) -> ServerPool:
        try:
            return self.pools[name]
        except KeyError:
            raise NotFound(f"no pool {name!r}") from None

    def server(self, pool_name: str, server_id: str) -> Server:
        pool = self.pool(pool_name)
        try:
            return pool.servers[server_id]
        except KeyError:
            raise NotFound(f"no server {server_id!r} in pool {pool_name!r}") from None

    def server_view(self, server: Server) -> dict[str, Any]:
        return server_view(server, self.loop.time(), time.time())

    def all_servers(self) -> Iterator[Server]:
        for pool in self.pools.values():
            yield from pool.servers.values()

    # -- pools -----------------------------------------------------------------------------------

    def add_pool(self, name: str, settings: PoolSettings) -> ServerPool:
        if name in self.pools:
            raise Conflict(f"pool {name!r} exists", "name")
        pool = ServerPool(name, settings.algorithm, settings.balancing)
        self.pools[name] = pool
        self.settings[name] = settings
        self.bus.publish(POOL_ADDED, self.pool_view(pool))
        self._changed()
        return pool

    def update_pool(self, name: str, settings: PoolSettings) -> ServerPool:
        pool = self.pool(name)
        old = self.settings[name]
        self.settings[name] = settings
        if settings.algorithm != old.algorithm or settings.balancing != old.balancing:
            # Live: the next request uses the new selector; requests in flight finish.
            pool.configure(settings.algorithm, settings.balancing)
            for server in pool.servers.values():
                if server.connections is not None:
                    server.connections.settings = self._upstream_for(settings)
        if settings.health != old.health or settings.outlier != old.outlier:
            for server in pool.servers.values():
                self._apply_health_settings(server, settings, self.overrides.get(server, {}))
        self.bus.publish(POOL_UPDATED, self.pool_view(pool))
        self._changed()
        return pool

    async def remove_pool(self, name: str) -> None:
        pool = self.pool(name)
        if name in self.protected:
            raise Conflict(f"pool {name!r} is used by a listener or route and cannot be removed")
        await asyncio.gather(*(self.deregister(name, sid) for sid in list(pool.servers)))
        self.pools.pop(name, None)
        self.settings.pop(name, None)
        self.bus.publish(POOL_REMOVED, {"name": name})
        self._changed()

    def pool_view(self, pool: ServerPool) -> dict[str, Any]:
        settings = self.settings.get(pool.name, PoolSettings())
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

    # -- servers ---------------------------------------------------------------------------------

    def registered_again(
        self, pool_name: str, host: str, port: int, server_id: str | None = None
    ) -> Server | None:
        """The server already registered under this id (when given) and address, or None.

        A backend that restarts registers again; that is not a conflict but news: it may be
        up again, so a server that is down is checked at once instead of at its backoff or
        dead interval (a dead server would otherwise wait up to `dead_interval`)."""
        server = _at_address(self.pool(pool_name), host, port)
        if server is None or server_id not in (None, server.id):
            return None
        if server in self.removing:  # it goes once drained: the caller retries
            raise Conflict(f"server {server.id!r} is being removed", "id")
        if server.state in (State.UNHEALTHY, State.DEAD, State.PENDING):
            self.recheck(server)
        return server

    def recheck(self, server: Server) -> None:
        """Check `server` at once rather than on its schedule: its backend just changed."""
        self.checker.check_now(server)

    def register(
        self,
        pool_name: str,
        host: str,
        port: int,
        *,
        weight: int = 1,
        server_id: str | None = None,
        health: dict[str, Any] | None = None,
        source: str = "api",
        admin: str = "enabled",
    ) -> Server:
        """Add a server (pending; its first check runs at once)."""
        pool = self.pool(pool_name)
        server_id = server_id or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        if server_id in pool.servers:
            raise Conflict(f"server {server_id!r} is already in pool {pool_name!r}", "id")
        other = _at_address(pool, host, port)
        if other is not None:
            raise Conflict(
                f"{other.address} is already in pool {pool_name!r} as {other.id!r}", "port"
            )
        settings = self.settings[pool_name]
        override = health or {}
        server = Server(server_id, host, port, weight, pool_name, source=source)
        self._apply_health_settings(server, settings, override)
        server.health = ServerHealth(server.health.policy, self.loop.time())
        if admin == "disabled":
            server.health.apply(Event.DISABLE, self.loop.time(), "disabled by admin")
        elif admin == "draining":
            server.health.apply(Event.DRAIN, self.loop.time(), "drained by admin")
        server.connections = UpstreamPool(server, self._upstream_for(settings), self.loop)
        server.connections.owner = pool
        server.on_outlier = self._on_outlier
        was_panic = pool.panic
        pool.add(server)
        self._rebuilt(pool, was_panic)
        if override:
            self.overrides[server] = override
        server.watched = True
        self.checker.watch(server)
        self.bus.publish(SERVER_ADDED, self.server_view(server))
        log.info("server %s/%s added: %s", pool_name, server_id, server.address)
        self._changed()
        return server

    def _upstream_for(self, settings: PoolSettings) -> UpstreamSettings:
        limit = settings.balancing.max_connections
        if limit is None:
            return self.upstream
        return dataclasses.replace(self.upstream, max_connections=limit)

    def _apply_health_settings(
        self, server: Server, settings: PoolSettings, override: dict[str, Any]
    ) -> None:
        health = settings.health.merged(override) if override else settings.health
        policy = health_policy(health, settings.outlier)
        server.check = check_spec(health)
        server.health.policy = policy
        server.eject_after = settings.outlier.consecutive_failures
        server.eject_statuses = (
            frozenset(settings.outlier.statuses) if settings.outlier.enabled else frozenset()
        )

    def set_weight(self, pool_name: str, server_id: str, weight: int) -> Server:
        server = self.server(pool_name, server_id)
        server.weight = weight
        if server not in self._ramping:
            server.effective_weight = weight
        self.pool(pool_name).rebuild()
        self.bus.publish(SERVER_UPDATED, self.server_view(server))
        self._changed()
        return server

    def disable(self, pool_name: str, server_id: str) -> Server:
        return self._admin(self.server(pool_name, server_id), Event.DISABLE, "disabled by admin")

    def enable(self, pool_name: str, server_id: str) -> Server:
        server = self.server(pool_name, server_id)
        if server in self.removing:
            raise Conflict(f"server {server_id!r} is being removed")
        if server.state in (State.DISABLED, State.DRAINING):
            self._admin(server, Event.ENABLE, "enabled by admin")
            self.checker.watch(server)  # check at once
        return server

    def drain(self, pool_name: str, server_id: str) -> Server:
        return self._admin(self.server(pool_name, server_id), Event.DRAIN, "drained by admin")

    def _admin(self, server: Server, event: Event, reason: str) -> Server:
        if server in self.removing:
            raise Conflict(f"server {server.id!r} is being removed")
        if (server.state, event) in (
            (State.DISABLED, Event.DISABLE),
            (State.DRAINING, Event.DRAIN),
        ):
            return server  # already so: nothing to do
        self._transition(server, server.health.apply(event, self.loop.time(), reason))
        self._changed()
        return server

    async def deregister(
        self, pool_name: str, server_id: str, reason: str = "deregistered"
    ) -> None:
        """Stop routing to the server, let its requests in flight finish (up to the drain
        timeout), then remove it."""
        server = self.server(pool_name, server_id)
        if server in self.removing:
            raise NotFound(f"server {server_id!r} in pool {pool_name!r} is being removed")
        self.removing.add(server)
        if server.state is not State.DRAINING:
            self._transition(server, server.health.apply(Event.DRAIN, self.loop.time(), reason))
        deadline = self.loop.time() + self.drain_timeout
        try:
            while server.in_flight > 0 and self.loop.time() < deadline:
                await asyncio.sleep(0.05)
        finally:
            self._remove(server, reason)

    def _remove(self, server: Server, reason: str) -> None:
        pool = self.pools.get(server.pool_name)
        if pool is None or pool.servers.get(server.id) is not server:
            return
        was_panic = pool.panic
        pool.remove(server.id)
        self._rebuilt(pool, was_panic)
        self.removing.discard(server)
        server.watched = False
        self.checker.unwatch(server)
        self.overrides.pop(server, None)
        if server.connections is not None:
            server.connections.close()
        self.bus.publish(SERVER_REMOVED, {"pool": pool.name, "id": server.id, "reason": reason})
        log.info("server %s/%s removed (%s)", pool.name, server.id, reason)
        self._changed()

    # -- health --------------------------------------------------------------------------------

    def _on_check(self, server: Server, result: CheckResult) -> None:
        transition = server.health.record_check(result)
        self.bus.publish(
            SERVER_CHECKED,
            {
                "pool": server.pool_name,
                "id": server.id,
                "ok": result.ok,
                "detail": result.detail,
                "latency": result.latency,
                "state": server.state.value,
            },
        )
        if transition is not None:
            self._transition(server, transition)
        remove_after = self.settings[server.pool_name].health.remove_dead_after
        if (
            remove_after
            and server.state is State.DEAD
            and result.at - server.health.since >= remove_after
        ):
            self._remove(server, f"dead for more than {remove_after:g}s")

    def _on_outlier(self, server: Server, reason: str) -> None:
        """The data plane saw `reason` (e.g. "5 consecutive 502"): eject, within limits."""
        if server.state is not State.HEALTHY:
            return
        pool = self.pools.get(server.pool_name)
        if pool is None:
            return
        outlier = self.settings[pool.name].outlier
        if not outlier.enabled:
            return
        now = self.loop.time()
        candidates = [
            s for s in pool.servers.values() if s.state not in (State.DISABLED, State.DRAINING)
        ]
        ejected = sum(
            1 for s in candidates if s.state is State.UNHEALTHY and s.health.ejected_until > now
        )
        if (ejected + 1) * 100 > outlier.max_ejection_percent * len(candidates):
            log.warning(
                "not ejecting %s/%s (%s): %d%% of the pool at most may be ejected",
                pool.name,
                server.id,
                reason,
                outlier.max_ejection_percent,
            )
            return
        self._transition(server, server.health.eject(now, reason))
        self.checker.watch(server, server.health.next_check_in(self.checker.rng))

    def _transition(self, server: Server, transition: Transition) -> None:
        pool = self.pools.get(server.pool_name)
        if transition.new is State.HEALTHY:
            self._start_ramp(server)
        if pool is not None and pool.rebuild():
            self._panic_changed(pool)
        if (
            transition.new in (State.UNHEALTHY, State.DEAD, State.DISABLED)
            and server.connections is not None
        ):
            # Idle connections kept to a server that is out are not worth keeping.
            for conn in server.connections.idle[:]:
                conn.close()
        level = logging.INFO if transition.new is State.HEALTHY else logging.WARNING
        if transition.event in (Event.DRAIN, Event.DISABLE, Event.ENABLE):
            level = logging.INFO
        log.log(
            level,
            "server %s/%s: %s -> %s (%s)",
            server.pool_name,
            server.id,
            transition.old,
            transition.new,
            transition.reason,
        )
        self.bus.publish(
            SERVER_STATE,
            {
                "pool": server.pool_name,
                "id": server.id,
                "old": transition.old.value,
                "new": transition.new.value,
                "event": transition.event.value,
                "reason": transition.reason,
                "routable": len(pool.routable) if pool is not None else 0,
            },
        )

    # -- slow start and panic mode -----------------------------------------------------------

    def _start_ramp(self, server: Server) -> None:
        """Slow start: a server coming up takes a growing share of traffic, from 10% of its
        weight to all of it over `slow_start` seconds (weighted algorithms only)."""
        settings = self.settings.get(server.pool_name)
        if settings is None or not settings.balancing.slow_start:
            server.effective_weight = server.weight
            return
        server.effective_weight = server.weight * 0.1
        self._ramping[server] = self.loop.time()
        if self._ramp_handle is None:
            self._ramp_handle = self.loop.call_later(0.5, self._ramp)

    def _ramp(self) -> None:
        self._ramp_handle = None
        now = self.loop.time()
        touched: set[str] = set()
        for server, since in list(self._ramping.items()):
            settings = self.settings.get(server.pool_name)
            duration = settings.balancing.slow_start if settings is not None else 0.0
            share = 1.0 if not duration else min(1.0, max(0.1, (now - since) / duration))
            if server.state is not State.HEALTHY or share >= 1.0:
                share = 1.0
                del self._ramping[server]
            server.effective_weight = server.weight * share
            touched.add(server.pool_name)
        for name in touched:
            pool = self.pools.get(name)
            if pool is not None and pool.rebuild():
                self._panic_changed(pool)
        if self._ramping:
            self._ramp_handle = self.loop.call_later(0.5, self._ramp)

    def _rebuilt(self, pool: ServerPool, was_panic: bool) -> None:
        """After a rebuild done elsewhere: report a change of panic mode."""
        if pool.panic != was_panic:
            self._panic_changed(pool)

    def _panic_changed(self, pool: ServerPool) -> None:
        if pool.panic:
            log.warning(
                "pool %s: panic mode: fewer than %d%% of its servers are healthy; "
                "balancing across all of them",
                pool.name,
                round(pool.balancing.panic_threshold * 100),
            )
        else:
            log.info("pool %s: panic mode over", pool.name)
        self.bus.publish(POOL_UPDATED, self.pool_view(pool))

    # -- lifecycle --------------------------------------------------------------------------------

    async def first_checks(self, timeout: float) -> None:
        """Wait (at most `timeout`) until every server has been checked once."""
        deadline = self.loop.time() + timeout
        while self.loop.time() < deadline:
            if all(
                s.health.history or s.state in (State.DISABLED, State.DRAINING)
                for s in self.all_servers()
            ):
                return
            await asyncio.sleep(0.01)

    def spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def close(self) -> None:
        if self._ramp_handle is not None:
            self._ramp_handle.cancel()
        await self.checker.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
