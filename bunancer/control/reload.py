"""Config reload: what differs between the running config and a newly read one.

`plan(old, new)` compares the two (pydantic models compare by value) and says what a reload
changes in place: pools added, changed and removed, the file's servers added, removed and
re-weighted, routes, listeners added and removed (an address that changes is one of each:
the new socket opens before the old one closes), listener and upstream settings. What only
a restart applies (the state directory and store, the API and dashboard listeners, the
access log, stats) is listed apart, and the running values of those stay.

API-made changes keep overlaying the file, as at start: a server registered through the
API stays, and a file server keeps a weight set through the API unless the file's own
weight for it changed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from ..config import Config, ListenerConfig, ServerConfig
from ..core.settings import UpstreamSettings
from .records import PoolSettings, RegistryError
from .registry import Registry

log = logging.getLogger("bunancer.reload")

RESTART_ONLY = ("state_dir", "store", "api", "dashboard", "access_log", "stats")


def server_id(server: ServerConfig) -> str:
    """A file server's id: its `id`, or its address without the scheme."""
    return server.id or server.address.split("://")[-1]


def _servers(config: Config, pool: str) -> dict[str, ServerConfig]:
    settings = config.pools.get(pool)
    return {} if settings is None else {server_id(s): s for s in settings.servers}


@dataclass
class ReloadPlan:
    pools_added: list[str] = field(default_factory=list)
    pools_changed: list[str] = field(default_factory=list)  # algorithm, health, outlier...
    pools_removed: list[str] = field(default_factory=list)
    servers_added: list[tuple[str, ServerConfig]] = field(default_factory=list)
    servers_removed: list[tuple[str, str]] = field(default_factory=list)  # (pool, id)
    weights: list[tuple[str, str, int]] = field(default_factory=list)  # (pool, id, weight)
    listeners_added: list[ListenerConfig] = field(default_factory=list)
    listeners_removed: list[ListenerConfig] = field(default_factory=list)
    routes: bool = False  # routes or a listener's default pool or settings changed
    listener_settings: bool = False  # timeouts, limits, headers (client side)
    upstream_settings: bool = False  # timeouts, limits, upstream (server side)
    restart_needed: list[str] = field(default_factory=list)

    def changes(self) -> list[str]:
        """What the reload changed, a line each (empty: nothing)."""
        lines = [f"pool {name} added" for name in self.pools_added]
        lines += [f"pool {name} changed" for name in self.pools_changed]
        lines += [f"pool {name} removed" for name in self.pools_removed]
        lines += [f"server {pool}/{server_id(s)} added" for pool, s in self.servers_added]
        lines += [f"server {pool}/{sid} removed" for pool, sid in self.servers_removed]
        lines += [f"server {pool}/{sid} weight {w}" for pool, sid, w in self.weights]
        lines += [f"listener {x.address} ({x.mode}) added" for x in self.listeners_added]
        lines += [f"listener {x.address} ({x.mode}) removed" for x in self.listeners_removed]
        if self.routes:
            lines.append("routes changed")
        if self.listener_settings or self.upstream_settings:
            lines.append("timeouts, limits or headers changed")
        return lines


def plan(old: Config, new: Config) -> ReloadPlan:
    result = ReloadPlan()
    for name, settings in new.pools.items():
        if name not in old.pools:
            result.pools_added.append(name)
            result.servers_added += [(name, s) for s in settings.servers]
            continue
        if settings.model_copy(update={"servers": []}) != old.pools[name].model_copy(
            update={"servers": []}
        ):
            result.pools_changed.append(name)
        before, after = _servers(old, name), _servers(new, name)
        for sid, server in after.items():
            was = before.get(sid)
            if was is None or was.host_port != server.host_port or was.health != server.health:
                if was is not None:
                    result.servers_removed.append((name, sid))
                result.servers_added.append((name, server))
            elif was.weight != server.weight:
                result.weights.append((name, sid, server.weight))
        result.servers_removed += [(name, sid) for sid in before if sid not in after]
    result.pools_removed = [name for name in old.pools if name not in new.pools]
    old_listeners = {x.host_port: x for x in old.listeners}
    new_listeners = {x.host_port: x for x in new.listeners}
    for address, listener in new_listeners.items():
        was = old_listeners.get(address)
        # Another mode, or TLS turned on or off: another kind of server on that address.
        if was is None or (was.mode, was.tls is None) != (listener.mode, listener.tls is None):
            result.listeners_added.append(listener)
            if was is not None:
                result.listeners_removed.append(was)
        elif was != listener:
            result.routes = True  # the default pool or TCP settings: applied in place
    result.listeners_removed += [x for a, x in old_listeners.items() if a not in new_listeners]
    result.routes = result.routes or old.routes != new.routes
    result.listener_settings = (old.timeouts, old.limits, old.headers) != (
        new.timeouts,
        new.limits,
        new.headers,
    )
    result.upstream_settings = (old.timeouts, old.limits, old.upstream) != (
        new.timeouts,
        new.limits,
        new.upstream,
    )
    result.restart_needed = [key for key in RESTART_ONLY if getattr(old, key) != getattr(new, key)]
    return result


def running(old: Config, new: Config) -> Config:
    """The config a reload leaves running: `new`, but the restart-only parts of `old`."""
    return new.model_copy(update={key: getattr(old, key) for key in RESTART_ONLY})


def protected_pools(config: Config) -> set[str]:
    """The pools a listener or route points at (they cannot be removed)."""
    by_name = {r.pool for x in config.listeners for r in x.sni_routes}
    return {r.pool for r in config.routes} | {x.default_pool for x in config.listeners} | by_name


async def apply_to_pools(
    registry: Registry, change: ReloadPlan, new: Config, upstream: UpstreamSettings
) -> list[str]:
    """Pools and the file's servers as `new` has them (pools it drops stay until
    `remove_pools`, once nothing routes to them); the problems met, a line each."""
    problems: list[str] = []
    for name in change.pools_added:
        registry.add_pool(name, PoolSettings.from_config(new.pools[name]))
    for name in change.pools_changed:
        registry.update_pool(name, PoolSettings.from_config(new.pools[name]))
    if change.upstream_settings:
        registry.reconfigure_upstream(upstream)
    # A server whose address changed goes before it comes back: its id is taken till then.
    leaving = [
        (pool, sid)
        for pool, sid in change.servers_removed
        if (pool, sid) in registry.records and not registry.records[(pool, sid)].removing
    ]
    await asyncio.gather(
        *(registry.deregister(pool, sid, "removed from the config") for pool, sid in leaving)
    )
    for pool, server in change.servers_added:
        host, port = server.host_port
        try:
            registry.register(
                pool, host, port, weight=server.weight, server_id=server_id(server),
                health=server.health, source="config",
            )  # fmt: skip
        except RegistryError as error:
            problems.append(f"server {pool}/{server_id(server)}: {error.message}")
    for pool, sid, weight in change.weights:
        if (pool, sid) in registry.records:
            registry.set_weight(pool, sid, weight)
    return problems


async def remove_pools(registry: Registry, names: list[str]) -> list[str]:
    """Remove pools the file no longer has (their servers drain first)."""
    problems: list[str] = []
    for name in names:
        if name in registry.pools:
            try:
                await registry.remove_pool(name)
            except RegistryError as error:
                problems.append(f"pool {name}: {error.message}")
    return problems
