"""Config reload through a real `bunancer serve`: `bunancer reload` (the API) and SIGHUP read
the file again and change pools, servers, routes and listeners in place, keeping client
connections, tunnels and what the API changed; a file that does not load changes nothing."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Backend, Proxy, StartProxy
from tests.helpers import RawClient, free_port, run_cli, wait_for

HEAD = """
[api]
listen = "127.0.0.1:0"
[dashboard]
enabled = false
"""


def write_config(proxy: Proxy, text: str) -> None:
    (proxy.state_dir.parent / "bunancer.toml").write_text(HEAD + text)


def reload(proxy: Proxy) -> subprocess.CompletedProcess[str]:
    api = f"http://127.0.0.1:{proxy.api_port}"
    return run_cli("reload", "--api", api, "--state-dir", str(proxy.state_dir), timeout=60)


def answered_by(client: RawClient, path: str) -> int:
    response = client.request("GET", path)
    assert response.status == 200, response
    return int(response.body.split()[-1])


def api_get(proxy: Proxy, path: str) -> object:
    with RawClient(proxy.api_port) as client:
        client.send(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        return json.loads(client.read_response().body)


def pools(proxy: Proxy) -> dict[str, dict[str, object]]:
    listed = api_get(proxy, "/api/pools")
    assert isinstance(listed, list)
    return {p["name"]: p for p in listed}


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_reload_changes_pools_routes_and_listeners_and_keeps_connections(
    start_proxy: StartProxy, backends: list[Backend], workers: str
) -> None:
    one, two = backends
    proxy = start_proxy([f"127.0.0.1:{one.port}"], extra=HEAD, args=("--workers", workers))
    kept = proxy.client()
    assert answered_by(kept, "/v1/x") == one.port
    tunnel = proxy.client()
    tunnel.send(b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
    assert tunnel.read_response().status == 101
    extra_port = free_port()
    write_config(
        proxy,
        f"""
        [[listeners]]
        address = "127.0.0.1:0"
        [[listeners]]
        address = "127.0.0.1:{extra_port}"
        default_pool = "v1"
        [pools.default]
        algorithm = "round-robin"
        servers = [{{ address = "127.0.0.1:{one.port}" }}]
        [pools.v1]
        servers = [{{ address = "127.0.0.1:{two.port}" }}]
        [[routes]]
        path_prefix = "/v1/"
        pool = "v1"
        """.replace("\n        ", "\n"),
    )
    result = reload(proxy)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "pool v1 added",
        f"server v1/127.0.0.1:{two.port} added",
        f"listener 127.0.0.1:{extra_port} (http) added",
        "routes changed",
    ]
    wait_for(lambda: pools(proxy)["v1"]["servers"][0]["state"] == "healthy")  # type: ignore[index]
    # The connection opened before the reload follows the new routes.
    assert answered_by(kept, "/v1/x") == two.port
    assert answered_by(kept, "/other") == one.port
    with RawClient(extra_port) as fresh:
        assert answered_by(fresh, "/") == two.port
    # The tunnel opened before it still carries bytes both ways.
    tunnel.send(b"still here")
    echoed = b""
    while len(echoed) < len(b"still here"):
        echoed += tunnel.sock.recv(100)
    assert echoed == b"still here"


def test_what_the_api_changed_stays_and_a_removed_server_goes(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    one, two = backends
    proxy = start_proxy([f"127.0.0.1:{one.port}", f"127.0.0.1:{two.port}"], extra=HEAD)
    token = f"Authorization: Bearer {proxy.token}\r\n"
    body = b'{"host": "127.0.0.1", "port": 9, "id": "from-api"}'
    with RawClient(proxy.api_port) as client:
        head = "POST /api/pools/default/servers HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        client.send(f"{head}{token}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert client.read_response().status == 201
        patch = b'{"weight": 7}'
        head = (
            f"PATCH /api/pools/default/servers/127.0.0.1:{one.port} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        )
        client.send(f"{head}{token}Content-Length: {len(patch)}\r\n\r\n".encode() + patch)
        assert client.read_response().status == 200
    write_config(
        proxy,
        f'[[listeners]]\naddress = "127.0.0.1:0"\n[pools.default]\nalgorithm = "round-robin"\n'
        f'servers = [{{ address = "127.0.0.1:{one.port}" }}]\n',
    )
    result = reload(proxy)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"server default/127.0.0.1:{two.port} removed"]
    servers = {s["id"]: s for s in pools(proxy)["default"]["servers"]}  # type: ignore[attr-defined]
    assert sorted(servers) == ["127.0.0.1:" + str(one.port), "from-api"]
    assert servers[f"127.0.0.1:{one.port}"]["weight"] == 7  # the API's weight overlays the file


def test_a_file_that_does_not_load_is_refused_and_the_running_config_stays(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    proxy = start_proxy([f"127.0.0.1:{backends[0].port}"], extra=HEAD)
    path = proxy.state_dir.parent / "bunancer.toml"
    good = path.read_text()
    path.write_text(good + '\n[[routes]]\npool = "nope"\n')
    check = run_cli("config", "check", str(path))
    result = reload(proxy)
    assert result.returncode == 2
    assert result.stderr == check.stderr  # the same one line as `config check`
    assert "routes[0].pool: unknown pool 'nope'" in result.stderr
    with proxy.client() as client:
        assert answered_by(client, "/") == backends[0].port


@pytest.mark.parametrize("workers", ["0", "2"])
def test_sighup_reloads(start_proxy: StartProxy, backends: list[Backend], workers: str) -> None:
    proxy = start_proxy([f"127.0.0.1:{backends[0].port}"], extra=HEAD, args=("--workers", workers))
    path: Path = proxy.state_dir.parent / "bunancer.toml"
    path.write_text(path.read_text().replace('algorithm = "round-robin"', 'algorithm = "p2c"'))
    proxy.process.signal(signal.SIGHUP)
    proxy.process.wait_line(r"reload: pool default changed")
    assert pools(proxy)["default"]["algorithm"] == "p2c"


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_listener_that_changes_mode_keeps_its_address(
    start_proxy: StartProxy, backends: list[Backend], workers: str
) -> None:
    one = backends[0]
    port = free_port()
    text = f"""
    [[listeners]]
    address = "127.0.0.1:0"
    [[listeners]]
    address = "127.0.0.1:{port}"
    MODE
    [pools.default]
    algorithm = "round-robin"
    servers = [{{ address = "127.0.0.1:{one.port}" }}]
    """.replace("\n    ", "\n")
    proxy = start_proxy([f"127.0.0.1:{one.port}"], extra=HEAD, args=("--workers", workers))
    write_config(proxy, text.replace("MODE", ""))
    assert reload(proxy).returncode == 0
    with RawClient(port) as client:
        assert answered_by(client, "/") == one.port  # HTTP: parsed and proxied
    write_config(proxy, text.replace("MODE", 'mode = "tcp"'))
    result = reload(proxy)
    assert result.returncode == 0, result.stderr
    assert f"listener 127.0.0.1:{port} (tcp) added" in result.stdout
    with RawClient(port) as client:  # TCP now: the bytes reach the backend as they are
        assert answered_by(client, "/") == one.port
        assert client.request("GET", "/echo-headers").body.count(b"X-Forwarded-For") == 0
