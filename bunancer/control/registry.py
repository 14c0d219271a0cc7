"""Registry: the pools and their servers, and the one place that changes them.

It builds pools from the config and overlays the saved state, registers and removes
servers (API, CLI, stubs), applies admin changes (weight, enable, disable, drain), feeds
active check results and passive ejections to each server's state machine, keeps the data
plane's view in step (a server's `state`, its pool's routable snapshot) on every change,
publishes events and asks for the state to be saved. Changes from the API and the
dashboard come through commands.py, which validates them first.

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
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..core.connections import ConnectionPool
from ..core.pool import ServerPool
from ..core.server import OUT_OF_ROTATION, Server, State
from ..core.settings import UpstreamSettings
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
from .health import HealthChecker
from .outlier import OutlierEjection
from .ramp import SlowStart
from .records import (
    Conflict,
    NotFound,
    PoolSettings,
    RegistryError,
    ServerRecord,
    natural_key,
    pool_view,
    server_view,
)
from .states import CheckResult, HealthPolicy, ServerHealth, Transition, Trigger

__all__ = ["Conflict", "NotFound", "PoolSettings", "Registry", "RegistryError", "ServerRecord"]

log = logging.getLogger("bunancer.registry")

_ALREADY = ((State.DISABLED, Trigger.DISABLE), (State.DRAINING, Trigger.DRAIN))


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
        self.records: dict[tuple[str, str], ServerRecord] = {}
        self.protected: set[str] = set()  # pools a listener or route points at
        self.checker = HealthChecker(loop, self._on_check, rng)
        self.outliers = OutlierEjection(
            loop, self.pools, self.settings, self.records, self.checker, self._transition
        )
        self.ramp = SlowStart(loop, self._slow_start_of, self._rebuild)
        self.on_change: Callable[[], None] | None = None  # persistence hook (app)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lookups -------------------------------------------------------------------------------

    def pool(self, name: str) -> ServerPool:
        try:
            return self.pools[name]
        except KeyError:
            raise NotFound(f"no pool {name!r}") from None

    def record(self, pool_name: str, server_id: str) -> ServerRecord:
        self.pool(pool_name)
        try:
            return self.records[(pool_name, server_id)]
        except KeyError:
            raise NotFound(f"no server {server_id!r} in pool {pool_name!r}") from None

    def server(self, pool_name: str, server_id: str) -> Server:
        return self.record(pool_name, server_id).server

    def all_records(self) -> Iterator[ServerRecord]:
        for pool in self.pools.values():
            for server in pool.servers.values():
                yield self.records[(pool.name, server.id)]

    def in_order(self, pool_name: str) -> list[ServerRecord]:
        """A pool's servers as the API, the CLI and the dashboard list them: by id, s2
        before s10 (registration order depends on which backend came up first)."""
        pool = self.pool(pool_name)
        records = [self.records[(pool_name, server_id)] for server_id in pool.servers]
        return sorted(records, key=lambda record: natural_key(record.server.id))

    def server_view(self, record: ServerRecord) -> dict[str, Any]:
        return server_view(record, self.loop.time(), time.time())

    def pool_view(self, pool: ServerPool) -> dict[str, Any]:
        return pool_view(pool, self.settings.get(pool.name, PoolSettings()))

    # -- pools -----------------------------------------------------------------------------------

    def add_pool(self, name: str, settings: PoolSettings) -> ServerPool:
        if name in self.pools:
            raise Conflict(f"pool {name!r} exists", "name")
        pool = ServerPool(name, settings.for_data_plane())
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
            pool.configure(settings.for_data_plane())
            for server in pool.servers.values():
                if server.connections is not None:
                    server.connections.reconfigure(self.upstream_for(settings))
        if settings.health != old.health or settings.outlier != old.outlier:
            for server in pool.servers.values():
                self.records[(name, server.id)].apply_settings(settings)
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

    # -- servers ---------------------------------------------------------------------------------

    def registered_again(
        self, pool_name: str, host: str, port: int, server_id: str | None = None
    ) -> ServerRecord | None:
        """The server already registered under this id (when given) and address, or None.

        A backend that restarts registers again; that is not a conflict but news: it may be
        up again, so a server that is down is checked at once instead of at its backoff or
        dead interval (a dead server would otherwise wait up to `dead_interval`)."""
        record = self._at_address(pool_name, host, port)
        if record is None or server_id not in (None, record.server.id):
            return None
        if record.removing:  # it goes once drained: the caller retries
            raise Conflict(f"server {record.server.id!r} is being removed", "id")
        if record.state in (State.UNHEALTHY, State.DEAD, State.PENDING):
            self.recheck(record)
        return record

    def recheck(self, record: ServerRecord) -> None:
        """Check the server at once rather than on its schedule: its backend just changed."""
        self.checker.check_now(record)

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
    ) -> ServerRecord:
        """Add a server (pending; its first check runs at once)."""
        pool = self.pool(pool_name)
        server_id = server_id or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        if server_id in pool.servers:
            raise Conflict(f"server {server_id!r} is already in pool {pool_name!r}", "id")
        other = self._at_address(pool_name, host, port)
        if other is not None:
            raise Conflict(
                f"{other.server.address} is already in pool {pool_name!r} as {other.server.id!r}",
                "port",
            )
        settings = self.settings[pool_name]
        now = self.loop.time()
        server = Server(server_id, host, port, weight, pool_name, State.PENDING)
        record = ServerRecord(server, ServerHealth(HealthPolicy(), now), source, dict(health or {}))
        record.apply_settings(settings)  # the pool's check settings, its own on top
        if admin == "disabled":
            record.health.apply(Trigger.DISABLE, now, "disabled by admin")
        elif admin == "draining":
            record.health.apply(Trigger.DRAIN, now, "drained by admin")
        server.state = record.state
        connections = ConnectionPool(host, port, self.upstream_for(settings), self.loop)
        connections.owner = pool
        server.connections = connections
        server.on_outlier = self.outliers.report
        self.records[record.key] = record
        was_panic = pool.panic
        pool.add(server)
        self._rebuilt(pool, was_panic)
        self.checker.watch(record)
        self.bus.publish(SERVER_ADDED, self.server_view(record))
        log.info("server %s/%s added: %s", pool_name, server_id, server.address)
        self._changed()
        return record

    def _at_address(self, pool_name: str, host: str, port: int) -> ServerRecord | None:
        """The pool's server at host:port (register keeps addresses unique in a pool)."""
        for server in self.pool(pool_name).servers.values():
            if (server.host, server.port) == (host, port):
                return self.records[(pool_name, server.id)]
        return None

    def upstream_for(self, settings: PoolSettings) -> UpstreamSettings:
        """The connection settings of a pool's servers: the balancer's, with the pool's own
        connection limit and TLS."""
        limit = settings.balancing.max_connections
        tls = settings.tls
        if limit is None and tls is None:
            return self.upstream
        options: dict[str, Any] = {} if limit is None else {"max_connections": limit}
        if tls is not None:
            options.update(tls=True, tls_verify=tls.verify, tls_ca_file=tls.ca_file,
                           tls_server_name=tls.server_name)  # fmt: skip
        return dataclasses.replace(self.upstream, **options)

    def reconfigure_upstream(self, upstream: UpstreamSettings) -> None:
        """New connection timeouts and limits for every server (a config reload)."""
        self.upstream = upstream
        for name, pool in self.pools.items():
            for server in pool.servers.values():
                if server.connections is not None:
                    server.connections.reconfigure(self.upstream_for(self.settings[name]))

    def set_weight(self, pool_name: str, server_id: str, weight: int) -> ServerRecord:
        record = self.record(pool_name, server_id)
        server = record.server
        server.weight = weight
        if not self.ramp.ramping(record):
            server.effective_weight = weight
        self.pool(pool_name).rebuild()
        self.bus.publish(SERVER_UPDATED, self.server_view(record))
        self._changed()
        return record

    def disable(self, pool_name: str, server_id: str) -> ServerRecord:
        return self._admin(self.record(pool_name, server_id), Trigger.DISABLE, "disabled by admin")

    def enable(self, pool_name: str, server_id: str) -> ServerRecord:
        record = self.record(pool_name, server_id)
        if record.removing:
            raise Conflict(f"server {server_id!r} is being removed")
        if record.state in OUT_OF_ROTATION:
            self._admin(record, Trigger.ENABLE, "enabled by admin")
            self.checker.watch(record)  # check at once
        return record

    def drain(self, pool_name: str, server_id: str) -> ServerRecord:
        return self._admin(self.record(pool_name, server_id), Trigger.DRAIN, "drained by admin")

    def _admin(self, record: ServerRecord, trigger: Trigger, reason: str) -> ServerRecord:
        if record.removing:
            raise Conflict(f"server {record.server.id!r} is being removed")
        if (record.state, trigger) in _ALREADY:
            return record  # already so: nothing to do
        self._transition(record, record.health.apply(trigger, self.loop.time(), reason))
        self._changed()
        return record

    async def deregister(
        self, pool_name: str, server_id: str, reason: str = "deregistered"
    ) -> None:
        """Stop routing to the server, let its requests in flight finish (up to the drain
        timeout), then remove it."""
        record = self.record(pool_name, server_id)
        if record.removing:
            raise NotFound(f"server {server_id!r} in pool {pool_name!r} is being removed")
        record.removing = True
        if record.state is not State.DRAINING:
            self._transition(record, record.health.apply(Trigger.DRAIN, self.loop.time(), reason))
        deadline = self.loop.time() + self.drain_timeout
        try:
            while record.server.in_flight > 0 and self.loop.time() < deadline:
                await asyncio.sleep(0.05)
        finally:
            self._remove(record, reason)

    def _remove(self, record: ServerRecord, reason: str) -> None:
        server = record.server
        pool = self.pools.get(server.pool_name)
        if pool is None or pool.servers.get(server.id) is not server:
            return
        was_panic = pool.panic
        pool.remove(server.id)
        self._rebuilt(pool, was_panic)
        del self.records[record.key]
        record.removing = False
        self.checker.unwatch(record)
        self.ramp.forget(record)
        if server.connections is not None:
            server.connections.close()
        self.bus.publish(SERVER_REMOVED, {"pool": pool.name, "id": server.id, "reason": reason})
        log.info("server %s/%s removed (%s)", pool.name, server.id, reason)
        self._changed()

    # -- health --------------------------------------------------------------------------------

    def _on_check(self, record: ServerRecord, result: CheckResult) -> None:
        transition = record.health.record_check(result)
        server = record.server
        self.bus.publish(
            SERVER_CHECKED,
            {
                "pool": server.pool_name,
                "id": server.id,
                "ok": result.ok,
                "detail": result.detail,
                "latency": result.latency,
                "state": record.state.value,
            },
        )
        if transition is not None:
            self._transition(record, transition)
        remove_after = self.settings[server.pool_name].health.remove_dead_after
        if (
            remove_after
            and record.state is State.DEAD
            and result.at - record.health.since >= remove_after
        ):
            self._remove(record, f"dead for more than {remove_after:g}s")

    def _transition(self, record: ServerRecord, transition: Transition) -> None:
        """The data plane follows a state change: the server's state, its pool's routable
        set; then the log, the event and slow start."""
        server = record.server
        server.state = transition.new
        pool = self.pools.get(server.pool_name)
        if transition.new is State.HEALTHY:
            self.ramp.start(record)
        if pool is not None and pool.rebuild():
            self._panic_changed(pool)
        out = transition.new in (State.UNHEALTHY, State.DEAD, State.DISABLED)
        if out and server.connections is not None:
            server.connections.close_idle()  # kept for a server that is out: not worth it
        level = logging.INFO if transition.new is State.HEALTHY else logging.WARNING
        if transition.trigger in (Trigger.DRAIN, Trigger.DISABLE, Trigger.ENABLE):
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
                "event": transition.trigger.value,
                "reason": transition.reason,
                "routable": len(pool.routable) if pool is not None else 0,
            },
        )

    # -- slow start and panic mode -----------------------------------------------------------

    def _slow_start_of(self, pool_name: str) -> float:
        settings = self.settings.get(pool_name)
        return settings.balancing.slow_start if settings is not None else 0.0

    def _rebuild(self, pool_name: str) -> None:
        pool = self.pools.get(pool_name)
        if pool is not None and pool.rebuild():
            self._panic_changed(pool)

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
            if all(r.health.history or r.state in OUT_OF_ROTATION for r in self.all_records()):
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
        self.ramp.close()
        await self.checker.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
