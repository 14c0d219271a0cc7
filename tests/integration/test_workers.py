"""`bunancer serve --workers 2` through real processes: the workers serve what the control
process's registry says, report their figures to it, run no health checks of their own, are
replaced when they die, and stop with the control process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bunancer import native
from tests.conftest import Backend, Proxy, StartProxy
from tests.helpers import RawClient, RedisServer, wait_for

pytestmark = pytest.mark.slow

FAST_CHECKS = """
[pools.default.health]
path = "/checked-by-bunancer"
interval = 0.2
fast_interval = 0.2
"""


def workers_of(proxy: Proxy) -> list[int]:
    """The PIDs of the control process's children (its workers)."""
    pid = proxy.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return sorted(int(child) for child in children)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def api(proxy: Proxy, method: str, path: str, body: object = None) -> tuple[int, object]:
    data = b"" if body is None else json.dumps(body).encode()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {proxy.token}\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    with RawClient(proxy.api_port) as client:
        client.send(head.encode() + data)
        response = client.read_response()
    return response.status, json.loads(response.body) if response.body else None


def answer(proxy: Proxy, path: str = "/") -> tuple[int, bytes]:
    """One request on a connection of its own (so the kernel picks a worker each time)."""
    with proxy.client() as client:
        response = client.request("GET", path)
    return response.status, response.body


def backend_lines(backend: Backend) -> list[str]:
    with RawClient(backend.port) as client:
        return list(json.loads(client.request("GET", "/log").body)["requests"])


def test_workers_serve_what_the_registry_says_and_report_figures(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    proxy = start_proxy([], args=("--workers", "2"))
    assert len(workers_of(proxy)) == 2
    assert answer(proxy)[0] == 503  # an empty pool
    for backend in backends:
        status, _ = api(
            proxy, "POST", "/api/pools/default/servers", {"host": "127.0.0.1", "port": backend.port}
        )
        assert status == 201
    ports = {str(b.port) for b in backends}
    # Both workers route to both servers once checked (each answer names its port).
    wait_for(lambda: {answer(proxy)[1].split()[-1].decode() for _ in range(20)} == ports)
    _, before = api(proxy, "GET", "/api/stats")
    assert isinstance(before, dict)
    done = before["pools"]["default"]["requests"]
    for _ in range(50):
        assert answer(proxy)[0] == 200
    # The control process counts every worker's requests (reports come once a second).
    wait_for(
        lambda: api(proxy, "GET", "/api/stats")[1]["pools"]["default"]["requests"] >= done + 50
    )  # type: ignore[index]


def test_health_checks_run_once_not_once_per_worker(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    one = backends[0]
    proxy = start_proxy([f"127.0.0.1:{one.port}"], extra=FAST_CHECKS, args=("--workers", "2"))
    assert len(workers_of(proxy)) == 2

    def checks() -> int:
        return sum("/checked-by-bunancer" in line for line in backend_lines(one))

    first, started = checks(), time.monotonic()
    wait_for(lambda: checks() >= first + 10, timeout=10)
    seconds = time.monotonic() - started
    # One checker: about 5 a second (interval 0.2 s); two would make it 10.
    assert (checks() - first) / seconds < 7.5


def test_a_killed_worker_is_replaced_while_the_other_serves(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    proxy = start_proxy([f"127.0.0.1:{backends[0].port}"], args=("--workers", "2"))
    before = workers_of(proxy)
    os.kill(before[0], signal.SIGKILL)
    killed_at = time.monotonic()
    for _ in range(20):  # the other worker takes every new connection meanwhile
        assert answer(proxy)[0] == 200
    proxy.process.wait_line(r"worker 0 serving again \(pid \d+\)")
    assert time.monotonic() - killed_at < 5.0  # (the promise is 1 s; CI machines are slow)
    assert len(workers_of(proxy)) == 2
    assert workers_of(proxy) != before
    assert any(
        "worker 0 exited (code -9): starting another" in line for line in proxy.process.lines
    )


def test_passive_failures_on_worker_traffic_eject_the_server(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    one, two = backends
    proxy = start_proxy(
        [f"127.0.0.1:{one.port}", f"127.0.0.1:{two.port}"],
        extra="[pools.default.balancing]\nretries = 0\n",
        args=("--workers", "2"),
    )
    wait_for(lambda: all(s["state"] == "healthy" for s in server_views(proxy)))
    for _ in range(40):
        answer(proxy, f"/fail-on/{one.port}/503")
    wait_for(lambda: state_of(proxy, one.port)[0] == "unhealthy")
    assert "consecutive 503" in state_of(proxy, one.port)[1]


def server_views(proxy: Proxy) -> list[dict[str, object]]:
    _, pools = api(proxy, "GET", "/api/pools")
    assert isinstance(pools, list)
    return list(pools[0]["servers"])


def state_of(proxy: Proxy, port: int) -> tuple[str, str]:
    (view,) = [s for s in server_views(proxy) if s["port"] == port]
    return str(view["state"]), str(view["reason"])


def test_sigterm_stops_every_worker(start_proxy: StartProxy, backends: list[Backend]) -> None:
    proxy = start_proxy([f"127.0.0.1:{backends[0].port}"], args=("--workers", "2"))
    workers = workers_of(proxy)
    assert answer(proxy)[0] == 200
    assert proxy.process.stop() == 0
    wait_for(lambda: not any(alive(pid) for pid in workers), timeout=5)


def test_workers_serve_on_when_the_control_process_dies(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    proxy = start_proxy([f"127.0.0.1:{backends[0].port}"], args=("--workers", "2"))
    workers = workers_of(proxy)
    try:
        proxy.process.signal(signal.SIGKILL)
        proxy.process.proc.wait(5)
        for _ in range(10):  # the last snapshot still routes (for 30 s, then they stop)
            assert answer(proxy)[0] == 200
        assert all(alive(pid) for pid in workers)
    finally:
        for pid in workers:  # (stopped here rather than after their 30 s of grace)
            if alive(pid):
                os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not any(alive(pid) for pid in workers), timeout=15)


def remote_ports(pid: int) -> set[int]:
    """The remote ports of `pid`'s TCP connections (its socket inodes, looked up in
    /proc/net/tcp)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


def test_the_control_process_is_the_only_redis_client(
    start_proxy: StartProxy, backends: list[Backend], redis_server: RedisServer
) -> None:
    proxy = start_proxy(
        [f"127.0.0.1:{backends[0].port}"],
        extra=f'store = "{redis_server.url}"\n',
        args=("--workers", "2"),
    )
    assert answer(proxy)[0] == 200
    assert redis_server.port in remote_ports(proxy.process.pid)
    for worker in workers_of(proxy):
        assert redis_server.port not in remote_ports(worker)


def test_a_worker_imports_the_data_plane_only() -> None:
    # Each module a worker skips is memory saved once per worker: the control plane's
    # libraries, argparse, orjson, and hashlib when the parent checked the build already.
    unwanted = {"pydantic", "jinja2", "rich", "redis", "click", "argparse", "orjson"}
    if native.loaded_build is not None:
        unwanted.add("hashlib")
    code = (
        "import sys, bunancer.worker; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(unwanted)!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env=native.child_environment(),
    )
    assert result.stdout.strip() == "[]"


def test_killing_a_worker_under_load_fails_only_its_own_connections(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    import threading

    proxy = start_proxy([f"127.0.0.1:{backends[0].port}"], args=("--workers", "2"))
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def load() -> None:  # one keep-alive connection at a time, a new one after a failure
        deadline = time.monotonic() + 20  # bounded whatever happens
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                with proxy.client(timeout=5) as client:
                    while not stop.is_set():
                        assert client.request("GET", "/sleep/5").status == 200
                        answered[0] += 1
            except (OSError, ConnectionError, AssertionError) as error:
                failures.append(type(error).__name__)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: answered[0] >= 100)
        os.kill(workers_of(proxy)[0], signal.SIGKILL)
        before = answered[0]
        wait_for(lambda: answered[0] >= before + 200)  # the others (and the new one) serve on
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert len(failures) <= 8  # at most each client's one connection to the killed worker


def test_metrics_carry_each_workers_figures(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    proxy = start_proxy([f"127.0.0.1:{backends[0].port}"], args=("--workers", "2"))
    for _ in range(30):
        assert answer(proxy)[0] == 200

    def metrics() -> str:
        with RawClient(proxy.api_port) as client:
            client.send(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            return client.read_response().body.decode()

    server = f"127.0.0.1:{backends[0].port}"
    pattern = re.compile(
        rf'bunancer_worker_requests_total\{{worker="(\d)",pool="default",server="{server}"\}} (\d+)'
    )
    # Reports come once a second: wait until the workers' counts add up to the 30.
    wait_for(lambda: sum(int(n) for _, n in pattern.findall(metrics())) >= 30)
    text = metrics()
    assert 'bunancer_worker_up{worker="0"} 1' in text
    assert 'bunancer_worker_up{worker="1"} 1' in text
    assert 'bunancer_worker_restarts_total{worker="0"} 0' in text
    # The upstream connections are the workers' (kept alive after the 30 requests).
    idle = re.search(
        rf'bunancer_upstream_connections\{{pool="default",server="{server}",state="idle"\}} (\d+)',
        text,
    )
    assert idle is not None
    assert int(idle.group(1)) >= 1
