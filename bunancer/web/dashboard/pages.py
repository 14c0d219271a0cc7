"""The dashboard's pages: overview, flow, routing, settings, a server's page, the panels the
flow view opens, login and logout, the live event stream, and stub logs.

Pages are rendered by Jinja2 with their data and read fine without JavaScript;
`static/dashboard.js` then keeps them live from `/events`: bus events (state changes with
reasons, servers and pools coming and going, the one-second `stats.tick` that drives the
flow animation) plus the per-second summary (`views.Summaries`). When the set of servers
changes, the script fetches the page's content again (`?partial=1`), so the markup has one
source: the templates.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from ...control.events import (
    FAULT_ADDED,
    FAULT_REMOVED,
    LAB_ENDED,
    LAB_STARTED,
    LAB_TICK,
    POOL_ADDED,
    POOL_REMOVED,
    POOL_UPDATED,
    SERVER_ADDED,
    SERVER_CHECKED,
    SERVER_REMOVED,
    SERVER_STATE,
    SERVER_UPDATED,
    STATS_TICK,
)
from .. import sse
from ..app import HTTPError, Request, Response, StreamResponse
from ..auth import token_matches, too_many_attempts
from ..session import clear_cookie, over_https, set_cookie
from .flow import flow_layout
from .forms import form_of, redirect, safe_path
from .state import Dashboard
from .stubs import LOG_FOLLOWERS, StubDirectory, follow_log
from .views import ORDERS, OVERVIEW_ROWS, SORTS, STATE_FILTERS, ServerFilter, Summaries

# The bus events an open page follows (`?checks=1` adds every health check: the server page).
LIVE_KINDS = (
    SERVER_ADDED,
    SERVER_REMOVED,
    SERVER_STATE,
    SERVER_UPDATED,
    POOL_ADDED,
    POOL_REMOVED,
    POOL_UPDATED,
    STATS_TICK,
    FAULT_ADDED,
    FAULT_REMOVED,
    LAB_STARTED,
    LAB_TICK,
    LAB_ENDED,
)
# What each algorithm's estimate is (the decisions page says it under each decision).
ESTIMATES = {
    "peak-ewma": "Estimate: the server's latency estimate in µs x (in flight + 1) / weight, "
    "for two servers drawn at random; costs within 25% or 1 ms of each other count as "
    "equal, and the first drawn is taken.",
    "p2c": "Estimate: (in flight + 1) / weight, for two servers drawn at random; the lower wins.",
    "least-connections": "Estimate: (in flight + 1) / weight; the lowest wins, ties in turn.",
}
LIVE_PAGES = 64  # open /events streams (each holds a subscription's queue of 256 events)


class Pages:
    """The GET handlers, and the login form's posts."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash
        self.context = dash.context
        self.registry = dash.registry

    # -- the tabs ------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        """GET /: the summary, every pool's servers (filtered and sorted) and the feed."""
        dash = self.dash
        pools = await dash.views.pools()
        _, summary, _ = dash.summaries.current()
        view = ServerFilter.from_query(request.query)
        for pool in pools:
            pool["rows"], pool["matching"] = view.rows(pool)
        feed = dash.views.feed()
        histories = {server["key"]: server["history"] for pool in pools for server in pool["rows"]}
        return dash.render(
            request,
            "overview.html",
            title="Overview",
            page="overview",
            pools=pools,
            summary=summary,
            feed=feed,
            view=view,
            shown=sum(len(pool["rows"]) for pool in pools),
            listed_of=sum(len(pool["servers"]) for pool in pools),
            state_filters=STATE_FILTERS,
            sorts=SORTS,
            orders=ORDERS,
            rows_max=OVERVIEW_ROWS,
            boot=dash.boot({"histories": histories}),
        )

    async def flow(self, request: Request) -> Response:
        """GET /flow: the graph of balancer, pools and servers (`?expand=POOL` opens a big
        pool drawn collapsed)."""
        dash = self.dash
        pools = await dash.views.pools()
        _, summary, _ = dash.summaries.current()
        expanded = frozenset(request.query.get("expand", [])) & set(self.registry.pools)
        return dash.render(
            request,
            "flow.html",
            title="Flow",
            page="flow",
            layout=flow_layout(pools, expanded),
            summary=summary,
            pools=pools,
            boot=dash.boot(),
        )

    async def routing(self, request: Request) -> Response:
        """GET /routing: the listeners and the routes, in the order they are tried."""
        return self.dash.render(
            request,
            "routing.html",
            title="Routing",
            page="routing",
            listeners=self.context.telemetry.listeners_view(),
            routes=self.context.routes,
            pools=sorted(self.registry.pools),
            api_address=self.context.api_address,
            boot={},
        )

    async def faults(self, request: Request) -> Response:
        """GET /faults: the lab's fault rules in effect, and the form to set one."""
        return self.dash.render(
            request,
            "faults.html",
            title="Faults",
            page="faults",
            pools=sorted(self.registry.pools),
            boot=self.dash.boot(),
        )

    async def decisions(self, request: Request) -> Response:
        """GET /decisions[?pool=P&server=ID]: the recorded selections, newest first."""
        query = {key: values[0] for key, values in request.query.items()}
        log = self.context.telemetry.decisions
        pool, server = query.get("pool") or None, query.get("server") or None
        return self.dash.render(
            request,
            "decisions.html",
            title="Why this server",
            page="decisions",
            decisions=log.recent(pool, server, 50),
            recorded=log.recorded,
            pool=pool,
            server=server,
            estimates=ESTIMATES,
            boot={},
        )

    async def settings(self, request: Request) -> Response:
        """GET /settings: every pool's algorithm, health checks and weights."""
        pools = await self.dash.views.pools()
        return self.dash.render(
            request, "settings.html", title="Settings", page="settings", pools=pools, boot={}
        )

    # -- a server or a pool --------------------------------------------------------------------

    async def server_data(self, request: Request) -> dict[str, Any]:
        """What the path's server shows (404 when there is none)."""
        return await self.dash.views.server(str(request.params["pool"]), str(request.params["id"]))

    async def server(self, request: Request) -> Response:
        """GET /servers/{pool}/{id}: a server's figures, checks and changes."""
        data = await self.server_data(request)
        server = data["server"]
        return self.dash.render(
            request,
            "server.html",
            title=f"{server['pool']}/{server['id']}",
            page="server",
            boot=self.dash.boot({"key": server["key"], "series": data["series"]}),
            **data,
        )

    async def server_panel(self, request: Request) -> Response:
        """GET /panels/servers/{pool}/{id}: the server's panel the flow view opens."""
        data = await self.server_data(request)
        request.query["partial"] = ["1"]  # a panel is never inside the layout
        return self.dash.render(request, "panel_server.html", title="", page="panel", **data)

    async def pool_panel(self, request: Request) -> Response:
        """GET /panels/pools/{pool}: the pool's panel the flow view opens."""
        name = str(request.params["pool"])
        if name not in self.registry.pools:
            raise HTTPError(404, f"no pool {name!r}")
        pool = self.dash.views.pool(name, await self.dash.stubs.by_address())
        request.query["partial"] = ["1"]
        return self.dash.render(request, "panel_pool.html", title="", page="panel", pool=pool)

    # -- login ---------------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        """GET /login"""
        after = safe_path((request.query.get("next") or ["/"])[0])
        return self.dash.render(
            request, "login.html", title="Log in", page="login", next=after, error="", boot={}
        )

    async def login(self, request: Request) -> Response:
        """POST /login: the admin token opens a session (a new one: no fixation)."""
        dash = self.dash
        form = form_of(request)
        after = safe_path(form.get("next"))
        attempts, client = self.context.attempts, request.client_ip
        waiting = too_many_attempts(attempts, client)
        if waiting is not None:
            seconds = waiting.extra["retry_after"]
            page = self._login_page(
                request, after, f"Too many wrong tokens: wait {seconds} s.", 429
            )
            page.headers.append(("Retry-After", str(seconds)))
            return page
        # token_matches compares in constant time; the form's field plays the bearer token.
        if not token_matches(self.context.token, f"Bearer {form.get('token', '').strip()}"):
            attempts.failed(client, "dashboard login")
            return self._login_page(request, after, "That is not the admin token.", 403)
        attempts.succeeded(client)
        name = dash.cookie(request)
        dash.sessions.delete(request.cookies.get(name))
        session = dash.sessions.create()
        session.flash("Logged in: actions are enabled.")
        cookie = set_cookie(
            name, session, dash.sessions.ttl, request.tls or over_https(request.headers)
        )
        return redirect(after, [("Set-Cookie", cookie)])

    def _login_page(self, request: Request, after: str, error: str, status: int) -> Response:
        return self.dash.render(
            request, "login.html", status, title="Log in", page="login", next=after, error=error,
            boot={},
        )  # fmt: skip

    async def logout(self, request: Request) -> Response:
        """POST /logout"""
        name = self.dash.cookie(request)
        self.dash.sessions.delete(request.cookies.get(name))
        return redirect("/", [("Set-Cookie", clear_cookie(name))])

    # -- live ----------------------------------------------------------------------------------

    async def events(self, request: Request) -> StreamResponse:
        """GET /events: the bus events the pages follow, and the summary once a second."""
        live = self.dash.live_streams
        live.difference_update([stream for stream in live if stream.subscription.closed])
        if len(live) >= LIVE_PAGES:
            raise HTTPError(
                503, "too many live pages open; close one", headers={"Retry-After": "5"}
            )
        kinds = list(LIVE_KINDS)
        if request.query.get("checks") == ["1"]:
            kinds.append(SERVER_CHECKED)
        after = sse.last_event_id(request.headers, request.query)
        subscription, gap = sse.open_subscription(self.context.bus, kinds, after)
        newest = self.dash.newest_event_id()
        last_id = after if after is not None and not gap else newest
        prelude = [sse.frame(b"{}", event="resync", id=last_id)] if gap else []
        stream = sse.event_stream(
            subscription,
            self.dash.frames,
            last_id=last_id,
            prelude=prelude,
            pulse=SummaryPulse(self.dash.summaries),
            pulse_after=frozenset({STATS_TICK}),
        )
        live.add(stream)
        return StreamResponse(stream, headers=sse.HEADERS, content_type=sse.CONTENT_TYPE)

    # -- stub logs (need a login: they show the traffic) ----------------------------------------

    async def stub_log(self, request: Request) -> Response:
        """GET /stubs/{id}/log: the last lines of a stub's access log (then live)."""
        from stubs.sdk import StubError

        dash = self.dash
        if dash.session(request) is None:
            return redirect(f"/login?next={quote(request.path)}")
        stub_id = str(request.params["id"])
        try:
            lines = await dash.stubs.run(dash.stubs.manager.tail, stub_id, 200)
        except StubError as error:
            raise HTTPError(404, str(error)) from None
        return dash.render(
            request, "log.html", title=f"log of {stub_id}", page="log", stub=stub_id, lines=lines,
            boot={},
        )  # fmt: skip

    async def stub_log_stream(self, request: Request) -> StreamResponse:
        """GET /stubs/{id}/log/stream: a stub's access log as it is written (SSE)."""
        from stubs.sdk import StubError

        stubs = self.dash.stubs
        self.dash.require_session(request)
        stub_id = str(request.params["id"])
        try:
            await stubs.run(stubs.manager.log_path, stub_id)
        except StubError as error:
            raise HTTPError(404, str(error)) from None
        if stubs.followers >= LOG_FOLLOWERS:
            raise HTTPError(503, "too many live logs open; close one", headers={"Retry-After": "5"})
        raw = (request.query.get("lines") or ["50"])[0]
        backlog = min(int(raw), 500) if raw.isdigit() else 50  # lines before the live ones
        return StreamResponse(
            log_frames(stubs, stub_id, backlog), headers=sse.HEADERS, content_type=sse.CONTENT_TYPE
        )


class SummaryPulse:
    """The `pulse` of one event stream: the summary, when it changed since this stream
    last sent it (one computation serves every open tab)."""

    def __init__(self, summaries: Summaries) -> None:
        self.summaries = summaries
        self.sent = -1  # the version last sent

    def __call__(self, last_id: int) -> bytes | None:
        version, _, body = self.summaries.current()
        if version == self.sent:
            return None
        self.sent = version
        return sse.frame(body, event="summary", id=last_id)


async def log_frames(stubs: StubDirectory, stub_id: str, backlog: int) -> AsyncIterator[bytes]:
    """A stub's log lines as SSE frames, `backlog` old ones first; counted among the
    followers while it runs."""
    from stubs.sdk import StubError

    stubs.followers += 1
    try:
        yield b"retry: 3000\n\n"
        async for line in follow_log(stubs, stub_id, backlog):
            if line is None:
                yield sse.frame("lines skipped: the page fell behind", event="skipped")
            else:
                yield sse.frame(line, event="line")
        yield sse.frame("", event="end")  # the stub stopped: do not reconnect
    except StubError as error:
        yield sse.frame(str(error), event="end")
    finally:
        stubs.followers -= 1
