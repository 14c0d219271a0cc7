"""The dashboard's static files and the security headers every response carries.

The files of `static/` are read once (they ship inside the package) and served with an ETag;
pages link them by a content-hashed URL (`?v=`), cached for good, while a bare URL is
revalidated each time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from ..app import AnyResponse, CallNext, HTTPError, Request, Response

CONTENT_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
# The pages load nothing from elsewhere and run no inline script: a CSP that says so stops
# injected markup from doing anything, and no other site may frame the dashboard.
SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    etag: str
    version: str
    content_type: str


def load_assets() -> dict[str, Asset]:
    """The files of `static/`, read once: they are part of the installed package."""
    assets: dict[str, Asset] = {}
    for entry in resources.files("bunancer.web").joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in CONTENT_TYPES:
            continue
        body = entry.read_bytes()
        version = hashlib.sha256(body).hexdigest()[:16]
        assets[entry.name] = Asset(body, f'"{version}"', version, CONTENT_TYPES[suffix])
    return assets


def etag_matches(header: str, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (or is `*`)."""
    if header.strip() == "*":
        return True
    candidates = (tag.strip().removeprefix("W/") for tag in header.split(","))
    return etag in candidates


class StaticFiles:
    """The static files: their hashed URLs for the templates, and the route serving them."""

    def __init__(self) -> None:
        self.assets = load_assets()

    def url(self, name: str) -> str:
        asset = self.assets.get(name)
        return f"/static/{name}?v={asset.version}" if asset else f"/static/{name}"

    async def serve(self, request: Request) -> Response:
        """GET /static/{name}"""
        asset = self.assets.get(str(request.params["name"]))
        if asset is None:
            raise HTTPError(404, "not found")
        versioned = request.query.get("v") == [asset.version]
        # A hashed URL never changes: cache it for good. A bare one: revalidate each time.
        cache = "public, max-age=31536000, immutable" if versioned else "no-cache"
        headers = [("ETag", asset.etag), ("Cache-Control", cache)]
        if etag_matches(request.headers.get("if-none-match", ""), asset.etag):
            return Response(304, b"", headers)
        return Response(200, asset.body, headers, asset.content_type)


async def security_headers(request: Request, call_next: CallNext) -> AnyResponse:
    """Middleware: SECURITY_HEADERS on every response, error pages and streams included."""
    response = await call_next(request)
    response.headers.extend(SECURITY_HEADERS)
    return response
