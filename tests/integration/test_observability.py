"""Counters through real sockets, /api/stats, /metrics, access logs and StatsD."""

from __future__ import annotations

import http.client
import json
import re
import socket
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bunancer.client import ApiClient
from tests.conftest import Backend, Proxy, StartProxy
from tests.helpers import RawClient, free_port, wait_for


def stats(proxy: Proxy) -> dict[str, Any]:
    return ApiClient(f"127.0.0.1:{proxy.api_port}").request("GET", "/api/stats")  # type: ignore[no-any-return]


def metrics(proxy: Proxy) -> dict[str, list[Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", proxy.api_port)
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
    text = response.read().decode()
    families: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.samples
    return families


def test_counters_match_requests_of_each_class(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    dead = free_port()
    proxy = start_proxy(
        [backends[0].url, f"127.0.0.1:{dead}"],
        "[timeouts]\nupstream_response = 0.3\n[pools.default.health]\nenabled = false\n"
        "[pools.default.outlier]\nenabled = false\n"
        # only connect failures are retried here, so each answer is counted once
        "[pools.default.balancing]\nretry_on = []\nretry_timeouts = false\n",
    )
    live_id, dead_id = f"127.0.0.1:{backends[0].port}", f"127.0.0.1:{dead}"
    with proxy.client() as client:
        for path, status in (
            ("/", 200),
            ("/status/404", 404),
            ("/status/503", 503),
            ("/hang", 504),
        ):
            # round-robin: the dead server's turn is retried on the live one
            assert client.request("GET", path).status == status
            assert client.request("GET", path).status == status
    # a client that goes away before its answer
    abort = socket.create_connection(("127.0.0.1", proxy.port))
    abort.sendall(b"GET /sleep/300 HTTP/1.1\r\nHost: t\r\n\r\n")
    abort.close()
    # a request the listener rejects before any pool
    with proxy.client() as client:
        client.send(b"GET / HTTP/1.1\r\n\r\n")  # no Host
        assert client.read_response().status == 400

    def aborts(snapshot: dict[str, Any]) -> int:
        servers = snapshot["pools"]["default"]["servers"].values()
        return sum(server["errors"]["client_abort"] for server in servers)

    def settled() -> dict[str, Any] | None:
        # (With --workers each worker reports once a second: wait for every count to be in.)
        snapshot = stats(proxy)
        counted = snapshot["pools"]["default"]["requests"] == 9
        done = aborts(snapshot) == 1 and counted and snapshot["listener_rejected"] == 1
        return snapshot if done else None

    snapshot = wait_for(settled, timeout=5)
    pool = snapshot["pools"]["default"]
    live = pool["servers"][live_id]
    aborted_here = live["errors"]["client_abort"]  # the abort met whichever server was next
    assert live["codes"] == {"2xx": 2, "4xx": 2, "5xx": 4, **({"none": 1} if aborted_here else {})}
    assert live["errors"]["upstream_5xx"] == 2
    assert live["errors"]["client_4xx"] == 2
    assert live["errors"]["timeout"] == 2
    assert live["requests"] == 8 + aborted_here
    # Every other attempt went to the dead server first and was retried on the live one:
    # each counts once against the dead server (an attempt nobody answered), never twice.
    dead_stats = pool["servers"][dead_id]
    redispatched = dead_stats["redispatches"]
    assert redispatched >= 4
    assert dead_stats["errors"]["connect"] == redispatched
    assert dead_stats["requests"] == redispatched + (1 - aborted_here)
    assert dead_stats["codes"] == {"none": redispatched + (1 - aborted_here)}
    # The pool shows what its clients saw: 8 answers and the abort, not the attempts.
    assert pool["requests"] == 9
    assert snapshot["listener_rejected"] == 1
    assert live["bytes_out"] > 0

    families = metrics(proxy)
    requests = {
        (s.labels["server"], s.labels["code_class"]): s.value
        for s in families["bunancer_requests"]
        if s.labels["pool"] == "default"
    }
    assert requests[(live_id, "2xx")] == 2
    assert requests[(live_id, "5xx")] == 4
    histogram = [
        s
        for s in families["bunancer_request_duration_seconds"]
        if s.name.endswith("_count") and s.labels["server"] == live_id
    ]
    assert histogram[0].value == 8 + aborted_here
    up = {s.labels["server"]: s.value for s in families["bunancer_server_up"]}
    assert up[live_id] == 1
    assert "process_resident_memory_bytes" in families


def test_rps_falls_to_zero_when_traffic_stops(proxy: Proxy) -> None:
    with proxy.client() as client:
        for _ in range(200):
            client.request("GET", "/")

    def pool_rps() -> float:
        return float(stats(proxy)["pools"]["default"]["rps"])

    wait_for(lambda: pool_rps() > 0, timeout=3)
    wait_for(lambda: pool_rps() == 0, timeout=3)
    snapshot = stats(proxy)["pools"]["default"]
    assert snapshot["requests"] >= 200
    assert max(snapshot["history"]) > 0


def test_access_log_combined_and_json(
    start_proxy: StartProxy, backends: list[Backend], tmp_path: Path
) -> None:
    for fmt in ("combined", "json"):
        path = tmp_path / f"access-{fmt}.log"
        proxy = start_proxy([backends[0].url], f'[access_log]\npath = "{path}"\nformat = "{fmt}"\n')
        with proxy.client() as client:
            client.request("GET", "/size/10?x=1", headers={"User-Agent": "probe/1"})
        wait_for(lambda p=path: p.exists() and p.read_text().strip(), timeout=3)
        line = path.read_text().strip().splitlines()[-1]
        if fmt == "json":
            entry = json.loads(line)
            assert entry["target"] == "/size/10?x=1"
            assert entry["status"] == 200
            assert entry["user_agent"] == "probe/1"
            assert entry["upstream"] == f"127.0.0.1:{backends[0].port}"
            assert entry["time_total"] >= entry["upstream_time"] > 0
        else:
            assert '"GET /size/10?x=1 HTTP/1.1" 200' in line
            assert '"probe/1"' in line
            assert f"upstream=127.0.0.1:{backends[0].port}" in line
        proxy.process.stop()


def test_statsd_lines_arrive(start_proxy: StartProxy, backends: list[Backend]) -> None:
    """Once a second, per server: `<prefix>.<pool>.<server>.requests:<n>|c` with the requests
    of the second just closed (so the counts add up to what was sent, none counted twice),
    its `p99_ms` gauge in that second, and `up:1|g`."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    port = receiver.getsockname()[1]
    proxy = start_proxy(
        [backends[0].url], f'[stats]\nstatsd = "127.0.0.1:{port}"\nstatsd_prefix = "lb7"\n'
    )
    server = f"127_0_0_1_{backends[0].port}"  # the server id 127.0.0.1:PORT, dots made safe
    name = f"lb7.default.{server}"
    sent = 5
    with proxy.client() as client:
        for _ in range(sent):
            assert client.request("GET", "/").status == 200
    datagrams: list[list[str]] = []
    counted: list[int] = []  # the request count of each tick that reported any

    def receive() -> None:
        lines = receiver.recv(65536).decode().splitlines()
        datagrams.append(lines)
        for line in lines:
            match = re.fullmatch(rf"{re.escape(name)}\.requests:(\d+)\|c", line)
            if match:
                counted.append(int(match.group(1)))

    # Every tick sends the server's `up` gauge: after the count reached what was sent, two
    # more ticks must not count any of those requests again.
    wait_for(lambda: receive() or sum(counted) >= sent, timeout=5)
    ticks_then = len(datagrams)
    wait_for(lambda: receive() or len(datagrams) >= ticks_then + 2, timeout=5)
    receiver.close()
    assert sum(counted) == sent, (counted, datagrams)
    assert all(n > 0 for n in counted)
    for lines in datagrams:
        assert f"{name}.up:1|g" in lines, lines
        assert all(line.startswith(f"{name}.") for line in lines), lines
        # A p99 gauge in exactly the ticks that counted requests.
        p99 = [line for line in lines if line.startswith(f"{name}.p99_ms:")]
        has_requests = any(line.startswith(f"{name}.requests:") for line in lines)
        assert len(p99) == int(has_requests), lines
        for line in p99:
            assert re.fullmatch(rf"{re.escape(name)}\.p99_ms:\d+\.\d{{3}}\|g", line), line
            assert float(line.split(":")[1].removesuffix("|g")) > 0, line
    assert not any(f"{name}.errors:" in line for lines in datagrams for line in lines)


def test_stats_off_records_nothing(start_proxy: StartProxy, backends: list[Backend]) -> None:
    proxy = start_proxy([backends[0].url], "[stats]\nenabled = false\n")
    with RawClient(proxy.port) as client:
        client.request("GET", "/")
    assert stats(proxy)["pools"]["default"]["requests"] == 0


def test_status_and_top_commands(proxy: Proxy, backends: list[Backend]) -> None:
    from click.testing import CliRunner

    from bunancer.cli import cli

    with proxy.client() as client:
        for _ in range(20):
            client.request("GET", "/")
    runner = CliRunner()
    api = f"127.0.0.1:{proxy.api_port}"
    status = runner.invoke(cli, ["status", "--api", api], env={"COLUMNS": "200"})
    assert status.exit_code == 0, status.output
    assert f"127.0.0.1:{backends[0].port}" in status.output
    assert "healthy" in status.output
    assert "routable" in status.output
    top = runner.invoke(
        cli, ["top", "--api", api, "--frames", "2", "--interval", "0.2"], env={"COLUMNS": "200"}
    )
    assert top.exit_code == 0, top.output
    assert "bunancer top" in top.output
    down = runner.invoke(cli, ["status", "--api", f"127.0.0.1:{free_port()}"])
    assert down.exit_code == 1
    assert "no balancer answers" in down.output
