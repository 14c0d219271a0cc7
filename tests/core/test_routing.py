from __future__ import annotations

from bunancer.core.routing import Route, RouteTable, normalise_host


def test_normalise_host() -> None:
    assert normalise_host(b"Example.COM:8080") == b"example.com"
    assert normalise_host(b"[::1]:80") == b"[::1]"
    assert normalise_host(None) == b""


def test_first_match_wins_then_default() -> None:
    table = RouteTable(
        [
            Route("api", b"api.example.com", b"/v1/"),
            Route("wild", b"*.example.com"),
            Route("static", None, b"/static/"),
            Route("api-any", b"API.example.com"),
        ],
        default="default",
    )
    assert table.match(b"api.example.com", b"/v1/users") == "api"
    assert table.match(b"api.example.com:443", b"/v2/") == "wild"
    assert table.match(b"a.b.example.com", b"/") == "wild"
    assert table.match(b"example.com", b"/static/x.css") == "static"
    assert table.match(b"example.com", b"/") == "default"
    assert table.match(None, b"/static/") == "static"
    assert table.match(b"other.test", b"/v1/") == "default"


def test_no_routes_is_default() -> None:
    assert RouteTable([], default=1).match(b"x", b"/") == 1
