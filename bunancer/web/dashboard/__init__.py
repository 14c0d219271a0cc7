"""The dashboard: server-rendered pages kept live by SSE, and the actions behind their forms.

`build_dashboard` wires the routes and middlewares to the modules that own each idea:
`pages` (the pages, login, `/events`, stub logs), `actions` (`/actions/...`: the control
plane's commands, or the stubs SDK), `views` (the data pages render, the overview's filter
and sort), `flow` (the flow graph's layout), `format` (the templates' filters), `assets`
(static files, security headers), `stubs` (the bridge to the stubs SDK), `forms` and
`middleware` (form posts, the login and CSRF guard, error pages) and `state` (what they
share: templates, sessions, the per-second summary).

What a page lists (the overview's filter, sort and pools shown whole; the flow view's
expanded pools) is in its URL query, which the live refresh carries too: a reload, a link
and a live refresh all show the same.
"""

from __future__ import annotations

from ..api import refused
from ..app import App, Handler, first_refusal, refusing
from ..router import Router
from .actions import Actions, FaultActions
from .assets import security_headers
from .format import fmt_duration, fmt_ms, fmt_pct, fmt_rps
from .lab import LabPage
from .middleware import ErrorPages, Guard
from .pages import Pages
from .state import Dashboard, DashboardContext

__all__ = [
    "DashboardContext",
    "build_dashboard",
    "fmt_duration",
    "fmt_ms",
    "fmt_pct",
    "fmt_rps",
]


def build_dashboard(context: DashboardContext) -> App:
    """The dashboard's app: its routes behind the security headers, error pages and guard."""
    dash = Dashboard(context)
    pages, actions, faults = Pages(dash), Actions(dash), FaultActions(dash)
    lab = LabPage(dash)
    router: Router[Handler] = Router()
    for pattern, page in (
        ("/", pages.overview),
        ("/flow", pages.flow),
        ("/routing", pages.routing),
        ("/settings", pages.settings),
        ("/faults", pages.faults),
        ("/decisions", pages.decisions),
        ("/lab", lab.page),
        ("/lab/results/{id}", lab.result_page),
        ("/lab/results/{id}/json", lab.result_json),
        ("/servers/{pool}/{id}", pages.server),
        ("/panels/servers/{pool}/{id}", pages.server_panel),
        ("/panels/pools/{pool}", pages.pool_panel),
        ("/login", pages.login_form),
        ("/events", pages.events),
        ("/stubs/{id}/log", pages.stub_log),
        ("/stubs/{id}/log/stream", pages.stub_log_stream),
        ("/static/{name}", dash.static.serve),
    ):
        router.add("GET", pattern, page)
    router.add("POST", "/login", pages.login)
    router.add("POST", "/logout", pages.logout)
    for pattern, action in (
        ("/actions/servers/{pool}/{id}/admin", actions.server_admin),
        ("/actions/servers/{pool}/{id}/weight", actions.server_weight),
        ("/actions/servers/{pool}/{id}/remove", actions.server_remove),
        ("/actions/pools/{pool}/settings", actions.pool_settings),
        ("/actions/pools/{pool}/stubs", actions.add_stub),
        ("/actions/stubs/{id}/behaviour", actions.stub_behaviour),
        ("/actions/stubs/{id}/stop", actions.stub_stop),
        ("/actions/faults", faults.add),
        ("/actions/faults/{id}/remove", faults.remove),
        ("/actions/lab", lab.start),
        ("/actions/lab/stop", lab.stop),
        ("/actions/lab/stubs/{id}/{what}", lab.stub_fault),
    ):
        router.add("POST", pattern, actions.handler(action))
    # The first runs outermost: error pages get the security headers too.
    guard = Guard(dash)
    first = [] if context.host_check is None else [context.host_check]
    return App(
        router,
        [security_headers, ErrorPages(dash), *map(refusing, first), guard],
        refused,
        first_refusal(*first, guard.refusal),
    )
