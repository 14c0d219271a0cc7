"""The dashboard's middlewares besides the security headers (`assets.py`): the guard in
front of every change, and errors shown as pages.

Reading needs nothing (unless `public_reads` is off: then a login, as for changes); every
change needs a login with the admin token (session cookie and CSRF token: `session.py`) and
a same-origin request.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode, urlsplit

import orjson

from ..app import JSON, AnyResponse, CallNext, HTTPError, Request, Response
from ..session import Sessions
from .forms import form_of, parse_form, redirect, wants_json
from .state import Dashboard

SAFE_METHODS = frozenset({"GET", "HEAD"})
OPEN_ROUTES = frozenset({"/login", "/static/{name}"})  # readable before logging in


class Guard:
    """Every change needs a session and its CSRF token, and a same-origin request.

    `refusal` (also the app's admission: such a body is never read) checks what the head
    shows: the origin and the session; the middleware then checks the form's CSRF token."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash

    def refusal(self, request: Request) -> HTTPError | None:
        if request.method in SAFE_METHODS or request.route is None:
            if self._login_to_read(request):
                return HTTPError(403, "log in with the admin token first")
            return None
        origin = request.headers.get("origin")
        # Browsers send Origin with every POST: another site's page is refused here even
        # before the cookie (SameSite=Strict) and the CSRF token would stop it.
        if origin and urlsplit(origin).netloc != request.headers.get("host", ""):
            return HTTPError(403, "cross-origin request refused")
        if request.route != "/login" and self.dash.session(request) is None:
            return HTTPError(403, "log in with the admin token first")
        return None

    def _login_to_read(self, request: Request) -> bool:
        return (
            not self.dash.context.public_reads
            and request.route not in OPEN_ROUTES
            and self.dash.session(request) is None
        )

    async def __call__(self, request: Request, call_next: CallNext) -> AnyResponse:
        if (
            request.method in SAFE_METHODS
            and request.route not in (None, "/events")
            and not wants_json(request)
            and self._login_to_read(request)
        ):
            query = urlencode(request.query, doseq=True)
            target = request.path + (f"?{query}" if query else "")
            return redirect(f"/login?next={quote(target, safe='')}")
        refusal = self.refusal(request)
        if refusal is not None:
            raise refusal
        if request.method in SAFE_METHODS or request.route is None:
            return await call_next(request)
        request.data = parse_form(request)
        if request.route == "/login":
            return await call_next(request)
        presented = request.headers.get("x-csrf-token") or form_of(request).get("csrf")
        if not Sessions.csrf_ok(self.dash.session(request), presented):
            raise HTTPError(403, "missing or wrong CSRF token: reload the page")
        return await call_next(request)


class ErrorPages:
    """Errors reach a browser as a page, a script (Accept: JSON) as JSON."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash

    async def __call__(self, request: Request, call_next: CallNext) -> AnyResponse:
        try:
            response = await call_next(request)
        except HTTPError as error:
            response = error.response()
        if (
            isinstance(response, Response)
            and response.status >= 400
            and response.content_type == JSON
            and not wants_json(request)
        ):
            return self.page(request, response)
        return response

    def page(self, request: Request, response: Response) -> Response:
        """The error page for a JSON error `response`, keeping its headers (Allow,
        Retry-After) but not its Cache-Control: the page's own says no-store."""
        try:
            message = str(orjson.loads(response.body).get("error", ""))
        except (orjson.JSONDecodeError, AttributeError):
            message = ""
        page = self.dash.render(
            request,
            "error.html",
            response.status,
            title=f"{response.status}",
            page="error",
            code=response.status,
            message=message or "something went wrong",
            boot={},
        )
        page.headers.extend(h for h in response.headers if h[0].lower() != "cache-control")
        return page
