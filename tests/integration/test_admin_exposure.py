"""What a client without the token can read from the API and dashboard listeners, and make
them hold, through a real `bunancer serve`: a Host naming another domain is refused (DNS
rebinding); reads can need a login; connections are capped in all and per client address
(a 503 beyond); a change without the token is refused from its head (its body is never
read); the dashboard's live pages are capped. Other client addresses are 127.0.0.x."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Proxy, StartProxy
from tests.helpers import RawClient, Response, wait_for

PER_CLIENT = 3
IN_ALL = 5


@pytest.fixture(scope="module")
def proxy(start_proxy: StartProxy) -> Proxy:
    return start_proxy(
        [],
        extra=f"""
        [api]
        listen = "127.0.0.1:0"
        max_connections = {IN_ALL}
        max_connections_per_client = {PER_CLIENT}
        allowed_hosts = ["lb.test"]

        [dashboard]
        listen = "127.0.0.1:0"
        max_connections_per_client = 100
        """,
    )


@pytest.fixture
def clients() -> Iterator[list[RawClient]]:
    opened: list[RawClient] = []
    yield opened
    for client in opened:
        client.close()


def connect(port: int, source: str, opened: list[RawClient]) -> RawClient:
    client = RawClient(port, timeout=5, source=source)
    opened.append(client)
    return client


def served_or_none(port: int, source: str, opened: list[RawClient]) -> RawClient | None:
    client = connect(port, source, opened)
    try:
        client.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        if client.read_response().status == 200:
            return client
    except ConnectionError:
        pass
    client.close()
    return None


def served(port: int, source: str, opened: list[RawClient]) -> RawClient:
    """A connection from `source`, accepted and answered: tried again while connections an
    earlier test closed are still counted (the balancer sees a close a moment later)."""
    client: RawClient = wait_for(lambda: served_or_none(port, source, opened))
    return client


def refused(port: int, source: str, opened: list[RawClient]) -> str:
    """The error of a connection from `source` that gets a 503 at once and is closed."""
    client = connect(port, source, opened)
    response = client.read_response()
    assert response.status == 503
    assert response.header("Retry-After") == "1"
    assert client.is_closed()
    return str(json.loads(response.body)["error"])


def test_connections_beyond_the_cap_per_address_get_a_503(
    proxy: Proxy, clients: list[RawClient]
) -> None:
    held = [served(proxy.api_port, "127.0.0.1", clients) for _ in range(PER_CLIENT)]
    assert refused(proxy.api_port, "127.0.0.1", clients) == "too many connections from this address"
    served(proxy.api_port, "127.0.0.2", clients)  # another address is not held back
    held[0].close()  # a connection that ends makes room
    served(proxy.api_port, "127.0.0.1", clients)


def test_connections_beyond_the_cap_in_all_get_a_503(
    proxy: Proxy, clients: list[RawClient]
) -> None:
    for source in ("127.0.0.3", "127.0.0.3", "127.0.0.4", "127.0.0.4", "127.0.0.5"):
        served(proxy.api_port, source, clients)
    assert refused(proxy.api_port, "127.0.0.6", clients) == "too many connections"


def post_head(path: str, length: int, headers: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{headers}\r\n"
    ).encode()


def test_a_change_without_the_token_is_refused_before_its_body_is_sent(
    proxy: Proxy, clients: list[RawClient]
) -> None:
    body = json.dumps({"name": "p" * 30_000}).encode()
    client = connect(proxy.api_port, "127.0.0.7", clients)
    client.send(post_head("/api/pools", len(body)))  # the head only: the body never comes
    response = client.read_response()
    assert response.status == 401
    assert response.header("WWW-Authenticate") == 'Bearer realm="bunancer"'
    assert client.is_closed(timeout=5)
    # With the token, the body is waited for and read.
    client = connect(proxy.api_port, "127.0.0.7", clients)
    client.send(post_head("/api/pools", len(body), auth(proxy)))
    client.send(body)
    response = client.read_response()
    assert response.status == 422
    assert json.loads(response.body)["field"] == "name"


def test_a_dashboard_action_without_a_login_is_refused_before_its_body(
    proxy: Proxy, clients: list[RawClient]
) -> None:
    client = connect(proxy.dashboard_port, "127.0.0.1", clients)
    client.send(
        post_head("/actions/servers/default/a/admin", 60_000, "Accept: application/json\r\n")
    )
    response = client.read_response()
    assert response.status == 403
    assert json.loads(response.body)["error"] == "log in with the admin token first"
    assert client.is_closed(timeout=5)


def test_live_pages_beyond_64_get_a_503(proxy: Proxy, clients: list[RawClient]) -> None:
    for _ in range(64):
        client = connect(proxy.dashboard_port, "127.0.0.1", clients)
        client.send(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        while b"\r\n\r\n" not in client.buffer:  # the stream's head: it is open
            assert client._fill()
        assert client.buffer.startswith(b"HTTP/1.1 200 ")
    client = connect(proxy.dashboard_port, "127.0.0.1", clients)
    client.send(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n")
    response = client.read_response()
    assert response.status == 503
    assert json.loads(response.body)["error"] == "too many live pages open; close one"
    # A page that closes makes room (its subscription is dropped).
    clients[0].close()
    wait_for(lambda: live_page_opens(proxy, clients))


def live_page_opens(proxy: Proxy, opened: list[RawClient]) -> bool:
    client = connect(proxy.dashboard_port, "127.0.0.1", opened)
    client.send(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    while b"\r\n\r\n" not in client.buffer:
        assert client._fill()
    if client.buffer.startswith(b"HTTP/1.1 200 "):
        return True
    client.close()  # a 503: the closed page was not yet seen
    return False


def get(port: int, path: str, host: str, headers: str = "") -> Response:
    with RawClient(port) as client:
        client.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
        return client.read_response()


def test_a_host_naming_another_domain_is_refused_against_dns_rebinding(proxy: Proxy) -> None:
    port = proxy.api_port
    response = get(port, "/api/pools", f"evil.example:{port}")
    assert response.status == 421
    assert json.loads(response.body) == {
        "error": "this listener does not answer for host 'evil.example'",
        "detail": "add it to [api] allowed_hosts to allow it",
    }
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LB.test:{port}", "[::1]"):
        assert get(port, "/api/pools", host).status == 200, host
    dashboard = proxy.dashboard_port
    assert get(dashboard, "/", f"evil.example:{dashboard}").status == 421
    assert get(dashboard, "/", f"lb.test:{dashboard}").status == 421  # allowed on the API only
    assert get(dashboard, "/", f"localhost:{dashboard}").status == 200


def test_dashboard_reads_can_need_a_login(start_proxy: StartProxy) -> None:
    proxy = start_proxy([], '[dashboard]\nlisten = "127.0.0.1:0"\npublic_reads = false\n')
    port = proxy.dashboard_port
    response = get(port, "/servers/default/a%3A1?x=1", "127.0.0.1")
    assert response.status == 303
    login_page = str(response.header("Location"))
    # The page's own path, percent-encoding and all, is the value of `next` (the "%3A" in it
    # is encoded once more as any "%" in a query value is, and decoded once on the way back).
    assert login_page == "/login?next=%2Fservers%2Fdefault%2Fa%253A1%3Fx%3D1"
    form = get(port, login_page, "127.0.0.1")
    assert b'name="next" value="/servers/default/a%3A1?x=1"' in form.body
    assert get(port, "/events", "127.0.0.1").status == 403
    assert get(port, "/", "127.0.0.1", "Accept: application/json\r\n").status == 403
    assert get(port, "/login", "127.0.0.1").status == 200
    assert get(port, "/static/dashboard.css", "127.0.0.1").status == 200
    body = f"token={proxy.token}&next=%2Fservers%2Fdefault%2Fa%253A1%3Fx%3D1".encode()
    with RawClient(port) as client:
        client.send(
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            b"application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        login = client.read_response()
    assert login.status == 303
    assert login.header("Location") == "/servers/default/a%3A1?x=1"  # back where it began
    cookie = str(login.header("Set-Cookie")).split(";")[0]
    assert get(port, "/", "127.0.0.1", f"Cookie: {cookie}\r\n").status == 200


def register(proxy: Proxy, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    data = json.dumps(body).encode()
    with RawClient(proxy.api_port) as client:
        client.send(post_head("/api/pools/default/servers", len(data), auth(proxy)) + data)
        response = client.read_response()
    return response.status, json.loads(response.body)


def auth(proxy: Proxy) -> str:
    return f"Authorization: Bearer {proxy.token}\r\n"


def test_registrations_cannot_point_at_link_local_or_carry_control_characters(
    proxy: Proxy,
) -> None:
    status, body = register(proxy, {"host": "169.254.169.254", "port": 80})
    assert (status, body["field"]) == (403, "host")
    assert body["detail"] == "169.254.169.254 is in 169.254.0.0/16 (registration_deny)"
    for host in ("127.0.0.1\u0000", "127.0.0.1\r\nX: y", "a b", "a/b"):
        status, body = register(proxy, {"host": host, "port": 80})
        assert (status, body["field"]) == (422, "host"), host
    status, body = register(proxy, {"host": "127.0.0.1", "port": 9})
    assert (status, body["id"]) == (201, "127.0.0.1:9")


def pools_with(proxy: Proxy, token: str, source: str) -> Response:
    with RawClient(proxy.api_port, source=source) as client:
        client.send(post_head("/api/pools", 2, f"Authorization: Bearer {token}\r\n") + b"{}")
        return client.read_response()


def test_wrong_tokens_make_the_client_wait_and_are_logged(proxy: Proxy) -> None:
    wrong = "wrong-token-0123456789"
    for _ in range(4):
        assert pools_with(proxy, wrong, "127.0.0.9").status == 401
    assert pools_with(proxy, wrong, "127.0.0.9").status == 401  # the fifth: now it waits
    started = time.monotonic()
    waiting = pools_with(proxy, proxy.token, "127.0.0.9")  # even the right token
    assert waiting.status == 429
    assert waiting.header("Retry-After") == "1"
    assert pools_with(proxy, proxy.token, "127.0.0.10").status == 422  # others are not held
    lines = proxy.process.lines
    assert any("wrong token from 127.0.0.9 (API)" in line for line in lines)
    assert any(
        "5 wrong tokens in a row from 127.0.0.9 (API): it waits 1 s" in line for line in lines
    )
    assert not any(wrong in line for line in lines)  # what was tried is never logged
    # After the wait the right token works again (and resets the count).
    wait_for(lambda: pools_with(proxy, proxy.token, "127.0.0.9").status == 422, since=started)


def test_wrong_dashboard_logins_make_the_client_wait(proxy: Proxy) -> None:
    for _ in range(5):
        assert login(proxy, "wrong-token-0123456789", "127.0.0.11").status == 403
    page = login(proxy, proxy.token, "127.0.0.11")
    assert page.status == 429
    assert b"Too many wrong tokens: wait 1 s." in page.body


def login(proxy: Proxy, token: str, source: str, headers: bytes = b"") -> Response:
    body = f"token={token}&next=%2F".encode()
    with RawClient(proxy.dashboard_port, source=source) as client:
        client.send(
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            b"application/x-www-form-urlencoded\r\nContent-Length: %d\r\n%s\r\n%s"
            % (len(body), headers, body)
        )
        return client.read_response()


def test_the_session_cookie_is_secure_behind_a_tls_proxy(proxy: Proxy) -> None:
    plain = str(login(proxy, proxy.token, "127.0.0.12").header("Set-Cookie"))
    assert plain.endswith("; HttpOnly; SameSite=Strict")
    https = login(proxy, proxy.token, "127.0.0.12", b"X-Forwarded-Proto: https\r\n")
    assert str(https.header("Set-Cookie")).endswith("; HttpOnly; SameSite=Strict; Secure")
