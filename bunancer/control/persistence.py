"""Keeps a `Store` in step with the `Registry`: restore at start, durable saves, and the
changes other instances make (Redis).

- `restore()` overlays the saved state on the pools and servers built from the config
  (the rule is in registry.py's docstring and the README).
- `save()` makes the registry's current state durable before it returns; concurrent calls
  share saves (one in flight, one queued covering every change made meanwhile).
- `follow()` applies states saved by other instances as a three-way merge against the last
  state this instance knew: what the other side changed is taken, what this instance
  changed since is kept. On a save conflict (another instance saved first) the newer
  state is merged in the same way and the save is retried.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError

from ..config import BalancingConfig, HealthConfig, OutlierConfig
from ..core.server import State
from .records import ServerRecord
from .registry import PoolSettings, Registry, RegistryError
from .store import SavedPool, SavedServer, SavedState, Store, StoreConflict

log = logging.getLogger("bunancer.persistence")

_ADMIN = {State.DISABLED: "disabled", State.DRAINING: "draining"}


def admin_of(record: ServerRecord) -> str:
    return _ADMIN.get(record.state, "enabled")


class Persistence:
    def __init__(self, registry: Registry, store: Store) -> None:
        self.registry = registry
        self.store = store
        self.revision = 0
        self._known = SavedState()  # the last state loaded, saved or received
        self._lock = asyncio.Lock()
        self._requested = 0  # save requests made
        self._covered = 0  # requests covered by a completed save
        self._applying = False

    # -- the registry as records ---------------------------------------------------------------

    def snapshot(self) -> SavedState:
        registry = self.registry
        pools: dict[str, SavedPool] = {}
        for name in registry.pools:
            settings = registry.settings[name]
            pools[name] = SavedPool(
                name=name,
                algorithm=settings.algorithm,
                health=settings.health.model_dump(mode="json"),
                outlier=settings.outlier.model_dump(mode="json"),
                balancing=settings.balancing.model_dump(mode="json"),
                servers=[
                    SavedServer(
                        id=record.server.id,
                        host=record.server.host,
                        port=record.server.port,
                        weight=record.server.weight,
                        admin=admin_of(record),
                        source=record.source,
                        health=record.overrides,
                    )
                    for record in registry.in_order(name)
                    if not record.removing
                ],
            )
        return SavedState(pools=pools, revision=self.revision)

    # -- start ------------------------------------------------------------------------------------

    async def restore(self) -> int:
        """Overlay the saved state; returns how many saved servers were taken."""
        state = await self.store.load()
        if state is None:
            return 0
        self.revision = state.revision
        taken = self._apply(state, SavedState(), startup=True)
        self._known = state
        return taken

    # -- saving -----------------------------------------------------------------------------------

    def request_save(self) -> None:
        """A change the registry made on its own (no one waits for it): save soon."""
        if not self._applying:
            self.registry.spawn(self._save_logged())

    async def _save_logged(self) -> None:
        try:
            await self.save()
        except Exception:
            log.exception("saving the state to %s failed", self.store.description)

    async def save(self) -> None:
        self._requested += 1
        ticket = self._requested
        async with self._lock:
            if self._covered >= ticket:
                return  # a save that started after this request already wrote it
            covering = self._requested
            for attempt in range(5):
                state = self.snapshot()
                try:
                    await self.store.save(state)
                except StoreConflict:
                    if attempt == 4:
                        raise
                    newer = await self.store.load()
                    if newer is not None:
                        self.merge(newer)
                    continue
                self.revision = state.revision
                self._known = state
                break
            self._covered = covering

    # -- other instances ------------------------------------------------------------------------

    def merge(self, remote: SavedState) -> None:
        """Take what another instance changed since the state this one last knew."""
        if remote.revision <= self._known.revision and self._known.revision:
            return
        self._apply(remote, self._known, startup=False)
        self._known = remote
        self.revision = max(self.revision, remote.revision)

    async def follow(self) -> None:
        async for state in self.store.watch():
            try:
                self.merge(state)
            except Exception:
                log.exception("applying a state from %s failed", self.store.description)

    # -- applying records ------------------------------------------------------------------------

    def _apply(self, remote: SavedState, known: SavedState, *, startup: bool) -> int:
        registry = self.registry
        taken = 0
        self._applying = True
        try:
            for name, record in remote.pools.items():
                if name not in registry.pools:
                    if name in known.pools and not startup:
                        continue  # removed here since: keep it removed
                    settings = _pool_settings(record)
                    if settings is None:
                        continue
                    registry.add_pool(name, settings)
                for server in record.servers:
                    taken += self._apply_server(name, server, known, startup=startup)
            if not startup:
                self._apply_removals(remote, known)
        finally:
            self._applying = False
        return taken

    def _apply_server(
        self, pool: str, record: SavedServer, known: SavedState, *, startup: bool
    ) -> int:
        registry = self.registry
        local = registry.records.get((pool, record.id))
        before = _find(known, pool, record.id)
        if local is None:
            if before is not None:
                return 0  # removed here since
            if startup and record.source == "config":
                return 0  # the config file no longer has it: the file is the base
            try:
                registry.register(
                    pool,
                    record.host,
                    record.port,
                    weight=record.weight,
                    server_id=record.id,
                    health=record.health,
                    source=record.source,
                    admin=record.admin,
                )
            except (RegistryError, ValidationError) as error:
                log.warning("not restoring %s/%s: %s", pool, record.id, error)
                return 0
            return 1
        # Present here: take each field the other side changed (at start: every field).
        weight = local.server.weight
        if (before is None or before.weight != record.weight) and weight != record.weight:
            registry.set_weight(pool, record.id, record.weight)
        if (before is None or before.admin != record.admin) and admin_of(local) != record.admin:
            if record.admin == "disabled":
                registry.disable(pool, record.id)
            elif record.admin == "draining":
                registry.drain(pool, record.id)
            else:
                registry.enable(pool, record.id)
        return 1

    def _apply_removals(self, remote: SavedState, known: SavedState) -> None:
        registry = self.registry
        for name, record in known.pools.items():
            remote_pool = remote.pools.get(name)
            if name not in registry.pools:
                continue
            if remote_pool is None:
                if name not in registry.protected:
                    registry.spawn(registry.remove_pool(name))
                continue
            remaining = {s.id for s in remote_pool.servers}
            for server in record.servers:
                if server.id not in remaining and server.id in registry.pools[name].servers:
                    registry.spawn(registry.deregister(name, server.id, "removed elsewhere"))


def _find(state: SavedState, pool: str, server_id: str) -> SavedServer | None:
    record = state.pools.get(pool)
    if record is None:
        return None
    return next((s for s in record.servers if s.id == server_id), None)


def _pool_settings(record: SavedPool) -> PoolSettings | None:
    try:
        return PoolSettings(
            record.algorithm,
            HealthConfig.model_validate(record.health),
            OutlierConfig.model_validate(record.outlier),
            source="api",
            balancing=BalancingConfig.model_validate(record.balancing),
        )
    except ValidationError as error:
        log.warning("not restoring pool %s: %s", record.name, error)
        return None
