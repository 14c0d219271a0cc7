"""The registry/admin API: pools and servers over JSON, on its own listener.

Every change is saved before it is acknowledged: a 2xx answer means the change survives a
crash of the balancer. Bodies are typed (pydantic) and unknown keys are refused, so a
typo is a 422 naming the field rather than a silent no-op.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import (
    DEFAULT_ALGORITHM,
    Algorithm,
    BalancingConfig,
    HealthConfig,
    OutlierConfig,
    field_path,
)
from ..core.registry import PoolSettings, Registry, RegistryError, in_order
from ..core.telemetry import Telemetry
from .auth import require_token
from .http import App, HTTPError, Request, Response, json_response
from .router import Router

NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
Saver = Callable[[], Awaitable[None]]


class _Body(BaseModel):
    # Strict: JSON true is not a port, "80" is not a number; unknown keys are typos.
    model_config = ConfigDict(extra="forbid", strict=True)


class PoolCreate(_Body):
    name: str = Field(pattern=NAME_PATTERN)
    algorithm: Algorithm = DEFAULT_ALGORITHM
    health: dict[str, Any] = Field(default_factory=dict)
    outlier: dict[str, Any] = Field(default_factory=dict)
    balancing: dict[str, Any] = Field(default_factory=dict)


class PoolUpdate(_Body):
    algorithm: Algorithm | None = None
    health: dict[str, Any] | None = None
    outlier: dict[str, Any] | None = None
    balancing: dict[str, Any] | None = None


class ServerCreate(_Body):
    id: str | None = Field(default=None, pattern=NAME_PATTERN)
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(ge=1, le=65535)
    weight: int = Field(default=1, ge=1, le=10000)
    health: dict[str, Any] = Field(default_factory=dict)

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if any(c.isspace() or c in "/@?#[]" for c in value):
            raise ValueError("a bare host name or IP address")
        return value


class ServerUpdate(_Body):
    weight: int | None = Field(default=None, ge=1, le=10000)
    admin: Literal["enabled", "disabled", "draining"] | None = None


def _registry_error(error: RegistryError) -> HTTPError:
    extra = {"field": error.field} if error.field else {}
    return HTTPError(error.status, error.message, **extra)


def _merged(
    base: HealthConfig | OutlierConfig | BalancingConfig, patch: dict[str, Any], key: str
) -> Any:
    try:
        return type(base).model_validate({**base.model_dump(), **patch})
    except ValidationError as error:
        first = error.errors()[0]
        field = field_path(tuple(first["loc"]))
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        raise HTTPError(422, "validation failed", field=f"{key}.{field}", detail=message) from None


def build_api(
    registry: Registry,
    save: Saver,
    token: str,
    *,
    telemetry: Telemetry | None = None,
    public_reads: bool = True,
    extra_routes: Callable[[Router[Any]], None] | None = None,
) -> App:
    router: Router[Any] = Router()

    if telemetry is not None:

        @router.get("/api/stats")
        async def stats(request: Request) -> Response:
            return json_response(telemetry.snapshot())

        @router.get("/metrics")
        async def metrics(request: Request) -> Response:
            return Response(
                200,
                telemetry.prometheus(),
                content_type="text/plain; version=0.0.4; charset=utf-8",
            )

    def pool_detail(name: str) -> dict[str, Any]:
        pool = registry.pool(name)
        view = registry.pool_view(pool)
        view["servers"] = [registry.server_view(s) for s in in_order(pool)]
        return view

    @router.get("/healthz")
    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok"})

    @router.get("/api/pools")
    async def list_pools(request: Request) -> Response:
        return json_response([pool_detail(name) for name in registry.pools])

    @router.post("/api/pools", body=PoolCreate)
    async def create_pool(request: Request) -> Response:
        body: PoolCreate = request.data
        settings = PoolSettings(
            body.algorithm,
            _merged(HealthConfig(), body.health, "health"),
            _merged(OutlierConfig(), body.outlier, "outlier"),
            source="api",
            balancing=_merged(BalancingConfig(), body.balancing, "balancing"),
        )
        try:
            registry.add_pool(body.name, settings)
        except RegistryError as error:
            raise _registry_error(error) from None
        await save()
        return json_response(pool_detail(body.name), 201)

    @router.get("/api/pools/{pool}")
    async def get_pool(request: Request) -> Response:
        try:
            return json_response(pool_detail(str(request.params["pool"])))
        except RegistryError as error:
            raise _registry_error(error) from None

    @router.patch("/api/pools/{pool}", body=PoolUpdate)
    async def update_pool(request: Request) -> Response:
        name = str(request.params["pool"])
        body: PoolUpdate = request.data
        try:
            registry.pool(name)
            old = registry.settings[name]
            settings = PoolSettings(
                body.algorithm or old.algorithm,
                old.health if body.health is None else _merged(old.health, body.health, "health"),
                old.outlier
                if body.outlier is None
                else _merged(old.outlier, body.outlier, "outlier"),
                old.source,
                old.balancing
                if body.balancing is None
                else _merged(old.balancing, body.balancing, "balancing"),
            )
            registry.update_pool(name, settings)
        except RegistryError as error:
            raise _registry_error(error) from None
        await save()
        return json_response(pool_detail(name))

    @router.delete("/api/pools/{pool}")
    async def delete_pool(request: Request) -> Response:
        name = str(request.params["pool"])
        try:
            await registry.remove_pool(name)
        except RegistryError as error:
            raise _registry_error(error) from None
        await save()
        return json_response({"removed": name})

    @router.post("/api/pools/{pool}/servers", body=ServerCreate)
    async def register(request: Request) -> Response:
        pool = str(request.params["pool"])
        body: ServerCreate = request.data
        try:
            settings = registry.settings.get(pool)
            if settings is not None and body.health:
                _merged(settings.health, body.health, "health")
            # The same id and address again (a backend that restarted): 200 with the server
            # as it is, checked at once if it is down. PATCH changes its settings.
            existing = registry.registered_again(pool, body.host, body.port, body.id)
            if existing is not None:
                return json_response(registry.server_view(existing))
            server = registry.register(
                pool,
                body.host,
                body.port,
                weight=body.weight,
                server_id=body.id,
                health=body.health,
            )
        except RegistryError as error:
            raise _registry_error(error) from None
        await save()
        return json_response(registry.server_view(server), 201)

    @router.get("/api/pools/{pool}/servers/{id}")
    async def get_server(request: Request) -> Response:
        try:
            server = registry.server(str(request.params["pool"]), str(request.params["id"]))
        except RegistryError as error:
            raise _registry_error(error) from None
        return json_response(registry.server_view(server))

    @router.patch("/api/pools/{pool}/servers/{id}", body=ServerUpdate)
    async def update_server(request: Request) -> Response:
        pool, server_id = str(request.params["pool"]), str(request.params["id"])
        body: ServerUpdate = request.data
        try:
            server = registry.server(pool, server_id)
            if body.weight is not None:
                registry.set_weight(pool, server_id, body.weight)
            if body.admin == "enabled":
                registry.enable(pool, server_id)
            elif body.admin == "disabled":
                registry.disable(pool, server_id)
            elif body.admin == "draining":
                registry.drain(pool, server_id)
        except RegistryError as error:
            raise _registry_error(error) from None
        await save()
        return json_response(registry.server_view(server))

    @router.delete("/api/pools/{pool}/servers/{id}")
    async def deregister(request: Request) -> Response:
        pool, server_id = str(request.params["pool"]), str(request.params["id"])
        try:
            await registry.deregister(pool, server_id)
        except RegistryError as error:
            raise _registry_error(error) from None
        await save()
        return json_response({"removed": server_id, "pool": pool})

    if extra_routes is not None:
        extra_routes(router)
    return App(router, [require_token(token, public_reads)])
