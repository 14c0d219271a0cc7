"""What the dashboard's handlers share: the context the app hands over (`DashboardContext`)
and the state built from it (`Dashboard`): templates, sessions, static files, stubs, the
shared summary, and how a page is rendered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from ...config import ALGORITHMS
from ...control.commands import Commands
from ...control.events import EventBus
from ...control.faults import FaultBook
from ...control.figures import STATES
from ...control.lab import Lab
from ...control.registry import Registry
from ...control.telemetry import Telemetry
from .. import sse
from ..app import HTML, Admission, HTTPError, Request, Response
from ..attempts import FailedAttempts
from ..session import Session, Sessions, cookie_name
from .assets import StaticFiles
from .format import (
    fmt_ago,
    fmt_clock,
    fmt_duration,
    fmt_ms,
    fmt_pct,
    fmt_rps,
    points,
    url_segment,
)
from .stubs import StubDirectory
from .views import Summaries, Views


@dataclass
class DashboardContext:
    """What the dashboard reads and acts on; built by the app."""

    registry: Registry
    telemetry: Telemetry
    bus: EventBus
    token: str
    state_dir: str
    commands: Commands  # every change: validated, applied, saved
    faults: FaultBook | None = None  # the lab's fault rules (the banner, the Faults page)
    lab: Lab | None = None  # the algorithm lab's experiments (the Lab page)
    api_url: str = ""  # the registry API, for stubs to register ("" = the SDK's default)
    routes: list[dict[str, Any]] = field(default_factory=list)  # in the order they are tried
    api_address: str = ""
    public_reads: bool = True  # pages without a login (else every page but /login needs one)
    host_check: Admission | None = None  # refuses a Host it does not allow (hosts.HostCheck)
    attempts: FailedAttempts = field(default_factory=FailedAttempts)  # wrong tokens, shared


class Dashboard:
    """The dashboard's state: templates, static files, sessions, stubs and the shared
    summary, built once and handed to the page and action handlers."""

    def __init__(self, context: DashboardContext) -> None:
        self.context = context
        self.registry = context.registry
        self.sessions = Sessions()
        self.static = StaticFiles()
        self.summaries = Summaries(context.registry, context.telemetry, context.bus)
        self.frames = sse.FrameCache()
        self.live_streams: set[sse.EventStream] = set()  # open /events streams, for their cap
        self.stubs = StubDirectory(context.state_dir)
        self.views = Views(context.registry, context.bus, self.stubs)
        self.env = Environment(
            loader=PackageLoader("bunancer.web", "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            rps=fmt_rps,
            pct=fmt_pct,
            ms=fmt_ms,
            ago=fmt_ago,
            clock=fmt_clock,
            duration=fmt_duration,
            seg=url_segment,
        )
        self.env.globals.update(
            static=self.static.url, states=STATES, points=points, algorithms=ALGORITHMS
        )

    def cookie(self, request: Request) -> str:
        """The session cookie's name: it carries the dashboard's port, so two balancers on
        one host keep their logins apart."""
        return cookie_name(request.headers.get("host"))

    def session(self, request: Request) -> Session | None:
        """The request's login session, if its cookie names a live one (a page's own live
        refresh, `?partial=1`, does not count as the user being active)."""
        active = request.query.get("partial") != ["1"]
        return self.sessions.get(request.cookies.get(self.cookie(request)), touch=active)

    def require_session(self, request: Request) -> Session:
        session = self.session(request)
        if session is None:
            raise HTTPError(403, "log in with the admin token first")
        return session

    def render(
        self,
        request: Request,
        content: str,
        status: int = 200,
        *,
        title: str,
        page: str,
        **data: Any,
    ) -> Response:
        """A page: `content` inside the layout, or alone for `?partial=1` (live refresh)."""
        session = self.session(request)
        data.update(
            user=session is not None,
            csrf=session.csrf if session else "",
            path=request.path,
            page=page,
            title=title,
            faults=self.context.faults.views() if self.context.faults is not None else [],
        )
        if request.query.get("partial") == ["1"]:
            html = self.env.get_template(content).render(data)
        else:
            flashes = session.take_flashes() if session else []
            html = self.env.get_template("layout.html").render(
                data, content=content, flashes=flashes
            )
        headers = [("Cache-Control", "no-store")]  # pages carry the CSRF token
        return Response(status, html, headers, HTML)

    def boot(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The data a page's script starts from (then SSE takes over)."""
        _, summary, _ = self.summaries.current()
        return {
            "summary": summary,
            "seq": summary["seq"],
            # The script's EventSource resumes from here: nothing between render and connect
            # is lost.
            "last_id": self.newest_event_id(),
            **(extra or {}),
        }

    def newest_event_id(self) -> int:
        """The id of the bus's newest event (0 before the first)."""
        newest = self.context.bus.recent(None, limit=1)
        return newest[-1].id if newest else 0
