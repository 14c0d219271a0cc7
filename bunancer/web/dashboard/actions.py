"""The `/actions/...` handlers behind the dashboard's forms and buttons, and their form
helpers.

Changes to servers and pools go through the control plane's commands (`context.commands`:
validated, applied, saved; the API's own write path); stubs are started, changed and stopped
through the stubs SDK in a worker thread (it blocks). An action answers the page's script
with JSON, or a plain form post with a redirect back and a flash message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ...config import ALGORITHMS
from ...control.faults import FaultBook
from ...control.records import RegistryError
from ..api import refusal_as_http
from ..app import Handler, HTTPError, Request, Response, json_response
from ..faults import fault_from_form
from .forms import form_of, redirect, safe_path, wants_json
from .state import Dashboard
from .stubs import recheck_servers_of

log = logging.getLogger("bunancer.dashboard")

# An action: what it did, in words; it raises HTTPError or RegistryError when refused.
Action = Callable[[Request], Awaitable[str]]
ADMIN_ACTIONS = {"drain": "draining", "disable": "disabled", "enable": "enabled"}
HEALTH_FIELDS = {  # the health settings the Settings page edits, and their types
    "path": str,
    "expect": str,
    "interval": float,
    "timeout": float,
    "rise": int,
    "fall": int,
    "dead_after": int,
}
BEHAVIOUR_FIELDS = ("status", "latency", "fail_rate", "mode", "health")


class Actions:
    """The actions; `handler` turns one into a route handler."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash
        self.context = dash.context
        self.registry = dash.registry

    def handler(self, action: Action) -> Handler:
        async def handle(request: Request) -> Response:
            return await self.act(request, action)

        return handle

    async def act(self, request: Request, action: Action) -> Response:
        """Run an action; answer JSON to the script, or redirect back with a message."""
        from stubs.behaviour import BehaviourError
        from stubs.sdk import StubError

        session = self.dash.require_session(request)
        try:
            message, status, ok = await action(request), 200, True
        except (HTTPError, RegistryError) as error:
            refused = refusal_as_http(error) if isinstance(error, RegistryError) else error
            message, status, ok = said_by(refused), refused.status, False
        except (StubError, BehaviourError) as error:
            message, status, ok = str(error), 400, False
        log.info("dashboard action %s %s: %s", request.method, request.path, message)
        if wants_json(request):
            return json_response({"ok": ok, "message": message}, status)
        session.flash(message, "ok" if ok else "error")
        return redirect(safe_path(form_of(request).get("back")))

    def server_of(self, request: Request) -> tuple[str, str]:
        """The (pool, id) of the path's server; 404 when there is none."""
        pool, server_id = str(request.params["pool"]), str(request.params["id"])
        self.registry.server(pool, server_id)
        return pool, server_id

    # -- servers -------------------------------------------------------------------------------

    async def server_admin(self, request: Request) -> str:
        """POST /actions/servers/{pool}/{id}/admin: drain, disable or enable."""
        pool, server_id = self.server_of(request)
        admin = ADMIN_ACTIONS.get(form_of(request).get("action", ""))
        if admin is None:
            raise HTTPError(422, "action must be drain, disable or enable")
        await self.context.commands.update_server(pool, server_id, admin=admin)  # type: ignore[arg-type]
        return f"{pool}/{server_id}: {admin}"

    async def server_weight(self, request: Request) -> str:
        """POST /actions/servers/{pool}/{id}/weight"""
        pool, server_id = self.server_of(request)
        weight = int_field(form_of(request), "weight", 1, 10000)
        await self.context.commands.update_server(pool, server_id, weight=weight)
        return f"{pool}/{server_id}: weight {weight}"

    async def server_remove(self, request: Request) -> str:
        """POST /actions/servers/{pool}/{id}/remove"""
        pool, server_id = self.server_of(request)
        await self.context.commands.deregister(pool, server_id, "removed from the dashboard")
        return f"{pool}/{server_id}: removed"

    # -- pools ---------------------------------------------------------------------------------

    async def pool_settings(self, request: Request) -> str:
        """POST /actions/pools/{pool}/settings: algorithm, health checks and weights."""
        name = str(request.params["pool"])
        self.registry.pool(name)
        form = form_of(request)
        algorithm = form.get("algorithm") or None
        if algorithm is not None and algorithm not in ALGORITHMS:
            raise HTTPError(422, "validation failed", field="algorithm", detail="unknown")
        changed = await self.context.commands.update_pool(
            name,
            algorithm=algorithm,
            health=health_patch(form) or None,
            weights=self.weights(name, form),
        )
        said = ", ".join(changed) or "nothing changed"
        return f"pool {name}: {said}"

    def weights(self, pool: str, form: dict[str, str]) -> dict[str, int]:
        """The weights a settings form filled in (`weight.ID`), by server id; every id must be
        a server of the pool (404 otherwise)."""
        weights: dict[str, int] = {}
        for key, raw in form.items():
            if key.startswith("weight.") and raw.strip():
                server_id = key.removeprefix("weight.")
                self.registry.record(pool, server_id)
                weights[server_id] = int_field(form, key, 1, 10000)
        return weights

    # -- stubs ---------------------------------------------------------------------------------

    async def add_stub(self, request: Request) -> str:
        """POST /actions/pools/{pool}/stubs: start a stub that registers in the pool."""
        name = str(request.params["pool"])
        self.registry.pool(name)
        behaviour = behaviour_fields(form_of(request))
        stubs = self.dash.stubs
        started = await stubs.run(
            stubs.manager.start,
            1,
            pool=name,
            register=True,
            api=self.context.api_url or None,
            token=self.context.token,
            behaviour=behaviour or None,
        )
        stubs.invalidate()
        stub = started[0]
        return f"stub {stub.id} started on {stub.host}:{stub.port}, joining pool {name}"

    async def stub_behaviour(self, request: Request) -> str:
        """POST /actions/stubs/{id}/behaviour"""
        stub_id = str(request.params["id"])
        changes = behaviour_fields(form_of(request))
        if not changes:
            raise HTTPError(422, "nothing to change")
        stubs = self.dash.stubs
        behaviour = await stubs.run(stubs.manager.set, stub_id, **changes)
        stubs.invalidate()
        recheck_servers_of(self.registry, await stubs.run(stubs.manager.get, stub_id))
        return f"stub {stub_id}: {behaviour.describe()}"

    async def stub_stop(self, request: Request) -> str:
        """POST /actions/stubs/{id}/stop"""
        stub_id = str(request.params["id"])
        await self.dash.stubs.run(self.dash.stubs.manager.stop, stub_id)
        self.dash.stubs.invalidate()
        return f"stub {stub_id} stopped"


class FaultActions:
    """The Faults page's forms: set a rule, end one (the API's rules, control/faults.py)."""

    def __init__(self, dash: Dashboard) -> None:
        self.faults = dash.context.faults

    def book(self) -> FaultBook:
        if self.faults is None:
            raise HTTPError(404, "this balancer has no fault rules")
        return self.faults

    async def add(self, request: Request) -> str:
        """POST /actions/faults."""
        body = fault_from_form(form_of(request))
        view = await self.book().add(body.pool, body.rule(), body.seconds)
        return f"fault {view['id']} set for {body.seconds:g} s: {view['summary']}"

    async def remove(self, request: Request) -> str:
        """POST /actions/faults/{id}/remove."""
        view = await self.book().remove(str(request.params["id"]))
        return f"fault {view['id']} removed: {view['summary']}"


def int_field(form: dict[str, str], key: str, low: int, high: int) -> int:
    """The form's `key` as a whole number from `low` to `high` (422 naming it otherwise)."""
    raw = form.get(key, "").strip()
    try:
        value = int(raw)
    except ValueError:
        raise HTTPError(422, "validation failed", field=key, detail="a whole number") from None
    if not low <= value <= high:
        raise HTTPError(422, "validation failed", field=key, detail=f"between {low} and {high}")
    return value


def health_patch(form: dict[str, str]) -> dict[str, Any]:
    """The health settings a form filled in (`health.KEY`), typed; blank ones are left as
    they are."""
    patch: dict[str, Any] = {}
    for key, kind in HEALTH_FIELDS.items():
        raw = form.get(f"health.{key}")
        if raw is None or raw.strip() == "":
            continue
        try:
            patch[key] = kind(raw.strip())
        except ValueError:
            raise HTTPError(
                422, "validation failed", field=f"health.{key}", detail="not a number"
            ) from None
    return patch


def behaviour_fields(form: dict[str, str]) -> dict[str, str]:
    """The stub behaviour fields a form filled in (the SDK validates them)."""
    return {key: form[key].strip() for key in BEHAVIOUR_FIELDS if form.get(key, "").strip()}


def said_by(error: HTTPError) -> str:
    """A refusal as one line for the flash message: the field and what is wrong with it."""
    detail = error.extra.get("detail")
    if not detail:
        return error.message
    field = error.extra.get("field")
    return f"{field}: {detail}" if field else f"{error.message}: {detail}"
