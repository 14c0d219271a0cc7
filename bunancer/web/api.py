"""The registry/admin API: pools and servers over JSON, on its own listener.

Every change goes through control/commands.py and is saved before it is acknowledged: a
2xx answer means the change survives a crash of the balancer. Bodies are typed (pydantic)
and unknown keys are refused, so a typo is a 422 naming the field rather than a silent
no-op; a refused change is answered by one mapping (`refusal_as_http`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..config import DEFAULT_ALGORITHM, NAME_PATTERN, WEIGHT_MAX, Algorithm, ConfigError, check_host
from ..control.commands import Commands
from ..control.faults import FaultBook
from ..control.lab import Lab
from ..control.records import RegistryError
from ..control.registry import Registry
from ..control.reload import ReloadPlan
from ..control.telemetry import Telemetry
from .app import (
    Admission,
    App,
    HTTPError,
    Request,
    Response,
    first_refusal,
    json_response,
    refusing,
)
from .attempts import FailedAttempts
from .auth import token_check
from .faults import fault_routes
from .lab import lab_routes
from .router import Router

Reload = Callable[[], Awaitable[tuple[ReloadPlan, list[str]]]]


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
    host: str
    port: int = Field(ge=1, le=65535)
    weight: int = Field(default=1, ge=1, le=WEIGHT_MAX)
    health: dict[str, Any] = Field(default_factory=dict)

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        return check_host(value)


class ServerUpdate(_Body):
    weight: int | None = Field(default=None, ge=1, le=WEIGHT_MAX)
    admin: Literal["enabled", "disabled", "draining"] | None = None


def refusal_as_http(error: RegistryError) -> HTTPError:
    """The one mapping from a refused change to an HTTP answer (status, field, why)."""
    extra: dict[str, Any] = {"field": error.field} if error.field else {}
    detail = getattr(error, "detail", None)
    if detail:
        extra["detail"] = detail
    return HTTPError(error.status, error.message, **extra)


def refused(error: Exception) -> HTTPError | None:
    """For `App`: a change the registry refused is an answer, anything else a bug."""
    return refusal_as_http(error) if isinstance(error, RegistryError) else None


def build_api(
    registry: Registry,
    commands: Commands,
    token: str,
    *,
    telemetry: Telemetry | None = None,
    public_reads: bool = True,
    host_check: Admission | None = None,
    attempts: FailedAttempts | None = None,
    reload: Reload | None = None,
    faults: FaultBook | None = None,
    lab: Lab | None = None,
    extra_routes: Callable[[Router[Any]], None] | None = None,
) -> App:
    """The API's app: `public_reads` lets GETs through without the token; `host_check`
    refuses requests naming a Host it does not allow (`hosts.HostCheck.refusal`); `attempts`
    makes a client that sent wrong tokens wait (shared with the dashboard's login); `reload`
    re-reads the config file (POST /api/reload); `faults` keeps the lab's fault rules
    (/api/faults), `lab` its experiments (/api/lab)."""
    router: Router[Any] = Router()

    @router.get("/healthz")
    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok"})

    if telemetry is not None:
        _stats_routes(router, telemetry)
    _pool_routes(router, registry, commands)
    _server_routes(router, registry, commands)
    if reload is not None:
        _reload_route(router, reload)
    if faults is not None:
        fault_routes(router, faults)
    if lab is not None:
        lab_routes(router, lab)
    if extra_routes is not None:
        extra_routes(router)
    checks = [token_check(token, public_reads, attempts)]
    if host_check is not None:
        checks.insert(0, host_check)
    return App(router, [refusing(c) for c in checks], refused, admission=first_refusal(*checks))


def _reload_route(router: Router[Any], reload: Reload) -> None:
    @router.post("/api/reload")
    async def reload_config(request: Request) -> Response:
        try:
            change, problems = await reload()
        except ConfigError as error:
            raise HTTPError(400, str(error)) from None
        return json_response(
            {
                "changes": change.changes(),
                "restart_needed": change.restart_needed,
                "problems": problems,
            }
        )


def _stats_routes(router: Router[Any], telemetry: Telemetry) -> None:
    @router.get("/api/stats")
    async def stats(request: Request) -> Response:
        return json_response(telemetry.snapshot())

    @router.get("/api/decisions")
    async def decisions(request: Request) -> Response:
        """Recorded selections, newest first (?pool=P&server=ID&limit=N)."""
        query = {key: values[0] for key, values in request.query.items()}
        limit = query.get("limit", "50")
        if not limit.isdigit() or not 1 <= int(limit) <= 200:
            raise HTTPError(422, "validation failed", field="limit", detail="1 to 200")
        found = telemetry.decisions.recent(query.get("pool"), query.get("server"), int(limit))
        return json_response(found)

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(
            200, telemetry.prometheus(), content_type="text/plain; version=0.0.4; charset=utf-8"
        )


def _pool_routes(router: Router[Any], registry: Registry, commands: Commands) -> None:
    @router.get("/api/pools")
    async def list_pools(request: Request) -> Response:
        return json_response([commands.pool_detail(name) for name in registry.pools])

    @router.post("/api/pools", body=PoolCreate)
    async def create_pool(request: Request) -> Response:
        body: PoolCreate = request.data
        detail = await commands.create_pool(
            body.name, body.algorithm, body.health, body.outlier, body.balancing
        )
        return json_response(detail, 201)

    @router.get("/api/pools/{pool}")
    async def get_pool(request: Request) -> Response:
        return json_response(commands.pool_detail(str(request.params["pool"])))

    @router.patch("/api/pools/{pool}", body=PoolUpdate)
    async def update_pool(request: Request) -> Response:
        name = str(request.params["pool"])
        body: PoolUpdate = request.data
        await commands.update_pool(
            name,
            algorithm=body.algorithm,
            health=body.health,
            outlier=body.outlier,
            balancing=body.balancing,
        )
        return json_response(commands.pool_detail(name))

    @router.delete("/api/pools/{pool}")
    async def delete_pool(request: Request) -> Response:
        name = str(request.params["pool"])
        await commands.delete_pool(name)
        return json_response({"removed": name})


def _server_routes(router: Router[Any], registry: Registry, commands: Commands) -> None:
    @router.post("/api/pools/{pool}/servers", body=ServerCreate)
    async def register(request: Request) -> Response:
        body: ServerCreate = request.data
        created, view = await commands.register(
            str(request.params["pool"]),
            body.host,
            body.port,
            server_id=body.id,
            weight=body.weight,
            health=body.health,
        )
        return json_response(view, 201 if created else 200)

    @router.get("/api/pools/{pool}/servers/{id}")
    async def get_server(request: Request) -> Response:
        record = registry.record(str(request.params["pool"]), str(request.params["id"]))
        return json_response(registry.server_view(record))

    @router.patch("/api/pools/{pool}/servers/{id}", body=ServerUpdate)
    async def update_server(request: Request) -> Response:
        body: ServerUpdate = request.data
        record = await commands.update_server(
            str(request.params["pool"]),
            str(request.params["id"]),
            weight=body.weight,
            admin=body.admin,
        )
        return json_response(registry.server_view(record))

    @router.delete("/api/pools/{pool}/servers/{id}")
    async def deregister(request: Request) -> Response:
        pool, server_id = str(request.params["pool"]), str(request.params["id"])
        await commands.deregister(pool, server_id)
        return json_response({"removed": server_id, "pool": pool})
