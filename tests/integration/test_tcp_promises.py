"""README promises of TCP mode and of upgraded (WebSocket) connections that had no test of
their own, through real `bunancer serve` processes, real backends and real sockets.

TCP listeners here carry HTTP to the scripted backends (tests/backend.py), whose answer
"ok <port>" names the server a connection reached; tests/echo_backend.py stands for a
server that does not speak HTTP at all.
"""

from __future__ import annotations

import http.client
import json
import socket
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import Backend, Proxy, StartProxy, serve_args, single_process_only
from tests.helpers import Process, RawClient, free_port, spawn, wait_for


@dataclass
class TcpProxy:
    process: Process
    port: int
    api_port: int

    def api(self, path: str) -> Any:
        """A read from the API (reads need no token by default)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            assert response.status == 200, response.status
            return json.loads(response.read())
        finally:
            conn.close()

    def servers(self) -> dict[str, dict[str, Any]]:
        return {s["id"]: s for s in self.api("/api/pools/default")["servers"]}


StartTcp = Callable[..., TcpProxy]


@pytest.fixture(scope="module")
def start_tcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartTcp]:
    """Start a balancer whose one listener is in TCP mode over `ports`; `listener` and
    `pool` are TOML lines added to the listener's and to the pool's table. Each test stops
    what it started; whatever is left stops with the module."""
    running: list[TcpProxy] = []

    def start(ports: list[int], listener: str = "", pool: str = "") -> TcpProxy:
        workdir = tmp_path_factory.mktemp("tcp-promises")
        servers = ", ".join(f'{{ address = "tcp://127.0.0.1:{p}" }}' for p in ports)
        config = workdir / "bunancer.toml"
        config.write_text(
            '[api]\nlisten = "127.0.0.1:0"\n[dashboard]\nenabled = false\n'
            + '[[listeners]]\naddress = "127.0.0.1:0"\nmode = "tcp"\n'
            + textwrap.dedent(listener)
            + f"\n[pools.default]\nservers = [{servers}]\n"
            + textwrap.dedent(pool)
        )
        process = spawn(serve_args(config, workdir / "s"))
        api = process.wait_line(r"ready: api listening on 127\.0\.0\.1:(\d+)")
        port = process.wait_line(r"ready: proxy listening on 127\.0\.0\.1:(\d+)")
        proxy = TcpProxy(process, int(port.group(1)), int(api.group(1)))
        running.append(proxy)
        return proxy

    yield start
    for proxy in running:
        proxy.process.stop()


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    process = spawn(["-m", "tests.echo_backend"])
    yield int(process.wait_line(r"^PORT (\d+)$").group(1))
    process.stop()


class TunnelClient(RawClient):
    """A RawClient connected from `source` (any 127.x.y.z is a local address)."""

    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""


def closed_at_once(client: RawClient) -> bool:
    """The peer closed or reset the connection, with nothing sent (within 3 s)."""
    client.sock.settimeout(3)
    try:
        data = client.sock.recv(1024)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return data == b""


def ok(backend: Backend) -> bytes:
    return b"ok %d\n" % backend.port


# -- TCP mode: max_connections -------------------------------------------------------------------


@single_process_only
def test_tcp_listener_max_connections_closes_connections_beyond_it(
    start_tcp: StartTcp, backends: list[Backend]
) -> None:
    proxy = start_tcp([backends[0].port], listener="max_connections = 2\n")
    first, second = TunnelClient(proxy.port), TunnelClient(proxy.port)
    try:
        for client in (first, second):
            assert client.request("GET", "/").body == ok(backends[0])
        # A third while both are open: closed without reaching the server.
        with TunnelClient(proxy.port) as third:
            try:
                third.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed before the request went: refused all the same
            assert closed_at_once(third), "a connection beyond max_connections was served"
        # The two still work; once one ends, a new connection is served again.
        assert second.request("GET", "/again").body == ok(backends[0])
        first.close()

        def served() -> bool:
            with TunnelClient(proxy.port) as client:
                try:
                    return client.request("GET", "/later").status == 200
                except (ConnectionError, OSError):
                    return False

        wait_for(served, timeout=5, interval=0.05)
    finally:
        first.close()
        second.close()
        proxy.process.stop()


# -- TCP mode: hash on the client address --------------------------------------------------------


def test_tcp_hash_keeps_a_client_address_on_one_server_and_spreads_addresses(
    start_tcp: StartTcp, backends: list[Backend]
) -> None:
    proxy = start_tcp([b.port for b in backends], pool='algorithm = "hash"\n')
    landed: dict[str, set[bytes]] = {}
    try:
        for index in range(20):
            source = f"127.0.0.{index + 2}"
            for n in range(3):  # a new connection (new source port) each time
                with TunnelClient(proxy.port, source) as client:
                    response = client.request("GET", f"/tcp-hash?n={n}")
                    assert response.status == 200
                    landed.setdefault(source, set()).add(response.body)
    finally:
        proxy.process.stop()
    assert all(len(bodies) == 1 for bodies in landed.values()), landed
    assert set().union(*landed.values()) == {ok(b) for b in backends}, (
        "the client addresses did not spread over both servers"
    )


# -- TCP mode: connect checks ----------------------------------------------------------------------


def test_tcp_only_pool_is_checked_with_a_connect_without_any_traffic(
    start_tcp: StartTcp, echo_port: int
) -> None:
    """The echo server does not speak HTTP (an HTTP check of it would fail): it is healthy
    by connect checks, while a port that refuses goes unhealthy, before any connection
    reaches the listener."""
    refused = free_port()
    proxy = start_tcp(
        [echo_port, refused],
        pool="""
        [pools.default.health]
        interval = 0.1
        fast_interval = 0.1
        down_interval = 0.1
        max_down_interval = 0.2
        """,
    )
    try:
        refused_id, echo_id = f"127.0.0.1:{refused}", f"127.0.0.1:{echo_port}"
        down = wait_for(
            lambda: (s := proxy.servers()[refused_id])["state"] in ("unhealthy", "dead") and s,
            timeout=5,
        )
        assert "connect refused" in down["reason"], down
        echo = proxy.servers()[echo_id]
        assert echo["state"] == "healthy", echo
        assert echo["last_check"]["ok"] is True
        pool = proxy.api("/api/pools/default")
        assert (pool["health"]["type"], pool["algorithm"]) == ("tcp", "round-robin")
        stats = proxy.api("/api/stats")
        assert stats["listeners"][0]["tunnels"] == 0
        assert stats["pools"]["default"]["requests"] == 0  # no traffic was needed
    finally:
        proxy.process.stop()


# -- upgraded connections: tunnel_idle and the pool ----------------------------------------------

UPGRADE = b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"


def upgrade(client: RawClient) -> None:
    client.send(UPGRADE)
    response = client.read_response()
    assert response.status == 101, (response.status, response.body)
    assert response.header("Upgrade") == "echo"


def echo(client: RawClient, data: bytes) -> bytes:
    client.send(data)
    while len(client.buffer) < len(data):
        chunk = client.sock.recv(65536)
        assert chunk, "the tunnel closed"
        client.buffer += chunk
    answer, client.buffer = client.buffer[: len(data)], client.buffer[len(data) :]
    return answer


def backend_counts(backend: Backend) -> dict[str, Any]:
    with RawClient(backend.port) as client:
        log: dict[str, Any] = json.loads(client.request("GET", "/log").body)
    return log


def test_idle_upgraded_connection_is_closed_after_tunnel_idle(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    proxy = start_proxy([backends[0].url], "[timeouts]\ntunnel_idle = 0.5\n")
    try:
        with proxy.client(timeout=5) as client:
            upgrade(client)
            # Bytes every 0.3 s keep it open past 0.5 s: the limit is on idleness.
            for n in range(4):
                if n:
                    assert not client.is_closed(timeout=0.3)
                assert echo(client, b"ping %d" % n) == b"ping %d" % n
            last_byte = time.monotonic()
            assert client.is_closed(timeout=5)
            elapsed = time.monotonic() - last_byte
            assert client.buffer == b""
        assert 0.4 <= elapsed < 3.0, f"closed after {elapsed:.2f}s of idleness"
    finally:
        proxy.process.stop()


@single_process_only
def test_upgraded_upstream_connection_never_returns_to_the_pool(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    """While a tunnel is open its upstream connection is not the pool's: another request
    opens a connection of its own (had it been given the tunnel's, the echo would have come
    back as its answer). After the tunnel, requests are answered on pooled connections."""
    backend = backends[0]
    proxy = start_proxy([backend.url])
    try:
        before = backend_counts(backend)["proxied_connections"]
        with proxy.client() as tunnel:
            upgrade(tunnel)
            assert echo(tunnel, b"hello") == b"hello"
            assert backend_counts(backend)["proxied_connections"] == before + 1
            with proxy.client() as other:
                response = other.request("GET", "/beside-the-tunnel")
                assert (response.status, response.body) == (200, ok(backend))
                assert backend_counts(backend)["proxied_connections"] == before + 2
                assert echo(tunnel, b"still mine") == b"still mine"
        wait_for(lambda: open_tunnels(proxy) == 0, timeout=5)
        with proxy.client() as client:
            for n in range(3):
                response = client.request("GET", f"/after-the-tunnel?n={n}")
                assert (response.status, response.body) == (200, ok(backend))
        # The connection opened beside the tunnel served these: the tunnel's never came back.
        assert backend_counts(backend)["proxied_connections"] == before + 2
    finally:
        proxy.process.stop()


def open_tunnels(proxy: Proxy) -> int:
    """Tunnels the balancer has open, by its /api/stats."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.api_port, timeout=5)
    try:
        conn.request("GET", "/api/stats")
        stats = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return sum(listener["tunnels"] for listener in stats["listeners"])
