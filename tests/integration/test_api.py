"""The registry API as a client uses it: real `bunancer serve` processes, real sockets.

Tests that only read, or that work in a pool of their own, share one balancer (`shared`);
tests that change what the listener routes to get a balancer of their own (`fresh`), whose
default pool starts empty. Traffic is checked end to end: requests to the proxy port, and
the backends' own `/log` of what reached them.
"""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import Backend, Proxy, StartProxy
from tests.helpers import wait_for

TIMEOUT = 4.0  # for a state change the balancer makes on its own (health checks)


# -- a small API client ------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def api(
    proxy: Proxy,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    auth: bool = True,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request to the API listener, on a connection of its own. `auth` sends the
    balancer's token; `raw` sends bytes as they are instead of `body` as JSON."""
    send = dict(headers or {})
    if auth:
        send["Authorization"] = f"Bearer {proxy.token}"
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    if data is not None:
        send["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection("127.0.0.1", proxy.api_port, timeout=5)
    try:
        conn.request(method, path, body=data, headers=send)
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def expect_error(reply: Reply, status: int, field: str | None = None) -> dict[str, Any]:
    """`reply` is a JSON error with `status` (naming `field`, when given)."""
    assert reply.status == status, (reply.status, reply.body)
    assert reply.headers.get("Content-Type") == "application/json"
    error = reply.json
    assert isinstance(error.get("error"), str), error
    assert error["error"]
    if field is not None:
        assert error.get("field") == field, error
    return error


def server_path(pool: str, server_id: str = "") -> str:
    return f"/api/pools/{pool}/servers" + (f"/{server_id}" if server_id else "")


def register(proxy: Proxy, pool: str, backend: Backend, server_id: str, **extra: Any) -> dict:
    body = {"id": server_id, "host": "127.0.0.1", "port": backend.port, **extra}
    reply = api(proxy, "POST", server_path(pool), body)
    assert reply.status == 201, reply.body
    return reply.json


def server_state(proxy: Proxy, pool: str, server_id: str) -> dict[str, Any]:
    reply = api(proxy, "GET", server_path(pool, server_id), auth=False)
    assert reply.status == 200, reply.body
    return reply.json


def wait_state(proxy: Proxy, pool: str, server_id: str, state: str) -> dict[str, Any]:
    """Poll the server's view until it is in `state`; the view."""

    def reached() -> dict[str, Any] | None:
        view = server_state(proxy, pool, server_id)
        return view if view["state"] == state else None

    return wait_for(reached, TIMEOUT, interval=0.05)


# -- traffic -------------------------------------------------------------------------------------


def unique_path() -> str:
    """A path no other test sends, answered `ok <port>` by the backends."""
    return f"/api-test/{uuid.uuid4().hex}"


def send_traffic(proxy: Proxy, path: str, count: int) -> list[str]:
    """What `count` requests through the proxy were answered: `ok <port>`, or `<status>`."""
    answers = []
    for _ in range(count):
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read().decode().strip()
            answers.append(body if response.status == 200 else f"<{response.status}>")
        finally:
            conn.close()
    return answers


def ok(backend: Backend) -> str:
    return f"ok {backend.port}"


def times_seen(backend: Backend, path: str) -> int:
    """How many requests for `path` reached the backend (its own log)."""
    conn = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=5)
    try:
        conn.request("GET", "/log")
        log = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return log["requests"].count(f"GET {path}")


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(start_proxy: StartProxy) -> Iterator[Proxy]:
    """A balancer for this module's tests that keep to pools of their own."""
    proxy = start_proxy([])
    yield proxy
    proxy.process.stop()


@pytest.fixture
def pool(shared: Proxy) -> Iterator[str]:
    """A new, empty pool on the shared balancer."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    reply = api(shared, "POST", "/api/pools", {"name": name})
    assert reply.status == 201, reply.body
    yield name
    api(shared, "DELETE", f"/api/pools/{name}")


@pytest.fixture
def fresh(start_proxy: StartProxy) -> Iterator[Proxy]:
    """A balancer of this test's own; its listener routes to `default`, empty at start."""
    proxy = start_proxy([])
    yield proxy
    proxy.process.stop()


@pytest.fixture
def two_up(fresh: Proxy, backends: list[Backend]) -> tuple[Proxy, Backend, Backend]:
    """`fresh` with both backends registered (as "a" and "b") in `default`, both healthy
    and taking traffic."""
    a, b = backends
    register(fresh, "default", a, "a")
    register(fresh, "default", b, "b")
    wait_state(fresh, "default", "a", "healthy")
    wait_state(fresh, "default", "b", "healthy")
    assert set(send_traffic(fresh, "/", 4)) == {ok(a), ok(b)}
    return fresh, a, b


# -- the listener and its token ------------------------------------------------------------------


def test_healthz_needs_no_token(shared: Proxy) -> None:
    reply = api(shared, "GET", "/healthz", auth=False)
    assert reply.status == 200
    assert reply.json == {"status": "ok"}


def test_reads_need_no_token(shared: Proxy, pool: str, backends: list[Backend]) -> None:
    register(shared, pool, backends[0], "s1")

    pools = api(shared, "GET", "/api/pools", auth=False)
    assert pools.status == 200, pools.body
    assert {"default", pool} <= {p["name"] for p in pools.json}

    default = api(shared, "GET", "/api/pools/default", auth=False)
    assert default.status == 200, default.body
    assert default.json["name"] == "default"

    detail = api(shared, "GET", f"/api/pools/{pool}", auth=False)
    assert detail.status == 200, detail.body
    assert [s["id"] for s in detail.json["servers"]] == ["s1"]

    server = api(shared, "GET", server_path(pool, "s1"), auth=False)
    assert server.status == 200, server.body
    assert server.json["id"] == "s1"
    assert server.json["port"] == backends[0].port


MUTATIONS = [
    pytest.param("POST", "/api/pools", {"name": "{pool}-x"}, id="create-pool"),
    pytest.param("PATCH", "/api/pools/{pool}", {"health": {"rise": 5}}, id="update-pool"),
    pytest.param("DELETE", "/api/pools/{pool}", None, id="delete-pool"),
    pytest.param(
        "POST", "/api/pools/{pool}/servers", {"host": "127.0.0.1", "port": 9}, id="register"
    ),
    pytest.param("PATCH", "/api/pools/{pool}/servers/s1", {"weight": 7}, id="update-server"),
    pytest.param("DELETE", "/api/pools/{pool}/servers/s1", None, id="deregister"),
]
BAD_CREDENTIALS = [
    pytest.param({}, id="no-token"),
    pytest.param({"Authorization": "Bearer not-the-token-at-all"}, id="wrong-token"),
    pytest.param({"Authorization": "Bearer "}, id="empty-token"),
    pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, id="other-scheme"),
]


def fill(value: Any, pool: str) -> Any:
    """`value` with `{pool}` replaced in every string."""
    if isinstance(value, str):
        return value.replace("{pool}", pool)
    if isinstance(value, dict):
        return {key: fill(item, pool) for key, item in value.items()}
    return value


@pytest.mark.parametrize("credentials", BAD_CREDENTIALS)
@pytest.mark.parametrize(("method", "template", "body"), MUTATIONS)
def test_changes_without_the_token_are_refused(
    shared: Proxy,
    pool: str,
    backends: list[Backend],
    method: str,
    template: str,
    body: Any,
    credentials: dict[str, str],
) -> None:
    register(shared, pool, backends[0], "s1")
    before = api(shared, "GET", f"/api/pools/{pool}", auth=False).json

    reply = api(
        shared, method, fill(template, pool), fill(body, pool), auth=False, headers=credentials
    )

    expect_error(reply, 401)
    assert (reply.headers.get("WWW-Authenticate") or "").startswith("Bearer")
    after = api(shared, "GET", f"/api/pools/{pool}", auth=False).json
    assert after["health"] == before["health"]
    assert [(s["id"], s["weight"]) for s in after["servers"]] == [("s1", 1)]
    expect_error(api(shared, "GET", f"/api/pools/{pool}-x", auth=False), 404)


@pytest.mark.parametrize(("method", "template", "body"), MUTATIONS)
def test_changes_with_the_token_are_made(
    shared: Proxy,
    pool: str,
    backends: list[Backend],
    method: str,
    template: str,
    body: Any,
) -> None:
    register(shared, pool, backends[0], "s1")
    reply = api(shared, method, fill(template, pool), fill(body, pool))
    assert reply.status == (201 if method == "POST" else 200), reply.body
    pools = {p["name"]: p for p in api(shared, "GET", "/api/pools", auth=False).json}
    if template == "/api/pools":
        assert f"{pool}-x" in pools
        assert api(shared, "DELETE", f"/api/pools/{pool}-x").status == 200
    elif method == "DELETE" and template == "/api/pools/{pool}":
        assert pool not in pools
    else:
        servers = {s["id"]: s for s in pools[pool]["servers"]}
        if method == "PATCH" and "servers" in template:
            assert servers["s1"]["weight"] == 7
        elif method == "PATCH":
            assert pools[pool]["health"]["rise"] == 5
        elif method == "POST":
            assert set(servers) == {"s1", "127.0.0.1:9"}
        else:
            assert servers == {}


def test_the_auth_scheme_is_case_insensitive(shared: Proxy, pool: str) -> None:
    # RFC 9110 section 11.1: the authentication scheme is a case-insensitive token.
    reply = api(
        shared,
        "PATCH",
        f"/api/pools/{pool}",
        {"health": {"rise": 3}},
        auth=False,
        headers={"Authorization": f"bearer {shared.token}"},
    )
    assert reply.status == 200, reply.body
    assert reply.json["health"]["rise"] == 3


# -- pools ---------------------------------------------------------------------------------------


def test_create_pool(shared: Proxy) -> None:
    name = f"made-{uuid.uuid4().hex[:8]}"
    reply = api(shared, "POST", "/api/pools", {"name": name, "health": {"rise": 3}})
    assert reply.status == 201, reply.body
    view = reply.json
    assert view["name"] == name
    assert view["algorithm"] == "peak-ewma"  # the default
    assert view["servers"] == []
    assert view["health"]["rise"] == 3
    assert view["health"]["fall"] == 2  # the rest keeps its defaults

    assert api(shared, "GET", f"/api/pools/{name}", auth=False).json["name"] == name
    assert name in {p["name"] for p in api(shared, "GET", "/api/pools", auth=False).json}
    assert api(shared, "DELETE", f"/api/pools/{name}").status == 200


def test_create_pool_twice_is_a_conflict(shared: Proxy, pool: str) -> None:
    reply = api(shared, "POST", "/api/pools", {"name": pool})
    expect_error(reply, 409, "name")
    expect_error(api(shared, "POST", "/api/pools", {"name": "default"}), 409, "name")


@pytest.mark.parametrize("name", ["has space", "", "a/b", "x" * 65, "é"])
def test_create_pool_with_a_bad_name(shared: Proxy, name: str) -> None:
    expect_error(api(shared, "POST", "/api/pools", {"name": name}), 422, "name")
    assert name not in {p["name"] for p in api(shared, "GET", "/api/pools", auth=False).json}


def test_create_pool_without_a_name(shared: Proxy) -> None:
    expect_error(api(shared, "POST", "/api/pools", {}), 422, "name")


def test_create_pool_with_an_unknown_key(shared: Proxy) -> None:
    name = f"u-{uuid.uuid4().hex[:8]}"
    error = expect_error(
        api(shared, "POST", "/api/pools", {"name": name, "colour": "blue"}), 422, "colour"
    )
    assert "unknown" in error["detail"]
    assert api(shared, "GET", f"/api/pools/{name}", auth=False).status == 404


@pytest.mark.parametrize(
    ("section", "field"),
    [
        pytest.param({"health": {"rise": 0}}, "health.rise", id="rise-0"),
        pytest.param({"health": {"path": "no-slash"}}, "health.path", id="path"),
        pytest.param({"health": {"interval": -1}}, "health.interval", id="interval"),
        pytest.param({"health": {"bogus": 1}}, "health.bogus", id="health-unknown"),
        pytest.param({"outlier": {"statuses": [99]}}, "outlier.statuses", id="outlier"),
        pytest.param({"algorithm": "fastest"}, "algorithm", id="algorithm"),
    ],
)
def test_create_pool_with_bad_settings(shared: Proxy, section: dict, field: str) -> None:
    name = f"b-{uuid.uuid4().hex[:8]}"
    expect_error(api(shared, "POST", "/api/pools", {"name": name, **section}), 422, field)
    assert api(shared, "GET", f"/api/pools/{name}", auth=False).status == 404


def test_update_pool(shared: Proxy, pool: str) -> None:
    reply = api(
        shared,
        "PATCH",
        f"/api/pools/{pool}",
        {"algorithm": "least-connections", "health": {"interval": 2, "expect": "200-299"}},
    )
    assert reply.status == 200, reply.body
    health = reply.json["health"]
    assert (health["interval"], health["expect"], health["rise"]) == (2.0, "200-299", 2)
    assert reply.json["algorithm"] == "least-connections"

    # A second patch merges with the first rather than resetting it.
    reply = api(shared, "PATCH", f"/api/pools/{pool}", {"health": {"rise": 4}})
    assert reply.status == 200, reply.body
    view = api(shared, "GET", f"/api/pools/{pool}", auth=False).json
    assert (view["health"]["interval"], view["health"]["rise"]) == (2.0, 4)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"health": {"fall": 0}}, "health.fall", id="fall-0"),
        pytest.param({"health": {"nope": True}}, "health.nope", id="health-unknown"),
        pytest.param({"algorithm": "least-busy"}, "algorithm", id="algorithm"),
        pytest.param({"name": "renamed"}, "name", id="unknown-key"),
    ],
)
def test_update_pool_with_bad_settings(shared: Proxy, pool: str, body: dict, field: str) -> None:
    before = api(shared, "GET", f"/api/pools/{pool}", auth=False).json
    expect_error(api(shared, "PATCH", f"/api/pools/{pool}", body), 422, field)
    assert api(shared, "GET", f"/api/pools/{pool}", auth=False).json == before


def test_update_unknown_pool(shared: Proxy) -> None:
    expect_error(api(shared, "PATCH", "/api/pools/no-such-pool", {"health": {"rise": 3}}), 404)


def test_pool_health_change_reaches_its_servers(fresh: Proxy, backends: list[Backend]) -> None:
    a = backends[0]
    register(fresh, "default", a, "a")
    wait_state(fresh, "default", "a", "healthy")
    reply = api(
        fresh, "PATCH", "/api/pools/default", {"health": {"path": "/status/500", "fall": 1}}
    )
    assert reply.status == 200, reply.body
    view = wait_state(fresh, "default", "a", "unhealthy")
    assert "500" in view["reason"]
    assert "<503>" in send_traffic(fresh, unique_path(), 1)


def test_delete_pool(shared: Proxy, backends: list[Backend]) -> None:
    name = f"d-{uuid.uuid4().hex[:8]}"
    assert api(shared, "POST", "/api/pools", {"name": name}).status == 201
    register(shared, name, backends[0], "s1")

    reply = api(shared, "DELETE", f"/api/pools/{name}")
    assert reply.status == 200, reply.body
    assert reply.json == {"removed": name}
    expect_error(api(shared, "GET", f"/api/pools/{name}", auth=False), 404)
    expect_error(api(shared, "GET", server_path(name, "s1"), auth=False), 404)
    assert name not in {p["name"] for p in api(shared, "GET", "/api/pools", auth=False).json}
    expect_error(api(shared, "DELETE", f"/api/pools/{name}"), 404)

    # The name is free again, and the pool comes back empty.
    assert api(shared, "POST", "/api/pools", {"name": name}).status == 201
    assert api(shared, "GET", f"/api/pools/{name}", auth=False).json["servers"] == []
    assert api(shared, "DELETE", f"/api/pools/{name}").status == 200


def test_delete_the_listeners_pool_is_a_conflict(shared: Proxy) -> None:
    expect_error(api(shared, "DELETE", "/api/pools/default"), 409)
    assert api(shared, "GET", "/api/pools/default", auth=False).status == 200


def test_get_unknown_pool(shared: Proxy) -> None:
    expect_error(api(shared, "GET", "/api/pools/no-such-pool", auth=False), 404)


# -- registering servers ---------------------------------------------------------------------------


def test_register_then_traffic_reaches_it(fresh: Proxy, backends: list[Backend]) -> None:
    a = backends[0]
    path = unique_path()
    assert send_traffic(fresh, path, 1) == ["<503>"]  # nothing to route to yet

    reply = api(
        fresh, "POST", server_path("default"), {"id": "a", "host": "127.0.0.1", "port": a.port}
    )
    assert reply.status == 201, reply.body
    view = reply.json
    assert (view["id"], view["host"], view["port"], view["weight"]) == ("a", "127.0.0.1", a.port, 1)
    assert view["state"] in ("pending", "healthy")

    wait_state(fresh, "default", "a", "healthy")
    assert send_traffic(fresh, path, 3) == [ok(a)] * 3
    assert times_seen(a, path) == 3
    pool = api(fresh, "GET", "/api/pools/default", auth=False).json
    assert [s["id"] for s in pool["servers"]] == ["a"]


def test_register_without_an_id(shared: Proxy, pool: str, backends: list[Backend]) -> None:
    a = backends[0]
    reply = api(shared, "POST", server_path(pool), {"host": "127.0.0.1", "port": a.port})
    assert reply.status == 201, reply.body
    server_id = f"127.0.0.1:{a.port}"
    assert reply.json["id"] == server_id
    assert server_state(shared, pool, server_id)["port"] == a.port
    wait_state(shared, pool, server_id, "healthy")


def test_register_with_a_weight(shared: Proxy, pool: str) -> None:
    reply = api(shared, "POST", server_path(pool), {"host": "127.0.0.1", "port": 9, "weight": 7})
    assert reply.status == 201, reply.body
    assert reply.json["weight"] == 7


def test_register_twice_is_a_conflict(shared: Proxy, pool: str, backends: list[Backend]) -> None:
    a, b = backends
    register(shared, pool, a, "s1")

    same_id = {"id": "s1", "host": "127.0.0.1", "port": b.port}
    error = expect_error(api(shared, "POST", server_path(pool), same_id), 409, "id")
    assert "s1" in error["error"]

    same_address = {"id": "s2", "host": "127.0.0.1", "port": a.port}
    expect_error(api(shared, "POST", server_path(pool), same_address), 409)

    servers = api(shared, "GET", f"/api/pools/{pool}", auth=False).json["servers"]
    assert [(s["id"], s["port"]) for s in servers] == [("s1", a.port)]


def test_registering_again_is_not_a_conflict(
    shared: Proxy, pool: str, backends: list[Backend]
) -> None:
    """A backend that restarted registers again with its id and address: 200, one entry,
    its weight kept (PATCH changes settings, not a second POST)."""
    a, _ = backends
    register(shared, pool, a, "s1", weight=3)
    again = {"id": "s1", "host": "127.0.0.1", "port": a.port, "weight": 9}
    reply = api(shared, "POST", server_path(pool), again)
    assert reply.status == 200, reply.body
    assert (reply.json["id"], reply.json["weight"]) == ("s1", 3)
    servers = api(shared, "GET", f"/api/pools/{pool}", auth=False).json["servers"]
    assert [(s["id"], s["port"]) for s in servers] == [("s1", a.port)]


def test_same_address_in_another_pool_is_fine(
    shared: Proxy, pool: str, backends: list[Backend]
) -> None:
    other = f"o-{uuid.uuid4().hex[:8]}"
    assert api(shared, "POST", "/api/pools", {"name": other}).status == 201
    try:
        register(shared, pool, backends[0], "s1")
        register(shared, other, backends[0], "s1")
    finally:
        api(shared, "DELETE", f"/api/pools/{other}")


def test_register_in_an_unknown_pool(shared: Proxy) -> None:
    body = {"host": "127.0.0.1", "port": 9}
    expect_error(api(shared, "POST", server_path("no-such-pool"), body), 404)
    expect_error(api(shared, "GET", "/api/pools/no-such-pool", auth=False), 404)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"host": "127.0.0.1", "port": "x"}, "port", id="port-not-a-number"),
        pytest.param({"host": "127.0.0.1", "port": 0}, "port", id="port-0"),
        pytest.param({"host": "127.0.0.1", "port": 65536}, "port", id="port-65536"),
        pytest.param({"host": "127.0.0.1", "port": -1}, "port", id="port-negative"),
        pytest.param(
            {"host": "127.0.0.1", "port": True},
            "port",
            id="port-boolean",
        ),
        pytest.param({"host": "127.0.0.1"}, "port", id="no-port"),
        pytest.param({"port": 9}, "host", id="no-host"),
        pytest.param({"host": "", "port": 9}, "host", id="empty-host"),
        pytest.param({"host": "a/b", "port": 9}, "host", id="host-with-slash"),
        pytest.param({"host": 127, "port": 9}, "host", id="host-not-a-string"),
        pytest.param({"host": "127.0.0.1", "port": 9, "weight": 0}, "weight", id="weight-0"),
        pytest.param({"host": "127.0.0.1", "port": 9, "id": "a b"}, "id", id="bad-id"),
        pytest.param({"host": "127.0.0.1", "port": 9, "colour": 1}, "colour", id="unknown"),
        pytest.param(
            {"host": "127.0.0.1", "port": 9, "health": {"rise": 0}}, "health.rise", id="health"
        ),
    ],
)
def test_register_with_a_bad_body(shared: Proxy, pool: str, body: dict, field: str) -> None:
    expect_error(api(shared, "POST", server_path(pool), body), 422, field)
    assert api(shared, "GET", f"/api/pools/{pool}", auth=False).json["servers"] == []


@pytest.mark.parametrize(
    "raw", [b"{not json", b"", b'{"host": "127.0.0.1", "port": 9', b"\xff\xfe"], ids=repr
)
def test_register_with_malformed_json(shared: Proxy, pool: str, raw: bytes) -> None:
    expect_error(api(shared, "POST", server_path(pool), raw=raw), 400)
    assert api(shared, "GET", f"/api/pools/{pool}", auth=False).json["servers"] == []


def test_register_with_a_body_over_64_kib(shared: Proxy, pool: str) -> None:
    body = {"id": "big", "host": "127.0.0.1", "port": 9, "pad": "x" * (64 * 1024)}
    expect_error(api(shared, "POST", server_path(pool), body), 413)
    expect_error(api(shared, "GET", server_path(pool, "big"), auth=False), 404)


# -- changing servers ------------------------------------------------------------------------------


def test_update_weight(shared: Proxy, pool: str, backends: list[Backend]) -> None:
    register(shared, pool, backends[0], "s1")
    reply = api(shared, "PATCH", server_path(pool, "s1"), {"weight": 5})
    assert reply.status == 200, reply.body
    assert reply.json["weight"] == 5
    assert server_state(shared, pool, "s1")["weight"] == 5

    expect_error(api(shared, "PATCH", server_path(pool, "s1"), {"weight": 0}), 422, "weight")
    expect_error(api(shared, "PATCH", server_path(pool, "s1"), {"admin": "off"}), 422, "admin")
    expect_error(api(shared, "PATCH", server_path(pool, "s1"), {"port": 1}), 422, "port")
    assert server_state(shared, pool, "s1")["weight"] == 5


def test_update_unknown_server(shared: Proxy, pool: str) -> None:
    expect_error(api(shared, "PATCH", server_path(pool, "nobody"), {"weight": 2}), 404)
    expect_error(api(shared, "PATCH", server_path("no-such-pool", "x"), {"weight": 2}), 404)
    expect_error(api(shared, "GET", server_path(pool, "nobody"), auth=False), 404)


def test_disable_then_enable(two_up: tuple[Proxy, Backend, Backend]) -> None:
    proxy, a, b = two_up
    reply = api(proxy, "PATCH", server_path("default", "a"), {"admin": "disabled"})
    assert reply.status == 200, reply.body
    assert reply.json["state"] == "disabled"
    assert server_state(proxy, "default", "a")["state"] == "disabled"

    path = unique_path()
    assert send_traffic(proxy, path, 6) == [ok(b)] * 6
    assert times_seen(a, path) == 0

    reply = api(proxy, "PATCH", server_path("default", "a"), {"admin": "enabled"})
    assert reply.status == 200, reply.body
    assert reply.json["state"] in ("pending", "healthy")
    wait_state(proxy, "default", "a", "healthy")
    path = unique_path()
    assert sorted(send_traffic(proxy, path, 4)) == sorted([ok(a), ok(b)] * 2)
    assert times_seen(a, path) == 2


def test_disable_twice_is_harmless(two_up: tuple[Proxy, Backend, Backend]) -> None:
    proxy, a, b = two_up
    for _ in range(2):
        reply = api(proxy, "PATCH", server_path("default", "a"), {"admin": "disabled"})
        assert reply.status == 200, reply.body
        assert reply.json["state"] == "disabled"
    path = unique_path()
    assert send_traffic(proxy, path, 2) == [ok(b)] * 2
    assert times_seen(a, path) == 0


def test_drain(two_up: tuple[Proxy, Backend, Backend]) -> None:
    proxy, a, b = two_up
    reply = api(proxy, "PATCH", server_path("default", "a"), {"admin": "draining"})
    assert reply.status == 200, reply.body
    assert reply.json["state"] == "draining"

    path = unique_path()
    assert send_traffic(proxy, path, 6) == [ok(b)] * 6
    assert times_seen(a, path) == 0
    assert server_state(proxy, "default", "a")["state"] == "draining"

    # Enabling calls the drain off.
    assert api(proxy, "PATCH", server_path("default", "a"), {"admin": "enabled"}).status == 200
    wait_state(proxy, "default", "a", "healthy")
    assert ok(a) in send_traffic(proxy, unique_path(), 2)


def test_deregister(two_up: tuple[Proxy, Backend, Backend]) -> None:
    proxy, a, b = two_up
    reply = api(proxy, "DELETE", server_path("default", "a"))
    assert reply.status == 200, reply.body
    assert reply.json == {"removed": "a", "pool": "default"}
    expect_error(api(proxy, "GET", server_path("default", "a"), auth=False), 404)
    servers = api(proxy, "GET", "/api/pools/default", auth=False).json["servers"]
    assert [s["id"] for s in servers] == ["b"]

    path = unique_path()
    assert send_traffic(proxy, path, 6) == [ok(b)] * 6
    assert times_seen(a, path) == 0
    expect_error(api(proxy, "DELETE", server_path("default", "a")), 404)

    # Its id and address are free again.
    register(proxy, "default", a, "a")
    wait_state(proxy, "default", "a", "healthy")
    assert ok(a) in send_traffic(proxy, unique_path(), 2)


def test_failing_health_check_takes_a_server_out(fresh: Proxy, backends: list[Backend]) -> None:
    a, b = backends
    register(fresh, "default", b, "b")
    view = register(fresh, "default", a, "a", health={"path": "/status/500"})
    assert view["state"] in ("pending", "unhealthy")

    view = wait_state(fresh, "default", "a", "unhealthy")
    assert "failed checks" in view["reason"]
    assert "500" in view["reason"]
    assert view["last_check"]["ok"] is False
    wait_state(fresh, "default", "b", "healthy")

    path = unique_path()
    assert send_traffic(fresh, path, 6) == [ok(b)] * 6
    assert times_seen(a, path) == 0
    pool = api(fresh, "GET", "/api/pools/default", auth=False).json
    assert (pool["routable"], pool["states"]["unhealthy"]) == (1, 1)


class InFlight:
    """A slow request through the proxy (`/sleep/MS`), answered in a thread of its own."""

    def __init__(self, proxy: Proxy, ms: int) -> None:
        self.answer: list[str] = []
        self.thread = threading.Thread(
            target=lambda: self.answer.extend(send_traffic(proxy, f"/sleep/{ms}", 1))
        )
        self.thread.start()

    def result(self) -> list[str]:
        self.thread.join(10)
        return self.answer


def in_background(call: Callable[[], Reply]) -> Callable[[], Reply]:
    """Run `call` in a thread now; the function returned waits for its reply."""
    replies: list[Reply] = []
    thread = threading.Thread(target=lambda: replies.append(call()))
    thread.start()

    def reply() -> Reply:
        thread.join(10)
        assert replies, "no reply"
        return replies[0]

    return reply


def deregister_while_busy(proxy: Proxy, a: Backend) -> tuple[InFlight, Callable[[], Reply]]:
    """Start a slow request to "a" (the pool's only server), then its deregistration:
    the DELETE waits for the request, "a" is `draining` meanwhile."""
    register(proxy, "default", a, "a")
    wait_state(proxy, "default", "a", "healthy")
    slow = InFlight(proxy, 2000)
    wait_for(lambda: server_state(proxy, "default", "a")["in_flight"] == 1, TIMEOUT, 0.02)
    deleted = in_background(lambda: api(proxy, "DELETE", server_path("default", "a")))
    wait_state(proxy, "default", "a", "draining")
    return slow, deleted


def test_deregister_lets_requests_in_flight_finish(fresh: Proxy, backends: list[Backend]) -> None:
    a = backends[0]
    slow, deleted = deregister_while_busy(fresh, a)

    path = unique_path()
    assert send_traffic(fresh, path, 2) == ["<503>"] * 2  # not routed while it drains
    expect_error(api(fresh, "DELETE", server_path("default", "a")), 404)  # already going

    assert slow.result() == ["slept"]
    reply = deleted()
    assert reply.status == 200, reply.body
    expect_error(api(fresh, "GET", server_path("default", "a"), auth=False), 404)
    assert times_seen(a, path) == 0


def test_enable_during_deregistration_does_not_bring_it_back(
    fresh: Proxy, backends: list[Backend]
) -> None:
    a = backends[0]
    slow, deleted = deregister_while_busy(fresh, a)
    try:
        reply = api(fresh, "PATCH", server_path("default", "a"), {"admin": "enabled"})
        path = unique_path()
        answers = send_traffic(fresh, path, 2)
    finally:
        slow.result()
        deleted()
    assert reply.status in (404, 409), reply.body
    assert answers == ["<503>"] * 2
    assert times_seen(a, path) == 0
