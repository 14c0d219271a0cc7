"""The dashboard app (placeholder until the dashboard issue fills it in)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .http import App, Request, Response, html_response
from .router import Router

if TYPE_CHECKING:
    from ..core.events import EventBus
    from ..core.registry import Registry
    from ..core.telemetry import Telemetry


@dataclass
class DashboardContext:
    """What the dashboard reads and acts on; built by the app."""

    registry: Registry
    telemetry: Telemetry
    bus: EventBus
    token: str
    state_dir: str
    save: object  # async () -> None: make registry changes durable


def build_dashboard(context: DashboardContext) -> App:
    router: Router[object] = Router()

    @router.get("/")
    async def overview(request: Request) -> Response:
        return html_response("<!doctype html><title>bunancer</title><h1>bunancer</h1>")

    return App(router)  # type: ignore[arg-type]
