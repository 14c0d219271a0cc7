"""The dashboard through a real `bunancer serve`: pages rendered with their data, static files,
login and CSRF, and actions that change the registry (checked through the API).

Pages are fetched over HTTP as a browser would (cookies, form posts, redirects by hand); the
browser itself is in tests/browser/. Stubs added from the dashboard register with the API at
the address in BUNANCER_API until the app hands the dashboard its own API address.
"""

from __future__ import annotations

import asyncio
import html
import http.client
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import uvloop

from bunancer.control.commands import Commands
from bunancer.control.events import EventBus
from bunancer.control.registry import PoolSettings, Registry
from bunancer.control.telemetry import Telemetry
from bunancer.core.settings import UpstreamSettings
from bunancer.web.api import build_api
from bunancer.web.dashboard import DashboardContext, build_dashboard, fmt_ms
from bunancer.web.server import serve
from stubs.sdk import StubManager
from tests.conftest import Backend, Proxy, StartProxy
from tests.helpers import FAST_CHECKS, free_port, wait_for

# Quick checks so states change within a second.
FAST = (
    FAST_CHECKS
    + """fall = 1
dead_after = 2

[pools.spare]
algorithm = "least-connections"
servers = []
"""
)


def start_dashboard_proxy(start_proxy: StartProxy, servers: list[str], extra: str = FAST) -> Proxy:
    """A balancer whose API port is known up front, so stubs started from its dashboard can
    register (BUNANCER_API; the dashboard's `api_url` is the lasting way)."""
    port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BUNANCER_API", f"http://127.0.0.1:{port}")
        return start_proxy(servers, extra + f'\n[api]\nlisten = "127.0.0.1:{port}"\n')


# -- a small browser-like client ---------------------------------------------------------------


@dataclass
class Page:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass
class Client:
    """Keeps the dashboard's cookies and the CSRF token of the last page it saw."""

    port: int
    cookies: dict[str, str] = field(default_factory=dict)
    csrf: str = ""

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Page:
        send = dict(headers or {})
        if self.cookies:
            send["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=send)
            response = conn.getresponse()
            page = Page(response.status, response.headers, response.read())
        finally:
            conn.close()
        for cookie in page.headers.get_all("Set-Cookie") or []:
            name, _, rest = cookie.partition("=")
            value = rest.split(";")[0]
            if "Max-Age=0" in cookie:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        text = page.body.decode("utf-8", "replace")
        match = re.search(r'<meta name="csrf-token" content="([^"]*)">', text)
        if match:
            self.csrf = match.group(1)
        return page

    def get(self, path: str, headers: dict[str, str] | None = None) -> Page:
        return self.request("GET", path, headers=headers)

    def post(
        self,
        path: str,
        form: dict[str, str] | None = None,
        *,
        csrf: bool = True,
        json_reply: bool = True,
        headers: dict[str, str] | None = None,
    ) -> Page:
        data = dict(form or {})
        if csrf:
            data["csrf"] = self.csrf
        send = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        if json_reply:
            send["Accept"] = "application/json"
        return self.request("POST", path, urlencode(data).encode(), send)

    def login(self, token: str) -> Page:
        page = self.post("/login", {"token": token, "next": "/"}, csrf=False, json_reply=False)
        assert page.status == 303, page.text
        self.get("/")  # picks up the session's CSRF token
        assert self.csrf
        return page


def api(proxy: Proxy, method: str, path: str, body: Any = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.api_port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {proxy.token}"}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        assert response.status < 300, (response.status, payload)
        return json.loads(payload)
    finally:
        conn.close()


def server(proxy: Proxy, pool: str, server_id: str) -> dict[str, Any]:
    return api(proxy, "GET", f"/api/pools/{pool}/servers/{server_id}")  # type: ignore[no-any-return]


def states(proxy: Proxy, pool: str = "default") -> dict[str, str]:
    return {s["id"]: s["state"] for s in api(proxy, "GET", f"/api/pools/{pool}")["servers"]}


def a_healthy_server(proxy: Proxy) -> str:
    """The id of one of the fixture's healthy servers (the API lists them by id, so the
    first one listed may be the dead one)."""
    return next(i for i, state in states(proxy).items() if state == "healthy")


def count(page: Page, state: str) -> int:
    match = re.search(rf'data-count="{state}">(\d+)<', page.text)
    assert match, f"no {state} count on the page"
    return int(match.group(1))


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dash(start_proxy: StartProxy, backends: list[Backend]) -> Proxy:
    """Both test backends (healthy) and an address where nothing listens (dead)."""
    with socket.socket() as probe:  # a port that refuses connections
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    servers = [b.url for b in backends] + [f"http://127.0.0.1:{closed}"]
    proxy = start_dashboard_proxy(start_proxy, servers)
    wait_for(lambda: sorted(states(proxy).values()) == ["dead", "healthy", "healthy"], 10)
    return proxy


@pytest.fixture
def client(dash: Proxy) -> Client:
    return Client(dash.dashboard_port)


@pytest.fixture
def admin(dash: Proxy) -> Client:
    client = Client(dash.dashboard_port)
    client.login(dash.token)
    return client


@pytest.fixture
def stubs(dash: Proxy) -> Iterator[StubManager]:
    manager = StubManager(dash.state_dir)
    yield manager
    manager.stop_all()
    wait_for(lambda: not states(dash, "spare"), 15)


def ids(proxy: Proxy) -> dict[str, str]:
    """Config servers are named by address: map port -> id."""
    return {str(s["port"]): s["id"] for s in api(proxy, "GET", "/api/pools/default")["servers"]}


# -- pages ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "—"),
        (0.0005, "500 µs"),
        (0.0009996, "1.0 ms"),  # not "1000 µs"
        (0.0099, "9.9 ms"),
        (0.00996, "10 ms"),  # not "10.0 ms"
        (0.0123, "12 ms"),
        (12.34, "12.3 s"),
    ],
)
def test_durations_read_naturally_at_every_boundary(seconds: float | None, text: str) -> None:
    assert fmt_ms(seconds) == text


def test_overview_shows_every_server_with_correct_counts(dash: Proxy, client: Client) -> None:
    page = client.get("/")
    assert page.status == 200
    assert page.header("Content-Type") == "text/html; charset=utf-8"
    assert page.header("Cache-Control") == "no-store"
    text = page.text
    for server_id in ids(dash).values():
        assert f'data-key="default/{server_id}"' in text
    assert count(page, "total") == 3
    assert count(page, "healthy") == 2
    assert count(page, "dead") == 1
    for state in ("pending", "unhealthy", "draining", "disabled"):
        assert count(page, state) == 0
    # The dead one says why, and its badge is red (class state-dead).
    assert re.search(r'class="badge state-dead" data-field="state">dead<', text)
    assert "refused" in text
    # Per-pool card: algorithm and routable count; the empty pool says it is empty.
    assert 'data-pool-field="algorithm" title="balancing algorithm">round-robin<' in text
    assert re.search(r'data-pool-field="routable">2</b>/3 routable', text)
    assert "No servers in this pool yet." in text
    # Read-only without login: no action forms, a login link instead.
    assert "/actions/" not in text
    assert "Log in to act" in text
    # The script's starting data is the same summary.
    boot = json.loads(re.search(r'id="page-data">(.*?)</script>', text).group(1))  # type: ignore[union-attr]
    assert boot["summary"]["counts"]["healthy"] == 2
    assert boot["summary"]["counts"]["dead"] == 1
    assert set(boot["histories"]) == {f"default/{i}" for i in ids(dash).values()}


def test_overview_figures_follow_traffic(dash: Proxy, client: Client) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", dash.port, timeout=5)
    try:
        for _ in range(40):
            conn.request("GET", "/")
            conn.getresponse().read()
    finally:
        conn.close()

    def busy() -> dict[str, Any] | None:
        text = client.get("/").text
        boot = json.loads(re.search(r'id="page-data">(.*?)</script>', text).group(1))  # type: ignore[union-attr]
        pool = boot["summary"]["pools"]["default"]
        return pool if pool["p99"] is not None and pool["error_rate"] == 0 else None

    pool = wait_for(busy, 5)
    assert pool["p99"] > 0
    text = client.get("/").text
    assert re.search(r'data-field="p99">[\d.]+ (µs|ms)<', text)


def test_flow_page_draws_balancer_pools_and_servers(dash: Proxy, client: Client) -> None:
    text = client.get("/flow").text
    assert '<svg id="flow"' in text
    assert 'class="node balancer"' in text
    assert 'data-pool="default"' in text
    assert 'data-pool="spare"' in text
    names = ids(dash)
    for server_id in names.values():
        assert f'data-route="default/{server_id}"' in text  # the path dots travel
    assert text.count('class="edge server-edge state-healthy"') == 2
    assert text.count('class="edge server-edge state-dead"') == 1  # hidden by the stylesheet
    assert "no servers yet" in text  # the empty pool
    css = client.get("/static/dashboard.css").text
    assert ".server-edge.state-dead { display: none; }" in css


def test_server_page_shows_checks_charts_and_no_actions_without_login(
    dash: Proxy, client: Client
) -> None:
    server_id = a_healthy_server(dash)
    page = client.get(f"/servers/default/{server_id}")
    assert page.status == 200
    text = page.text
    assert f"<h1>{html.escape(server_id)}</h1>" in text
    assert 'id="chart-rps"' in text
    assert 'id="chart-latency"' in text
    assert text.count('<tr class="ok">') >= 1  # recent checks, passed
    assert "Log in</a> to drain" in text
    assert "/actions/" not in text


def test_server_page_says_when_checks_run_and_lists_its_state_changes(
    dash: Proxy, client: Client
) -> None:
    names = ids(dash)
    dead = next(
        i
        for i in names.values()
        if api(dash, "GET", f"/api/pools/default/servers/{i}")["state"] == "dead"
    )
    text = client.get(f"/servers/default/{dead}").text
    # The schedule in words, from the server's own settings (FAST: every 0.2 s).
    assert "every 0.2 s while healthy" in text
    assert re.search(r"Next check (in [\d.]+ s|running now)", text)
    # Its changes: pending -> unhealthy -> dead, newest first, with reasons.
    changes = re.search(
        r'<ol id="feed" class="feed-list" data-server="[^"]+">(.*?)</ol>', text, re.S
    )
    assert changes is not None
    lines = re.findall(r"</time> (.*?)</li>", changes.group(1))
    assert "unhealthy → dead" in lines[0]
    assert any("pending → unhealthy" in line for line in lines[1:])
    # Totals HAProxy's stats page has: requests, errors, retries, downtime.
    assert 'data-field="downtime"' in text
    assert 'data-field="redispatches"' in text
    # Charts show a fixed minute with a scale.
    assert text.count("60 s ago") == 2
    assert text.count("data-ytop") == 2


def test_routing_page_shows_listeners_and_routes(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    proxy = start_proxy(
        [backends[0].url],
        '[pools.api]\nservers = []\n\n[[routes]]\nhost = "*.example.com"\npath_prefix = "/v1/"\n'
        'pool = "api"\n',
    )
    text = Client(proxy.dashboard_port).get("/routing").text
    assert f"http://127.0.0.1:{proxy.port}" in text  # the listener, as bound
    assert '<a href="/#pool-default">default</a>' in text  # its default pool
    assert "<code>*.example.com</code>" in text
    assert "<code>/v1/</code>" in text
    assert '<a href="/#pool-api">api</a>' in text
    proxy.process.stop()


def test_settings_page_lists_algorithms_weights_and_health(dash: Proxy, client: Client) -> None:
    text = client.get("/settings").text
    assert 'action="/actions/pools/default/settings"' in text
    assert '<option value="round-robin" selected>' in text
    assert '<option value="least-connections" selected>' in text  # the spare pool
    assert 'name="health.interval" value="0.2"' in text
    for server_id in ids(dash).values():
        assert f'name="weight.{html.escape(server_id)}"' in text
    assert "<fieldset disabled>" in text  # read-only without login


def test_unknown_pages_are_html_for_browsers_and_json_for_scripts(client: Client) -> None:
    page = client.get("/servers/default/nope")
    assert page.status == 404
    assert page.header("Content-Type") == "text/html; charset=utf-8"
    assert "no server" in page.text
    page = client.get("/servers/default/nope", {"Accept": "application/json"})
    assert page.status == 404
    assert page.json["error"].startswith("no server")
    assert client.get("/does/not/exist").status == 404


def test_pages_send_security_headers(client: Client) -> None:
    page = client.get("/")
    csp = page.header("Content-Security-Policy") or ""
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert page.header("X-Content-Type-Options") == "nosniff"
    # Scripts and styles come from files only, so the policy needs no 'unsafe-inline'.
    assert "<script>" not in page.text
    assert "style=" not in page.text


# -- static files ----------------------------------------------------------------------------------


def test_static_files_have_hashed_urls_etags_and_revalidate(client: Client) -> None:
    text = client.get("/").text
    url = re.search(r'src="(/static/dashboard\.js\?v=([0-9a-f]{16}))"', text)
    assert url
    page = client.get(url.group(1))
    assert page.status == 200
    assert page.header("Content-Type") == "text/javascript; charset=utf-8"
    assert page.header("Cache-Control") == "public, max-age=31536000, immutable"
    etag = page.header("ETag")
    assert etag == f'"{url.group(2)}"'
    bare = client.get("/static/dashboard.js")
    assert bare.header("Cache-Control") == "no-cache"
    assert bare.body == page.body
    again = client.get("/static/dashboard.js", {"If-None-Match": etag})
    assert again.status == 304
    assert again.body == b""
    assert again.header("ETag") == etag
    assert client.get("/static/dashboard.js", {"If-None-Match": '"other"'}).status == 200
    assert client.get("/static/nope.js").status == 404


# -- login and CSRF --------------------------------------------------------------------------


def test_login_sets_a_strict_http_only_cookie_and_logout_ends_it(dash: Proxy) -> None:
    client = Client(dash.dashboard_port)
    wrong = client.post("/login", {"token": "not-the-token"}, csrf=False, json_reply=False)
    assert wrong.status == 403
    assert "not the admin token" in wrong.text
    assert not client.cookies

    form = {"token": dash.token, "next": "/flow"}
    page = client.post("/login", form, csrf=False, json_reply=False)
    assert page.status == 303
    assert page.header("Location") == "/flow"
    cookie = page.header("Set-Cookie") or ""
    assert cookie.startswith(f"bunancer_session_{dash.dashboard_port}=")
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/"):
        assert attribute in cookie
    text = client.get("/").text
    assert "/actions/pools/default/stubs" in text  # actions appear
    assert client.csrf
    assert client.csrf in text

    evil = client.post("/login", {"token": dash.token, "next": "//evil.example/"}, csrf=False)
    assert evil.header("Location") == "/"  # no open redirect
    client.get("/")  # logging in again made a new session, with a new CSRF token

    assert client.post("/logout").status == 303
    assert not client.cookies
    assert "/actions/" not in client.get("/").text


def test_actions_need_a_session_and_its_csrf_token(dash: Proxy, admin: Client) -> None:
    server_id = next(iter(ids(dash).values()))
    path = f"/actions/servers/default/{server_id}/weight"
    anonymous = Client(dash.dashboard_port)
    anonymous.get("/")
    assert anonymous.post(path, {"weight": "3"}, csrf=False).status == 403
    assert anonymous.post(path, {"weight": "3", "csrf": "x"}, csrf=False).status == 403

    assert admin.post(path, {"weight": "3"}, csrf=False).status == 403  # missing
    refused = admin.post(path, {"weight": "3", "csrf": "wrong"}, csrf=False)
    assert refused.status == 403
    assert "CSRF" in refused.json["error"]
    header = admin.request(
        "POST",
        path,
        urlencode({"weight": "3"}).encode(),
        {"Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": "wrong"},
    )
    assert header.status == 403
    # Another site's page posting with the victim's cookie: refused by its Origin.
    cross = admin.post(path, {"weight": "3"}, headers={"Origin": "http://evil.example"})
    assert cross.status == 403
    # A browser without JavaScript gets the refusal as a page.
    page = admin.post(path, {"weight": "3"}, csrf=False, json_reply=False)
    assert page.status == 403
    assert page.header("Content-Type") == "text/html; charset=utf-8"
    assert server(dash, "default", server_id)["weight"] == 1  # nothing changed

    ok = admin.request(
        "POST",
        path,
        urlencode({"weight": "3"}).encode(),
        {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-CSRF-Token": admin.csrf,
            "Accept": "application/json",
        },
    )
    assert ok.status == 200, ok.text
    assert ok.json == {"ok": True, "message": f"default/{server_id}: weight 3"}
    assert server(dash, "default", server_id)["weight"] == 3
    assert admin.post(path, {"weight": "1"}).status == 200


def test_a_session_from_another_login_has_another_csrf_token(dash: Proxy, admin: Client) -> None:
    other = Client(dash.dashboard_port)
    other.login(dash.token)
    assert other.csrf != admin.csrf
    server_id = next(iter(ids(dash).values()))
    path = f"/actions/servers/default/{server_id}/weight"
    page = admin.post(path, {"weight": "2", "csrf": other.csrf}, csrf=False)
    assert page.status == 403


# -- actions change the registry -------------------------------------------------------------------


def test_drain_disable_enable_and_weight(dash: Proxy, admin: Client) -> None:
    server_id = a_healthy_server(dash)
    base = f"/actions/servers/default/{server_id}"
    assert admin.post(f"{base}/admin", {"action": "disable"}).json["ok"]
    assert server(dash, "default", server_id)["state"] == "disabled"
    assert admin.post(f"{base}/admin", {"action": "enable"}).status == 200
    wait_for(lambda: server(dash, "default", server_id)["state"] == "healthy", 5)
    assert admin.post(f"{base}/admin", {"action": "drain"}).status == 200
    assert server(dash, "default", server_id)["state"] == "draining"
    page = admin.get("/")
    assert count(page, "draining") == 1
    assert count(page, "healthy") == 1
    assert admin.post(f"{base}/admin", {"action": "enable"}).status == 200
    wait_for(lambda: server(dash, "default", server_id)["state"] == "healthy", 5)

    bad = admin.post(f"{base}/weight", {"weight": "0"})
    assert bad.status == 422
    assert bad.json == {"ok": False, "message": "weight: between 1 and 10000"}
    assert admin.post(f"{base}/admin", {"action": "explode"}).status == 422
    assert admin.post("/actions/servers/default/nope/weight", {"weight": "2"}).status == 404

    # Without JavaScript: a redirect back, and the message shown on the next page.
    page = admin.post(f"{base}/weight", {"weight": "4", "back": "/settings"}, json_reply=False)
    assert page.status == 303
    assert page.header("Location") == "/settings"
    assert f"default/{server_id}: weight 4" in admin.get("/settings").text
    assert server(dash, "default", server_id)["weight"] == 4
    admin.post(f"{base}/weight", {"weight": "1"})


def test_pool_settings_change_algorithm_health_and_weights(dash: Proxy, admin: Client) -> None:
    server_id = next(iter(ids(dash).values()))
    form = {
        "algorithm": "weighted-round-robin",
        "health.interval": "0.25",
        "health.path": "/",
        f"weight.{server_id}": "5",
    }
    page = admin.post("/actions/pools/default/settings", form)
    assert page.status == 200, page.text
    assert "algorithm weighted-round-robin" in page.json["message"]
    pool = api(dash, "GET", "/api/pools/default")
    assert pool["algorithm"] == "weighted-round-robin"
    assert pool["health"]["interval"] == 0.25
    assert server(dash, "default", server_id)["weight"] == 5

    bad = admin.post("/actions/pools/default/settings", {"health.interval": "-1"})
    assert bad.status == 422
    assert bad.json["message"].startswith("health.interval: ")
    assert admin.post("/actions/pools/default/settings", {"algorithm": "magic"}).status == 422
    assert api(dash, "GET", "/api/pools/default")["algorithm"] == "weighted-round-robin"

    restore = {"algorithm": "round-robin", "health.interval": "0.2", f"weight.{server_id}": "1"}
    assert admin.post("/actions/pools/default/settings", restore).status == 200
    assert api(dash, "GET", "/api/pools/default")["algorithm"] == "round-robin"


def test_stubs_are_added_changed_followed_and_stopped_from_the_dashboard(
    dash: Proxy, admin: Client, stubs: StubManager
) -> None:
    page = admin.post("/actions/pools/spare/stubs", {"status": "200"})
    assert page.status == 200, page.text
    message = page.json["message"]
    stub_id = re.search(r"stub (s\d+) started", message).group(1)  # type: ignore[union-attr]
    wait_for(lambda: states(dash, "spare").get(stub_id) == "healthy", 10)
    text = admin.get("/").text
    assert f'data-key="spare/{stub_id}"' in text
    assert "stub · 200" in text
    detail = admin.get(f"/servers/spare/{stub_id}").text
    assert f"/actions/stubs/{stub_id}/behaviour" in detail
    assert f'data-stream="/stubs/{stub_id}/log/stream"' in detail

    page = admin.post(f"/actions/stubs/{stub_id}/behaviour", {"status": "503", "latency": "5ms"})
    assert page.status == 200, page.text
    assert stubs.behaviour(stub_id).status == 503
    assert str(stubs.behaviour(stub_id).latency) == "5ms"
    assert admin.post(f"/actions/stubs/{stub_id}/behaviour", {"status": "99"}).status == 400
    assert admin.post(f"/actions/stubs/{stub_id}/behaviour", {}).status == 422

    # The access log: a page of the last lines, and a live stream (both need a login).
    anonymous = Client(dash.dashboard_port)
    assert anonymous.get(f"/stubs/{stub_id}/log").status == 303
    assert anonymous.get(f"/stubs/{stub_id}/log/stream").status == 403
    wait_for(lambda: "/health" in admin.get(f"/stubs/{stub_id}/log").text, 5)
    conn = http.client.HTTPConnection("127.0.0.1", dash.dashboard_port, timeout=10)
    try:
        conn.request(
            "GET",
            f"/stubs/{stub_id}/log/stream?lines=5",
            headers={"Cookie": "; ".join(f"{k}={v}" for k, v in admin.cookies.items())},
        )
        response = conn.getresponse()
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert response.readline() == b"retry: 3000\n"
        deadline = time.monotonic() + 5
        lines = []
        while time.monotonic() < deadline and len(lines) < 7:
            line = response.readline()
            if line.startswith(b"data: "):
                lines.append(line)
        assert len(lines) >= 7  # the last 5, then new ones as checks arrive
        assert any(b"/health" in line for line in lines)
    finally:
        conn.close()

    page = admin.post(f"/actions/stubs/{stub_id}/stop")
    assert page.status == 200, page.text
    assert page.json["message"] == f"stub {stub_id} stopped"
    assert stub_id not in states(dash, "spare")  # it deregistered before exiting
    assert admin.post(f"/actions/stubs/{stub_id}/stop").status == 400  # gone


def test_a_stub_changed_from_the_dashboard_has_its_server_checked_at_once(
    start_proxy: StartProxy,
) -> None:
    # Dead servers are checked every 30 s here: only a check made at once explains a
    # readmission within seconds of the change.
    proxy = start_dashboard_proxy(
        start_proxy,
        [],
        "[pools.default.health]\ninterval = 0.2\nfast_interval = 0.1\ndown_interval = 0.2\n"
        "max_down_interval = 0.2\nfall = 1\nrise = 1\ndead_after = 1\ndead_interval = 30.0\n",
    )
    admin = Client(proxy.dashboard_port)
    admin.login(proxy.token)
    manager = StubManager(proxy.state_dir)
    try:
        page = admin.post("/actions/pools/default/stubs", {"status": "200"})
        stub_id = re.search(r"stub (s\d+) started", page.json["message"]).group(1)  # type: ignore[union-attr]
        wait_for(lambda: states(proxy, "default").get(stub_id) == "healthy", 10)
        assert admin.post(f"/actions/stubs/{stub_id}/behaviour", {"status": "503"}).status == 200
        wait_for(lambda: states(proxy, "default").get(stub_id) == "dead", 10)
        changed = time.monotonic()
        assert admin.post(f"/actions/stubs/{stub_id}/behaviour", {"status": "200"}).status == 200
        wait_for(lambda: states(proxy, "default").get(stub_id) == "healthy", 10)
        assert time.monotonic() - changed < 5.0  # not the 30 s dead interval
    finally:
        manager.stop_all(timeout=5)
        proxy.process.stop()


def test_remove_server(start_proxy: StartProxy, backends: list[Backend]) -> None:
    proxy = start_dashboard_proxy(start_proxy, [backends[0].url])
    admin = Client(proxy.dashboard_port)
    admin.login(proxy.token)
    server_id = next(iter(ids(proxy).values()))
    page = admin.post(f"/actions/servers/default/{server_id}/remove")
    assert page.status == 200, page.text
    assert states(proxy) == {}
    text = admin.get("/").text
    assert "No servers in this pool yet." in text
    assert count(admin.get("/"), "total") == 0


# -- in process: no pools at all, and the API address handed to the dashboard -------------------


def test_no_pools_then_a_stub_registers_through_the_given_api_url(tmp_path: Path) -> None:
    """A registry with no pools (the empty state), then a pool and a stub started from the
    dashboard, which registers at `DashboardContext.api_url` (not at BUNANCER_API)."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        bus = EventBus()
        registry = Registry(loop, UpstreamSettings(), bus)
        telemetry = Telemetry(registry, bus, loop)
        token = "t" * 24
        saves: list[int] = []

        async def save() -> None:
            saves.append(1)

        commands = Commands(registry, save)
        api_server = await serve(build_api(registry, commands, token), "127.0.0.1", 0)
        api_port = api_server.sockets[0].getsockname()[1]
        context = DashboardContext(
            registry,
            telemetry,
            bus,
            token,
            str(tmp_path),
            commands,
            api_url=f"http://127.0.0.1:{api_port}",
        )
        app = build_dashboard(context)
        dashboard = await serve(app, "127.0.0.1", 0)
        client = Client(dashboard.sockets[0].getsockname()[1])

        async def call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            return await loop.run_in_executor(None, lambda: function(*args, **kwargs))

        try:
            page = await call(client.get, "/")
            assert "No pools" in page.text
            assert count(page, "total") == 0
            assert "No pools" in (await call(client.get, "/flow")).text
            assert "No pools." in (await call(client.get, "/settings")).text

            registry.add_pool("web", PoolSettings())
            await call(client.login, token)
            reply = await call(client.post, "/actions/pools/web/stubs", {"latency": "1ms"})
            assert reply.status == 200, reply.text
            assert list(registry.pools["web"].servers) == ["s1"]
            text = (await call(client.get, "/")).text
            assert 'data-key="web/s1"' in text
            assert "stub · 200 1ms" in text
            reply = await call(client.post, "/actions/stubs/s1/stop")
            assert reply.status == 200, reply.text
            assert not registry.pools["web"].servers
        finally:
            await call(StubManager(tmp_path).stop_all)
            for server in (dashboard, api_server):
                server.close()
            app.close_connections()
            await registry.close()

    uvloop.run(scenario())


# -- big pools: one node in the flow view, filtered and cut tables in the overview ------------

BIG = 50
FAST_HEALTH = {
    "interval": 0.2,
    "fast_interval": 0.1,
    "down_interval": 0.2,
    "max_down_interval": 0.4,
    "fall": 1,
    "dead_after": 2,
}
ROW = re.compile(r'<tr class="server state-(\w+)" data-key="([^"]+)"')


def closed_ports(n: int) -> list[int]:
    """n distinct ports where nothing listens (all bound at once, so none repeats)."""
    probes = [socket.socket() for _ in range(n)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def rows(text: str) -> list[tuple[str, str]]:
    """(state, key) of every server row of an overview, in the order shown."""
    return ROW.findall(text)


def pool_rows(text: str, pool: str) -> list[str]:
    return [key.split("/", 1)[1] for _, key in rows(text) if key.startswith(f"{pool}/")]


def group_count(text: str, state: str) -> int:
    match = re.search(rf'data-group-count="{state}">(\d+)<', text)
    assert match, f"no {state} count in the collapsed node"
    return int(match.group(1))


@pytest.fixture(scope="module")
def crowd(start_proxy: StartProxy, backends: list[Backend]) -> Proxy:
    """ "default": the two test backends (healthy) and a dead address; "big": 50 servers
    where nothing listens, b1..b50, all dead but b3 and b7, which are disabled."""
    ports = closed_ports(BIG + 1)
    proxy = start_dashboard_proxy(
        start_proxy, [b.url for b in backends] + [f"http://127.0.0.1:{ports[0]}"]
    )
    api(proxy, "POST", "/api/pools", {"name": "big", "health": FAST_HEALTH})
    for number, port in enumerate(ports[1:], 1):
        server = {"id": f"b{number}", "host": "127.0.0.1", "port": port}
        api(proxy, "POST", "/api/pools/big/servers", server)
    for number in (3, 7):
        api(proxy, "PATCH", f"/api/pools/big/servers/b{number}", {"admin": "disabled"})

    def settled() -> bool:
        big = sorted(states(proxy, "big").values())
        return big == ["dead"] * 48 + ["disabled"] * 2 and sorted(states(proxy).values()) == [
            "dead",
            "healthy",
            "healthy",
        ]

    wait_for(settled, 15)
    return proxy


def test_flow_draws_a_big_pool_as_one_node_with_its_servers_counted(crowd: Proxy) -> None:
    client = Client(crowd.dashboard_port)
    text = client.get("/flow").text
    # One node for the 50, none for each of them; the small pool drawn server by server.
    assert text.count('class="node group"') == 1
    assert 'data-group="big"' in text
    assert 'data-key="big/' not in text
    assert text.count('class="node server state-') == 3
    assert group_count(text, "dead") == 48
    assert group_count(text, "disabled") == 2
    for state in ("healthy", "pending", "unhealthy", "draining"):
        assert group_count(text, state) == 0
    assert f"{BIG} servers</text>" in text
    # The bar of states: 48/50 and 2/50 of its width, the others empty.
    track = float(re.search(r'class="track" width="([\d.]+)"', text).group(1))  # type: ignore[union-attr]
    bar = dict(re.findall(r'data-bar="(\w+)" x="[\d.]+" width="([\d.]+)"', text))
    assert float(bar["dead"]) == pytest.approx(track * 48 / BIG, abs=0.1)
    assert float(bar["disabled"]) == pytest.approx(track * 2 / BIG, abs=0.1)
    assert float(bar["healthy"]) == 0
    assert "no requests in the last second" in text  # nothing reaches a dead pool
    # Dots still go to the pool: one route for all of it, and the live count by pool.
    assert text.count('data-route-pool="big"') == 1
    assert 'data-pool="big" data-pool-servers="50"' in text
    # Clicking it expands it (a link: it works without the script too).
    assert 'href="/flow?expand=big" data-flow-link data-focus="big"' in text
    # The drawing stays short: the 50 take one node's height, not 50 rows.
    height = float(re.search(r'<svg id="flow"[^>]* height="([\d.]+)"', text).group(1))  # type: ignore[union-attr]
    assert height < 600
    css = client.get("/static/dashboard.css").text
    assert re.search(r"svg\.flow \{[^}]*max-height: max\(20rem, calc\(100vh - 15rem\)\)", css)
    # The zoom buttons wait for the script (without it the link still expands the pool).
    assert '<div class="flow-tools" role="toolbar" aria-label="Zoom" hidden>' in text
    assert ".flow-tools[hidden] { display: none; }" in css


def test_flow_expands_a_big_pool_and_collapses_it_again(crowd: Proxy) -> None:
    client = Client(crowd.dashboard_port)
    text = client.get("/flow?expand=big").text
    assert 'class="node group"' not in text
    drawn = re.findall(r'class="node server state-\w+" href="/servers/big/(b\d+)"', text)
    assert drawn == [f"b{n}" for n in range(1, BIG + 1)]  # all of them, by name
    assert text.count('data-route="big/') == BIG
    assert 'data-expanded="big"' in text  # the script shows this pool first
    # The way back: a "collapse" link under the pool's node.
    assert re.search(r'class="node toggle" href="/flow" data-flow-link', text)
    assert "collapse 50 servers" in text
    height = float(re.search(r'<svg id="flow"[^>]* height="([\d.]+)"', text).group(1))  # type: ignore[union-attr]
    assert height > BIG * 52
    # A pool that does not exist is not expanded, and a refresh keeps the view.
    assert 'data-group="big"' in client.get("/flow?expand=nope").text
    partial = client.get("/flow?expand=big&partial=1").text
    assert "<html" not in partial
    assert partial.count('data-route="big/') == BIG


def test_overview_filters_servers_by_state_and_text_on_the_server(crowd: Proxy) -> None:
    client = Client(crowd.dashboard_port)
    text = client.get("/?state=not-healthy").text
    assert all(state != "healthy" for state, _ in rows(text))
    assert [state for state, key in rows(text) if key.startswith("default/")] == ["dead"]
    assert '<option value="not-healthy" selected>' in text
    # Every pool still says how many servers it has (the script counts those, not rows).
    assert 'data-pool="big" data-pool-servers="50" data-cut' in text
    assert 'data-pool="default" data-pool-servers="3" id=' in text

    text = client.get("/?state=disabled").text
    assert sorted(pool_rows(text, "big")) == ["b3", "b7"]
    assert "None of its 3 servers match the filter." in text
    assert "2 of 50 servers match the filter." in text

    text = client.get("/?state=healthy").text
    assert [state for state, _ in rows(text)] == ["healthy", "healthy"]

    text = client.get("/?q=B1").text  # any case; b1 and b10..b19
    assert sorted(pool_rows(text, "big")) == sorted(["b1", *(f"b{n}" for n in range(10, 20))])
    assert pool_rows(text, "default") == []
    assert 'value="B1"' in text  # the field keeps what was typed
    # By address too: the dead server of "default" is the only one at its port.
    dead = next(
        key
        for state, key in rows(client.get("/").text)
        if key.startswith("default/") and state == "dead"
    )
    port = dead.rsplit(":", 1)[1]
    assert [key for _, key in rows(client.get(f"/?q=:{port}").text)] == [dead]

    everything = client.get("/?state=bogus&sort=bogus").text  # ignored: all, trouble first
    assert '<option value="all" selected>' in everything
    assert len(pool_rows(everything, "big")) == 12


def test_overview_cuts_a_big_pool_to_its_worst_rows_with_a_show_all_link(crowd: Proxy) -> None:
    client = Client(crowd.dashboard_port)
    text = client.get("/").text
    # Trouble first: the dead before the disabled, so the first 12 are all dead.
    big = pool_rows(text, "big")
    assert big == [f"b{n}" for n in (1, 2, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14)]
    assert next(state for state, key in rows(text) if key.startswith("default/")) == "dead"
    assert "Listing 12 of 50 servers, trouble first." in text
    assert 'href="/?all=big#pool-big" data-view-link>Show all 50</a>' in text
    # The histories the script starts from: the listed rows only.
    boot = json.loads(re.search(r'id="page-data">(.*?)</script>', text).group(1))  # type: ignore[union-attr]
    assert len(boot["histories"]) == 12 + 3

    text = client.get("/?sort=name").text
    assert pool_rows(text, "big") == [f"b{n}" for n in range(1, 13)]  # b3, b7 in their place
    assert "Listing 12 of 50 servers, by name." in text
    assert 'href="/?sort=name&amp;all=big#pool-big"' in text

    text = client.get("/?sort=name&all=big").text
    assert pool_rows(text, "big") == [f"b{n}" for n in range(1, BIG + 1)]
    assert "All 50 servers." in text
    assert 'href="/?sort=name#pool-big" data-view-link>Show the first 12 only</a>' in text
    assert '<input type="hidden" name="all" value="big">' in text  # the toolbar keeps it
    assert 'data-pool="big" data-pool-servers="50" id=' in text  # not cut


def test_overview_sorts_by_errors_on_the_server(crowd: Proxy, backends: list[Backend]) -> None:
    """One backend answers 500: by errors it comes first, though by name it does not."""
    client = Client(crowd.dashboard_port)
    by_port = {str(b.port): b for b in backends}
    names = {s["id"]: s["port"] for s in api(crowd, "GET", "/api/pools/default")["servers"]}
    healthy = sorted((p for p in names.values() if str(p) in by_port), key=int)
    failing = healthy[-1]  # the last by name of the two healthy ones
    conn = http.client.HTTPConnection("127.0.0.1", crowd.port, timeout=5)
    try:
        for _ in range(20):
            conn.request("GET", f"/fail-on/{failing}/500")
            conn.getresponse().read()
    finally:
        conn.close()
    failing_key = next(f"default/{i}" for i, p in names.items() if p == failing)

    def by_errors() -> list[str] | None:
        order = [key for _, key in rows(client.get("/?sort=errors").text)]
        return order if order and order[0] == failing_key else None

    order = wait_for(by_errors, 5)
    dead = next(f"default/{i}" for i, p in names.items() if str(p) not in by_port)
    other = next(f"default/{i}" for i, p in names.items() if p == healthy[0])
    # Most errors first; a server with no answers at all (the dead one) last.
    assert [key for key in order if key.startswith("default/")] == [failing_key, other, dead]
    by_name = [k for _, k in rows(client.get("/?sort=name").text) if k.startswith("default/")]
    assert by_name.index(other) < by_name.index(failing_key)
    assert '<option value="errors" selected>' in client.get("/?sort=errors").text
