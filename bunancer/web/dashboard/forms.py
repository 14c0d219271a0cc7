"""The request side of the dashboard's forms, shared by pages, actions and middlewares:
the posted fields, whether a script or a browser asked, and safe redirects back.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from ..app import HTTPError, Request, Response


def form_of(request: Request) -> dict[str, str]:
    """The fields the guard parsed from the request's body (none for a GET)."""
    if isinstance(request.data, dict):
        return request.data
    return {}


def parse_form(request: Request) -> dict[str, str]:
    """A urlencoded body's fields, the first value of each; {} for any other body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded" or not request.body:
        return {}
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, "form data must be UTF-8") from None
    return {name: values[0] for name, values in parse_qs(text, keep_blank_values=True).items()}


def wants_json(request: Request) -> bool:
    """Whether a script asked (Accept: JSON): it gets JSON, a browser a page or a redirect."""
    return "application/json" in request.headers.get("accept", "")


def safe_path(value: str | None, default: str = "/") -> str:
    """A same-site path to go back to (never another host: no open redirect)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


def redirect(location: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """303 See Other: after a form post the browser GETs `location`."""
    return Response(303, b"", [("Location", location), *(headers or [])])
