"""Commands: the only write path. Every change from the API and the dashboard comes here.

A command validates its input with the config's own models (a bad value is a 422 naming
the field), applies it to the registry, and returns once the change is durable (saved),
with what the API answers. Refusals are `RegistryError`s that carry their HTTP status,
message and field, so the API and the dashboard answer them the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import ValidationError

from ..config import BalancingConfig, HealthConfig, OutlierConfig
from ..problems import describe_problem
from .addresses import AddressPolicy
from .records import PoolSettings, RegistryError, ServerRecord
from .registry import Registry

Saver = Callable[[], Awaitable[None]]
Admin = Literal["enabled", "disabled", "draining"]


class Invalid(RegistryError):
    """A value the models refuse: 422, with the field and why."""

    status = 422

    def __init__(self, field: str, detail: str) -> None:
        super().__init__("validation failed", field)
        self.detail = detail


def merged(
    base: HealthConfig | OutlierConfig | BalancingConfig, patch: dict[str, Any], key: str
) -> Any:
    """`base` with `patch` applied, validated as a whole (Invalid names `key.field`)."""
    try:
        return type(base).model_validate({**base.model_dump(), **patch})
    except ValidationError as error:
        field, message = describe_problem(error.errors()[0], unknown="unknown field")
        raise Invalid(f"{key}.{field}", message) from None


class Commands:
    def __init__(
        self, registry: Registry, save: Saver, addresses: AddressPolicy | None = None
    ) -> None:
        self.registry = registry
        self.addresses = addresses if addresses is not None else AddressPolicy()
        self.save = save  # makes the registry's state durable

    # -- pools ---------------------------------------------------------------------------------

    def pool_detail(self, name: str) -> dict[str, Any]:
        registry = self.registry
        view = registry.pool_view(registry.pool(name))
        view["servers"] = [registry.server_view(r) for r in registry.in_order(name)]
        return view

    async def create_pool(
        self,
        name: str,
        algorithm: str,
        health: dict[str, Any],
        outlier: dict[str, Any],
        balancing: dict[str, Any],
    ) -> dict[str, Any]:
        settings = PoolSettings(
            algorithm,
            merged(HealthConfig(), health, "health"),
            merged(OutlierConfig(), outlier, "outlier"),
            source="api",
            balancing=merged(BalancingConfig(), balancing, "balancing"),
        )
        self.registry.add_pool(name, settings)
        await self.save()
        return self.pool_detail(name)

    async def update_pool(
        self,
        name: str,
        *,
        algorithm: str | None = None,
        health: dict[str, Any] | None = None,
        outlier: dict[str, Any] | None = None,
        balancing: dict[str, Any] | None = None,
        weights: dict[str, int] | None = None,
    ) -> list[str]:
        """Change a pool's settings and its servers' `weights` (by id) live, saved once;
        what changed, in words."""
        registry = self.registry
        registry.pool(name)
        for server_id in weights or {}:
            registry.record(name, server_id)  # every id first: nothing changes on a 404
        old = registry.settings[name]
        settings = PoolSettings(
            algorithm or old.algorithm,
            old.health if health is None else merged(old.health, health, "health"),
            old.outlier if outlier is None else merged(old.outlier, outlier, "outlier"),
            old.source,
            old.balancing if balancing is None else merged(old.balancing, balancing, "balancing"),
            old.tls,
        )
        changed = [
            what
            for what, differs in (
                (f"algorithm {settings.algorithm}", settings.algorithm != old.algorithm),
                ("health checks", settings.health != old.health),
                ("outlier detection", settings.outlier != old.outlier),
                ("balancing", settings.balancing != old.balancing),
            )
            if differs
        ]
        if changed:
            registry.update_pool(name, settings)
        for server_id, weight in (weights or {}).items():
            if registry.record(name, server_id).server.weight != weight:
                registry.set_weight(name, server_id, weight)
                changed.append(f"{server_id} weight {weight}")
        await self.save()
        return changed

    async def delete_pool(self, name: str) -> None:
        await self.registry.remove_pool(name)
        await self.save()

    # -- servers ---------------------------------------------------------------------------------

    async def register(
        self,
        pool: str,
        host: str,
        port: int,
        *,
        server_id: str | None = None,
        weight: int = 1,
        health: dict[str, Any] | None = None,
    ) -> tuple[bool, dict[str, Any]]:
        """(created, the server). The same id and address again (a backend that restarted)
        is not a new server: it is answered as it is, and checked at once if it is down."""
        await self.addresses.check(host)
        registry = self.registry
        settings = registry.settings.get(pool)
        if settings is not None and health:
            merged(settings.health, health, "health")
        existing = registry.registered_again(pool, host, port, server_id)
        if existing is not None:
            return False, registry.server_view(existing)
        record = registry.register(
            pool, host, port, weight=weight, server_id=server_id, health=health
        )
        await self.save()
        return True, registry.server_view(record)

    async def update_server(
        self, pool: str, server_id: str, *, weight: int | None = None, admin: Admin | None = None
    ) -> ServerRecord:
        registry = self.registry
        record = registry.record(pool, server_id)
        if weight is not None and weight != record.server.weight:
            registry.set_weight(pool, server_id, weight)
        if admin == "enabled":
            registry.enable(pool, server_id)
        elif admin == "disabled":
            registry.disable(pool, server_id)
        elif admin == "draining":
            registry.drain(pool, server_id)
        await self.save()
        return record

    async def deregister(self, pool: str, server_id: str, reason: str = "deregistered") -> None:
        await self.registry.deregister(pool, server_id, reason)
        await self.save()
