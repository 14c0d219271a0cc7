"""README promises of the HTTP side, the API, health checks and persistence that had no
test of their own: each is checked end to end, through real `bunancer serve` processes,
the scripted backends (tests/backend.py) and real sockets on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backend import stream_pattern
from tests.conftest import Backend, Proxy, StartProxy
from tests.helpers import FAST_CHECKS, RawClient, free_port, wait_for
from tests.integration.test_streaming import RssWatcher

MiB = 1024 * 1024

# A fixed [api] section: start_proxy adds its own only when the text has none.
API = '[api]\nlisten = "127.0.0.1:0"\n'
# Passive ejection off: tests that fail requests on purpose keep both servers routable.
NO_OUTLIER = "[pools.default.outlier]\nenabled = false\n"


# -- small clients -------------------------------------------------------------------------------


def api(
    proxy: Proxy, method: str, path: str, body: Any = None, *, token: str | None = None
) -> tuple[int, Any]:
    """One API request on a connection of its own: (status, decoded JSON or None)."""
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection("127.0.0.1", proxy.api_port, timeout=5)
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        decoded = json.loads(raw) if raw else None
    except ValueError:
        decoded = raw.decode(errors="replace")
    return response.status, decoded


def servers(proxy: Proxy, pool: str = "default") -> dict[str, dict[str, Any]]:
    status, view = api(proxy, "GET", f"/api/pools/{pool}", token=proxy.token)
    assert status == 200, view
    return {s["id"]: s for s in view["servers"]}


def backend_log(backend: Backend) -> dict[str, Any]:
    """The backend's own record: request lines and connection counts (asked directly)."""
    with RawClient(backend.port) as client:
        log: dict[str, Any] = json.loads(client.request("GET", "/log").body)
    return log


def reached(backend: Backend, suffix: str) -> bool:
    """Did a request whose line ends with `suffix` reach `backend` (its own log)?"""
    return any(line.endswith(suffix) for line in backend_log(backend)["requests"])


def ok(backend: Backend) -> bytes:
    return b"ok %d\n" % backend.port


def server_id(backend: Backend) -> str:
    return f"127.0.0.1:{backend.port}"


def send_all_quietly(sock: socket.socket, data: bytes) -> None:
    """`sendall` for a thread of its own: a connection closed under it ends it quietly (the
    reading side reports what went wrong)."""
    try:
        sock.sendall(data)
    except OSError:
        pass


class SourceClient(RawClient):
    """A RawClient whose connection comes from `source` (any 127.x.y.z is local)."""

    def __init__(self, port: int, source: str, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""


# -- 1. retries after an upstream timeout --------------------------------------------------------


@pytest.mark.parametrize("retry_timeouts", [True, False])
def test_upstream_timeout_of_an_idempotent_request_is_retried_on_the_other_server(
    start_proxy: StartProxy, backends: list[Backend], retry_timeouts: bool
) -> None:
    """`retry_timeouts = true` (the default): a GET whose server does not answer within
    `upstream_response` is answered by the other server; with `false` it is a 504."""
    hanging, healthy = backends
    extra = "[timeouts]\nupstream_response = 0.3\n" + NO_OUTLIER
    if not retry_timeouts:
        extra += "[pools.default.balancing]\nretry_timeouts = false\n"
    proxy = start_proxy([b.url for b in backends], extra)
    tag = f"rt{uuid.uuid4().hex[:8]}"
    answers: list[tuple[int, bytes, float]] = []
    try:
        with proxy.client(timeout=5) as client:
            for n in range(4):
                started = time.monotonic()
                response = client.request("GET", f"/hang-on/{hanging.port}?{tag}={n}")
                answers.append((response.status, response.body, time.monotonic() - started))
    finally:
        proxy.process.stop()
    met_hanging = [reached(hanging, f"?{tag}={n}") for n in range(4)]
    assert any(met_hanging), "no request met the hanging server: nothing was tested"
    for (status, body, elapsed), hung in zip(answers, met_hanging, strict=True):
        if not hung:
            assert (status, body) == (200, ok(healthy))
            continue
        # It waited for the upstream timeout first, and not much longer.
        assert 0.25 <= elapsed < 3.0, elapsed
        if retry_timeouts:
            assert (status, body) == (200, ok(healthy)), answers
        else:
            assert status == 504, answers


# -- 2. retry_body_max ---------------------------------------------------------------------------


def test_retry_body_max_bounds_the_bodies_replayed(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    """A PUT body up to `retry_body_max` is kept and replayed on the other server after a
    retryable status; one byte more and it is not: the client gets the failure."""
    failing, healthy = backends
    proxy = start_proxy(
        [b.url for b in backends], "[pools.default.balancing]\nretry_body_max = 1024\n" + NO_OUTLIER
    )
    tag = f"rb{uuid.uuid4().hex[:8]}"
    kept, over = b"k" * 1024, b"o" * 1025
    try:
        with proxy.client() as client:
            small = [
                client.request("PUT", f"/fail-on/{failing.port}/502?{tag}-small={n}", kept)
                for n in range(4)
            ]
            large = [
                client.request("PUT", f"/fail-on/{failing.port}/502?{tag}-large={n}", over)
                for n in range(4)
            ]
    finally:
        proxy.process.stop()
    assert any(reached(failing, f"?{tag}-small={n}") for n in range(4)), "nothing was replayed"
    # Every small PUT was answered, by the other server, with the whole body.
    expected = f"{hashlib.sha256(kept).hexdigest()} {len(kept)} {healthy.port}".encode()
    assert [(r.status, r.body) for r in small] == [(200, expected)] * 4
    # A large PUT that met the failing server got its 502; the others went to the healthy one.
    met_failing = [reached(failing, f"?{tag}-large={n}") for n in range(4)]
    assert any(met_failing), "no large PUT met the failing server"
    for n, response in enumerate(large):
        status = 502 if met_failing[n] else 200
        assert response.status == status, (n, response.status, response.body)


# -- 3. a stale kept-alive connection ------------------------------------------------------------


def test_stale_kept_alive_connection_is_retried_on_a_fresh_one(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    """The backend closes a pooled connection just as the proxy reuses it (`/stale-next`
    makes it close at the next request, unanswered): a GET is sent again on a fresh
    connection at once; a POST whose body went out is not (502)."""
    backend = backends[0]
    proxy = start_proxy([backend.url])
    try:
        with proxy.client(timeout=5) as client:
            assert client.request("GET", "/stale-next").status == 200
            before = backend_log(backend)["proxied_connections"]
            started = time.monotonic()
            response = client.request("GET", "/after-stale")
            elapsed = time.monotonic() - started
            assert (response.status, response.body) == (200, ok(backend))
            assert elapsed < 1.0, f"answered after {elapsed:.2f}s"
            # The answer came on a new connection: the stale one was not retried in place.
            assert backend_log(backend)["proxied_connections"] == before + 1

            # The same close under a POST whose body went out: never replayed.
            assert client.request("GET", "/stale-next").status == 200
            post = client.request("POST", "/sha256", b"not twice")
            assert post.status == 502, (post.status, post.body)
            assert client.request("GET", "/").status == 200
    finally:
        proxy.process.stop()


# -- 4. the API token and its sources ------------------------------------------------------------

TOKEN = "a-token-of-24-characters"


def assert_token_guards_changes(proxy: Proxy, token: str) -> None:
    """Changes need exactly `token`."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    assert api(proxy, "POST", "/api/pools", {"name": name})[0] == 401
    assert api(proxy, "POST", "/api/pools", {"name": name}, token="x" + token)[0] == 401
    status, body = api(proxy, "POST", "/api/pools", {"name": name}, token=token)
    assert status == 201, body


@pytest.mark.parametrize("source", ["config", "token-file", "environment"])
def test_token_sources(
    start_proxy: StartProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """`[api] token`, `--token-file` and `BUNANCER_TOKEN` each set the token; none of them
    writes a generated one into the state dir."""
    monkeypatch.delenv("BUNANCER_TOKEN", raising=False)
    extra = API
    args: tuple[str, ...] = ()
    if source == "config":
        extra += f'token = "{TOKEN}"\n'
    elif source == "token-file":
        path = tmp_path / "api-token"
        path.write_text(TOKEN + "\n")
        args = ("--token-file", str(path))
    else:
        monkeypatch.setenv("BUNANCER_TOKEN", TOKEN)
    proxy = start_proxy([], extra, args=args)
    try:
        assert_token_guards_changes(proxy, TOKEN)
        assert not (proxy.state_dir / "token").exists()
        described = {"config": "config", "token-file": "file", "environment": "environment"}
        assert any(
            line.startswith(f"token: from {described[source]}") for line in proxy.process.lines
        ), proxy.process.lines[:20]
        assert not any(TOKEN in line for line in proxy.process.lines)  # never printed
    finally:
        proxy.process.stop()


def test_generated_token_is_private_and_printed_on_first_start_only(
    start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BUNANCER_TOKEN", raising=False)
    first = start_proxy([])
    try:
        path = first.state_dir / "token"
        token = path.read_text().strip()
        assert len(token) >= 16
        assert path.stat().st_mode & 0o777 == 0o600
        assert sum(token in line for line in first.process.lines) == 1  # printed, once
        assert_token_guards_changes(first, token)
    finally:
        assert first.process.stop() == 0
    path.chmod(0o644)  # loosened by hand: made private again, with a warning
    first.state_dir.chmod(0o757)  # others may write: warned about (not ours to change)
    again = start_proxy([], state_dir=first.state_dir)
    try:
        assert path.read_text().strip() == token  # the same token...
        assert_token_guards_changes(again, token)
        lines = again.process.lines
        assert not any(token in line for line in lines)  # ...not printed again
        assert any(line.startswith("token: from state") for line in lines)
        assert path.stat().st_mode & 0o777 == 0o600
        assert any(
            f"token file {path} was readable by others (mode 644); now 600" in line
            for line in lines
        )
        assert any(
            f"state dir {first.state_dir} is writable by others (mode 757)" in line
            for line in lines
        )
    finally:
        first.state_dir.chmod(0o700)
        again.process.stop()


def test_public_reads_off_needs_the_token_for_reads(start_proxy: StartProxy) -> None:
    proxy = start_proxy([], API + "public_reads = false\n")
    try:
        for path in ("/api/pools", "/api/pools/default", "/api/stats", "/metrics"):
            assert api(proxy, "GET", path)[0] == 401, path
            assert api(proxy, "GET", path, token="wrong-token-0123456789")[0] == 401, path
            assert api(proxy, "GET", path, token=proxy.token)[0] == 200, path
        assert api(proxy, "GET", "/healthz") == (200, {"status": "ok"})  # never needs one
    finally:
        proxy.process.stop()


# -- 5. DELETE /api/pools/{pool} -----------------------------------------------------------------


def test_delete_pool_drains_and_removes_its_servers_but_not_a_routes_pool(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    """DELETE refuses (409) a pool a route or the listener uses; any other pool's servers
    are drained (out of rotation; deregistration waits for their requests in flight) and
    removed, then the pool. Only pools nothing routes to can be removed, so no request can
    be in flight to them: the drain is seen in the log, each server's `-> draining`
    before its `removed`."""
    a, b = backends
    proxy = start_proxy(
        [a.url],
        f"""
        [pools.routed]
        servers = [{{ address = "{b.url}" }}]

        [pools.spare]
        servers = [{{ address = "{b.url}", id = "spare-b" }}]

        [[routes]]
        path_prefix = "/routed/"
        pool = "routed"
        """,
    )
    token = proxy.token
    try:
        # A route's pool and the listener's pool are refused, and keep serving.
        for name in ("routed", "default"):
            status, body = api(proxy, "DELETE", f"/api/pools/{name}", token=token)
            assert status == 409, (name, body)
            assert api(proxy, "GET", f"/api/pools/{name}", token=token)[0] == 200
        with proxy.client() as client:
            assert client.request("GET", "/routed/x").body == ok(b)
            assert client.request("GET", "/x").body == ok(a)

        # A pool made through the API, and a file pool nothing routes to, are removed.
        assert api(proxy, "POST", "/api/pools", {"name": "made"}, token=token)[0] == 201
        for backend, sid in ((a, "m-a"), (b, "m-b")):
            body = {"host": "127.0.0.1", "port": backend.port, "id": sid}
            assert api(proxy, "POST", "/api/pools/made/servers", body, token=token)[0] == 201
        for name, ids in (("made", ["m-a", "m-b"]), ("spare", ["spare-b"])):
            assert api(proxy, "DELETE", f"/api/pools/{name}", token=token) == (
                200,
                {"removed": name},
            )
            assert api(proxy, "GET", f"/api/pools/{name}", token=token)[0] == 404
            for sid in ids:
                assert api(proxy, "GET", f"/api/pools/{name}/servers/{sid}", token=token)[0] == 404
                # Each server was drained (out of rotation, in-flight waited for), then removed.
                proxy.process.wait_line(rf" {name}/{sid} removed \(deregistered\)", timeout=5)
                lines = [line for line in proxy.process.lines if f" {name}/{sid}" in line]
                drained = [i for i, line in enumerate(lines) if "draining (deregistered)" in line]
                removed = [i for i, line in enumerate(lines) if "removed (deregistered)" in line]
                assert len(drained) == len(removed) == 1, lines
                assert drained[0] < removed[0], lines
        names = {p["name"] for p in api(proxy, "GET", "/api/pools", token=token)[1]}
        assert names == {"default", "routed"}
        with proxy.client() as client:  # the routed pools did not notice
            assert client.request("GET", "/routed/y").body == ok(b)
    finally:
        proxy.process.stop()


# -- 6. remove_dead_after ------------------------------------------------------------------------

QUICK_DEATH = {
    "interval": 0.1,
    "fast_interval": 0.1,
    "down_interval": 0.1,
    "max_down_interval": 0.1,
    "dead_interval": 0.1,
    "fall": 1,
    "dead_after": 1,
}


def test_dead_server_is_removed_after_remove_dead_after(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    dead_port = free_port()
    dead_id = f"127.0.0.1:{dead_port}"
    health = "".join(f"{key} = {value}\n" for key, value in QUICK_DEATH.items())
    proxy = start_proxy(
        [backends[0].url, dead_id],
        f"[pools.default.health]\n{health}remove_dead_after = 1.0\n",
    )
    token = proxy.token
    try:
        # The same checks in a pool of the API's, without remove_dead_after: kept when dead.
        body = {"name": "keeps", "health": QUICK_DEATH}
        assert api(proxy, "POST", "/api/pools", body, token=token)[0] == 201
        other_dead = {"host": "127.0.0.1", "port": free_port(), "id": "kept"}
        assert api(proxy, "POST", "/api/pools/keeps/servers", other_dead, token=token)[0] == 201

        wait_for(lambda: servers(proxy)[dead_id]["state"] == "dead", timeout=5)
        dead_since = time.monotonic() - servers(proxy)[dead_id]["for"]
        wait_for(lambda: dead_id not in servers(proxy), timeout=5, interval=0.05)
        removed_after = time.monotonic() - dead_since
        assert 0.9 <= removed_after < 3.0, f"removed {removed_after:.2f}s after it died"
        proxy.process.wait_line(r"removed \(dead for more than 1s\)", timeout=5)
        assert set(servers(proxy)) == {server_id(backends[0])}  # the live one stays

        kept = wait_for(
            lambda: (
                (s := servers(proxy, "keeps")["kept"])["state"] == "dead" and s["for"] >= 1.5 and s
            )
        )
        assert kept["id"] == "kept"  # dead for longer than 1 s, still there
    finally:
        proxy.process.stop()


# -- 7. what a restart keeps ---------------------------------------------------------------------


def test_restart_keeps_draining_and_takes_a_file_pools_settings_from_the_file(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    a, b = backends
    urls = [a.url, b.url]
    proxy = start_proxy(urls, FAST_CHECKS)
    token = proxy.token
    try:
        status, view = api(
            proxy,
            "PATCH",
            f"/api/pools/default/servers/{server_id(a)}",
            {"admin": "draining"},
            token=token,
        )
        assert (status, view["state"]) == (200, "draining"), view
        change = {"algorithm": "least-connections", "health": {"rise": 5}}
        assert api(proxy, "PATCH", "/api/pools/default", change, token=token)[0] == 200
        assert api(proxy, "POST", "/api/pools", {"name": "mine"}, token=token)[0] == 201
        assert api(proxy, "PATCH", "/api/pools/mine", change, token=token)[0] == 200
    finally:
        assert proxy.process.stop() == 0

    again = start_proxy(urls, FAST_CHECKS, state_dir=proxy.state_dir)
    try:
        # The file pool's settings are the file's again (round-robin, rise 2)...
        default = api(again, "GET", "/api/pools/default", token=token)[1]
        assert (default["algorithm"], default["health"]["rise"]) == ("round-robin", 2)
        # ...while the API's pool keeps what the API set.
        mine = api(again, "GET", "/api/pools/mine", token=token)[1]
        assert (mine["algorithm"], mine["health"]["rise"]) == ("least-connections", 5)
        # The drained server is still draining, after the other one's checks too.
        wait_for(lambda: len(servers(again)[server_id(b)]["checks"]) >= 3, timeout=5)
        drained = servers(again)[server_id(a)]
        assert drained["state"] == "draining", drained
        with again.client() as client:
            assert {client.request("GET", "/").body for _ in range(6)} == {ok(b)}
    finally:
        again.process.stop()


# -- 10. hash keys -------------------------------------------------------------------------------

KEYS = [f"k{n}" for n in range(20)]


@pytest.mark.parametrize("hash_key", ["client_ip", "path", "cookie:sid", "header:X-User"])
def test_hash_key_keeps_each_key_on_one_server_and_spreads_the_keys(
    start_proxy: StartProxy, backends: list[Backend], hash_key: str
) -> None:
    proxy = start_proxy(
        [b.url for b in backends],
        f'[pools.default.balancing]\nhash_key = "{hash_key}"\n',
        algorithm="hash",
    )
    landed: dict[str, set[bytes]] = {}
    set_cookies: list[str] = []
    try:
        with proxy.client() as client:
            for index, key in enumerate(KEYS):
                for n in range(3):
                    if hash_key == "client_ip":
                        # Each key is a client address of its own, a new connection each time.
                        with SourceClient(proxy.port, f"127.0.0.{index + 2}") as other:
                            response = other.request("GET", f"/ip?n={n}")
                    elif hash_key == "path":
                        response = client.request("GET", f"/p/{key}?n={n}")  # query ignored
                    elif hash_key == "cookie:sid":
                        cookie = f"a={n}; sid={key}; z=1"
                        response = client.request("GET", f"/c?n={n}", headers={"Cookie": cookie})
                    else:
                        response = client.request("GET", f"/h?n={n}", headers={"X-User": key})
                    assert response.status == 200, response.body
                    landed.setdefault(key, set()).add(response.body)
                    set_cookies += response.header_all("Set-Cookie")
    finally:
        proxy.process.stop()
    assert {key: len(bodies) for key, bodies in landed.items()} == dict.fromkeys(KEYS, 1)
    reached = set().union(*landed.values())
    assert reached == {ok(b) for b in backends}, "the keys did not spread over both servers"
    assert set_cookies == []  # hashing sets no cookie (sticky_cookie is the sticky algorithm's)


# -- 11. max_pipelined ---------------------------------------------------------------------------


def test_max_pipelined_pauses_reading_and_answers_every_request_in_order(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    """Behind a slow first request, 500 pipelined requests (4 MB: 8 KB heads) with
    `max_pipelined = 2`: the proxy stops reading, so the client cannot hand them all over
    meanwhile (with reading going on, all 4 MB go in a few milliseconds). Then reading
    resumes and every request is answered, in order."""
    proxy = start_proxy([backends[0].url], "[limits]\nmax_pipelined = 2\n")
    count, pad = 500, "p" * 8000
    first = b"GET /sleep/1000 HTTP/1.1\r\nHost: t\r\n\r\n"
    rest = b"".join(
        f"GET /size/{n} HTTP/1.1\r\nHost: t\r\nX-Pad: {pad}\r\n\r\n".encode()
        for n in range(1, count + 1)
    )
    client = proxy.client(timeout=10)
    sender: threading.Thread | None = None
    try:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        client.send(first)
        # Hand over what the proxy takes, without blocking, while the first one sleeps.
        client.sock.setblocking(False)
        taken = 0
        deadline = time.monotonic() + 0.6
        while taken < len(rest) and time.monotonic() < deadline:
            try:
                taken += client.sock.send(rest[taken : taken + 65536])
            except BlockingIOError:
                select.select([], [client.sock], [], 0.05)  # until writable again
        assert taken < len(rest) // 2, f"the proxy read {taken} of {len(rest)} bytes"
        client.sock.settimeout(10)
        sender = threading.Thread(target=send_all_quietly, args=(client.sock, rest[taken:]))
        sender.start()
        answers = [client.read_response() for _ in range(count + 1)]
    finally:
        if sender is not None:
            sender.join(10)
        client.close()
        proxy.process.stop()
    assert (answers[0].status, answers[0].body) == (200, b"slept\n")
    assert [a.status for a in answers[1:]] == [200] * count
    assert [len(a.body) for a in answers[1:]] == list(range(1, count + 1))


def test_pipelined_large_heads_read_in_pieces_are_not_431(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    """200 pipelined requests with 8 KB heads (1.6 MB, the default max_pipelined of 32):
    reading pauses and resumes, and a read resuming in the middle of a head carries whole
    requests before the next head's beginning. None of those heads is near the 64 KiB
    limit, so none may be refused with 431."""
    proxy = start_proxy([backends[0].url])
    count, pad = 200, "p" * 8000
    data = b"".join(
        f"GET /size/{n} HTTP/1.1\r\nHost: t\r\nX-Pad: {pad}\r\n\r\n".encode()
        for n in range(1, count + 1)
    )
    client = proxy.client(timeout=10)
    sender = threading.Thread(target=send_all_quietly, args=(client.sock, data))
    statuses: list[tuple[int, int]] = []
    try:
        sender.start()
        for _ in range(count):
            response = client.read_response()
            statuses.append((response.status, len(response.body)))
    except ConnectionError:
        pass  # closed early: the statuses so far say why
    finally:
        sender.join(10)
        client.close()
        proxy.process.stop()
    assert statuses == [(200, n) for n in range(1, count + 1)], statuses[-3:]


# -- 12. upload backpressure ---------------------------------------------------------------------


@pytest.fixture
def slow_upload_proxy(start_proxy: StartProxy, backends: list[Backend]) -> Iterator[Proxy]:
    proxy = start_proxy([backends[0].url])
    yield proxy
    proxy.process.stop()


def test_upload_to_a_slowly_reading_backend_keeps_the_proxy_memory_bounded(
    slow_upload_proxy: Proxy,
) -> None:
    """64 MiB up to a backend that pauses 8 ms after every read: the proxy stops reading
    the client instead of buffering, its RSS stays within 32 MiB of where it started, and
    the body arrives whole."""
    size = 64 * MiB
    expected = hashlib.sha256()
    for piece in stream_pattern(size):
        expected.update(piece)
    proxy = slow_upload_proxy
    with RssWatcher(proxy) as watcher, proxy.client(timeout=60) as client:
        started = time.monotonic()
        client.send(b"POST /slow-sha256/8 HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
        for piece in stream_pattern(size):
            client.send(piece)
        response = client.read_response()
        elapsed = time.monotonic() - started
    assert response.status == 200, response.body
    assert response.body.decode() == f"{expected.hexdigest()} {size}"
    assert len(watcher.samples) >= 10, "too few RSS samples"
    print(f"64 MiB slow upload: {elapsed:.1f}s, proxy RSS grew {watcher.growth_mib:.1f} MiB")
    assert watcher.growth_mib < 32, f"proxy RSS grew {watcher.growth_mib:.1f} MiB"


pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
