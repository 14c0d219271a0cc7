"""The `bunancer` command as a user runs it: start, bad input, port in use, drain, memory."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from tests.conftest import Backend, Proxy, StartProxy
from tests.helpers import RawClient, run_cli, spawn, wait_for


def test_help_lists_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout
    assert "config" in result.stdout
    serve_help = run_cli("serve", "--help").stdout
    for flag in ("--config", "--listen", "--backend", "--state-dir"):
        assert flag in serve_help


def test_config_check_ok_and_bad(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[pools.default]\nservers = [{ address = "127.0.0.1:9001" }]\n')
    result = run_cli("config", "check", str(good))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[pools.web]\nservers = [{ address = "127.0.0.1:9001", weight = -1 }]\n')
    result = run_cli("config", "check", str(bad))
    assert result.returncode == 2
    assert f"{bad}: pools.web.servers[0].weight:" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[timeouts]\nconnect = 0\n")
    result = run_cli("serve", "--config", str(bad))
    assert result.returncode == 2
    assert f"{bad}: timeouts.connect: Input should be greater than 0" in result.stderr


def test_bad_flags_exit_2() -> None:
    result = run_cli("serve", "--listen", "nowhere")
    assert result.returncode == 2
    assert "expected HOST:PORT" in result.stderr
    result = run_cli("serve", "--backend", "ftp://x:1")
    assert result.returncode == 2
    assert "unsupported scheme" in result.stderr


def test_port_in_use_exits_2(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        result = run_cli("serve", "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path))
    finally:
        holder.close()
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in result.stderr


def test_serve_flags_without_config(tmp_path: Path, backends: list[Backend]) -> None:
    """`bunancer serve --backend ... --listen ...` from an empty directory."""
    process = spawn(
        [
            "-m",
            "bunancer",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--dashboard-listen",
            "127.0.0.1:0",
            "--backend",
            backends[0].url,
            "--backend",
            f"127.0.0.1:{backends[1].port}",
        ],
        cwd=tmp_path,
    )
    try:
        port = int(process.wait_line(r"ready: proxy listening on 127\.0\.0\.1:(\d+)").group(1))
        with RawClient(port) as client:
            answers = {client.request("GET", "/").body for _ in range(20)}
        assert len(answers) == 2  # the default algorithm uses both
        state = tmp_path / ".bunancer"
        assert state.is_dir()
        assert state.stat().st_mode & 0o777 == 0o700
    finally:
        assert process.stop() == 0


def test_banner_keeps_the_token_line_whole_when_output_is_not_a_terminal(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy([])  # its state dir is a long pytest path: the line passes 80 columns
    token = proxy.token
    lines = [line for line in proxy.process.lines if line.startswith("token: ")]
    assert len(lines) == 1, proxy.process.lines[:20]
    assert lines[0].startswith(f"token: {token}   (new; saved in ")
    assert lines[0].endswith(f"{proxy.state_dir / 'token'})")
    assert len(lines[0]) > 80


def test_graceful_drain_finishes_in_flight(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    proxy = start_proxy([backends[0].url], "[timeouts]\ndrain = 5\n")
    idle = proxy.client()
    idle.request("GET", "/")
    busy = proxy.client()
    busy.send(b"GET /sleep/700 HTTP/1.1\r\nHost: t\r\n\r\n")
    wait_for(lambda: any("GET /sleep/700" in r for r in backend_log(backends[0])))
    proxy.process.signal(signal.SIGTERM)
    # The idle keep-alive connection is closed at once...
    assert idle.is_closed(timeout=5)
    # ...new connections are refused...
    wait_for(lambda: refused(proxy.port), timeout=5)
    # ...and the request in flight is answered in full, marked as the last one.
    response = busy.read_response()
    assert response.status == 200
    assert response.body == b"slept\n"
    assert response.header("Connection") == "close"
    assert proxy.process.proc.wait(10) == 0


def test_drain_timeout_cuts_what_is_left(start_proxy: StartProxy, backends: list[Backend]) -> None:
    proxy = start_proxy([backends[0].url], "[timeouts]\ndrain = 0.3\n")
    busy = proxy.client()
    busy.send(b"GET /hang HTTP/1.1\r\nHost: t\r\n\r\n")
    wait_for(lambda: any("GET /hang" in r for r in backend_log(backends[0])))
    proxy.process.signal(signal.SIGINT)
    assert proxy.process.proc.wait(10) == 3  # stopped, but not everything drained
    assert busy.is_closed(timeout=5)
    assert any("drain timeout" in line for line in proxy.process.lines)


def test_thousand_idle_keepalive_connections_rss(proxy: Proxy) -> None:
    clients = []
    try:
        for _ in range(1000):
            client = proxy.client()
            client.send(b"GET /size/10 HTTP/1.1\r\nHost: t\r\n\r\n")
            clients.append(client)
        for client in clients:
            assert client.read_response().status == 200
        rss_mib = proxy.process.rss_kib() / 1024
        print(f"RSS with 1000 idle keep-alive client connections: {rss_mib:.1f} MiB")
        assert rss_mib <= 60
    finally:
        for client in clients:
            client.close()


def backend_log(backend: Backend) -> list[str]:
    import json

    with RawClient(backend.port) as client:
        return json.loads(client.request("GET", "/log").body)["requests"]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        # Queued as the listening socket closed (with --workers, the last process holding
        # it lets go a moment later): not accepted, and the next try is refused.
        return False
    return False


pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
