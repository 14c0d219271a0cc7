"""The stub server from a real client socket: each failure mode, health, live changes."""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stubs.behaviour import Behaviour
from stubs.control import ControlError, call
from stubs.log import StubLog
from stubs.state import StubPaths, read_record
from tests.helpers import Process, RawClient, free_port, spawn, wait_for

GET = b"GET %s HTTP/1.1\r\nHost: stub\r\n\r\n"


@dataclass
class RunningStub:
    process: Process
    port: int
    state_dir: Path

    @property
    def paths(self) -> StubPaths:
        return StubPaths.of(self.state_dir, "t1")

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        return call(self.paths.sock, request)

    def set(self, **changes: Any) -> dict[str, Any]:
        return self.control({"op": "set", "behaviour": changes})["behaviour"]  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        return self.control({"op": "stats"})["stats"]  # type: ignore[no-any-return]

    def client(self, timeout: float = 5.0) -> RawClient:
        return RawClient(self.port, timeout=timeout)


def start_stub(state_dir: Path, *args: str) -> tuple[Process, int]:
    process = spawn(
        ["-m", "stubs.server", "--port", "0", "--id", "t1", "--state-dir", str(state_dir), *args]
    )
    return process, int(process.wait_line(r"^PORT (\d+)$").group(1))


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStub]:
    state_dir = tmp_path_factory.mktemp("stub-state")
    process, port = start_stub(state_dir, "--seed", "1")
    yield RunningStub(process, port, state_dir)
    process.stop()


@pytest.fixture
def stub(running: RunningStub) -> RunningStub:
    """The module's stub, back to the default behaviour (changed live, as the SDK does)."""
    running.set(**Behaviour().to_dict())
    return running


def test_plain_response_names_the_stub_and_keeps_the_connection(stub: RunningStub) -> None:
    with stub.client() as client:
        for path in ("/", "/any/path?q=1"):
            response = client.request("GET", path)
            assert response.status == 200
            assert response.body == b"t1\n"
            assert response.header("X-Stub-Id") == "t1"
            assert response.header("Connection") is None
        # Pipelined requests on the fast path are answered in order.
        client.send(GET % b"/a" + GET % b"/health" + GET % b"/b")
        bodies = [client.read_response().body for _ in range(3)]
        assert bodies == [b"t1\n", b"ok\n", b"t1\n"]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: stub\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
    ],
)
def test_a_connection_it_closes_is_announced_first(stub: RunningStub, request_bytes: bytes) -> None:
    for behaviour in ({}, {"latency": "1ms"}):  # the fast path and the general one
        stub.set(**behaviour)
        with stub.client() as client:
            client.send(request_bytes)
            response = client.read_response()
            assert response.status == 200
            assert response.header("Connection") == "close"
            assert client.is_closed()


def test_http10_keep_alive_is_confirmed(stub: RunningStub) -> None:
    with stub.client() as client:
        for _ in range(2):
            client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            response = client.read_response()
            assert response.header("Connection") == "keep-alive"
            assert response.body == b"t1\n"


def test_size_and_head(stub: RunningStub) -> None:
    stub.set(size=1000)
    with stub.client() as client:
        body = client.request("GET", "/").body
        assert len(body) == 1000
        assert body.startswith(b"t1\nxxx")
        head = client.request("HEAD", "/")
        assert head.header("Content-Length") == "1000"
        assert head.body == b""
        assert client.request("GET", "/").body == body  # the HEAD left no stray bytes


def test_status_changes_live_and_health_follows_it_unless_pinned(stub: RunningStub) -> None:
    with stub.client() as client:
        assert stub.set(status=503)["status"] == 503
        assert client.request("GET", "/").status == 503
        health = client.request("GET", "/health")
        assert (health.status, health.body) == (503, b"fail\n")  # default "auto": follows
        assert stub.set(health="ok")["health"] == "ok"  # pinned over the control socket
        assert client.request("GET", "/").status == 503
        health = client.request("GET", "/health")
        assert (health.status, health.body) == (200, b"ok\n")  # checks pass, traffic fails
        assert stub.set(health="auto")["health"] == "auto"
        assert client.request("GET", "/health").status == 503
        stub.set(status=200, health="fail")
        assert client.request("GET", "/").status == 200
        health = client.request("GET", "/health")
        assert (health.status, health.body) == (503, b"fail\n")
        assert health.header("X-Stub-Id") == "t1"
        stub.set(status=204)
        empty = client.request("GET", "/")
        assert (empty.status, empty.body, empty.header("Content-Length")) == (204, b"", None)


@pytest.mark.parametrize(
    ("flags", "health_status"),
    [(["--status", "503"], 503), (["--status", "503", "--health", "ok"], 200)],
)
def test_a_stub_started_with_status_503_fails_its_health_unless_pinned(
    tmp_path: Path, flags: list[str], health_status: int
) -> None:
    process, port = start_stub(tmp_path, *flags)
    try:
        with RawClient(port) as client:
            assert client.request("GET", "/").status == 503
            assert client.request("GET", "/health").status == health_status
    finally:
        process.stop()


def test_failure_5xx(stub: RunningStub) -> None:
    stub.set(fail_rate=1, mode="5xx")
    before = stub.stats()["failures"].get("5xx", 0)
    with stub.client() as client:
        response = client.request("GET", "/")
        assert response.status == 503
        assert response.body == b"t1\n"
    assert stub.stats()["failures"]["5xx"] == before + 1


def test_failure_reset(stub: RunningStub) -> None:
    stub.set(fail_rate=1, mode="reset")
    with socket.create_connection(("127.0.0.1", stub.port), timeout=5) as sock:
        sock.sendall(GET % b"/")
        with pytest.raises(ConnectionResetError):
            sock.recv(1024)


def test_failure_hang(stub: RunningStub) -> None:
    stub.set(fail_rate=1, mode="hang")
    with stub.client() as client:
        client.send(GET % b"/")
        assert not client.is_closed(timeout=0.5)  # no answer, and the connection stays open
        assert client.buffer == b""
    assert stub.stats()["failures"]["hang"] >= 1
    stub.set(fail_rate=0)
    with stub.client() as client:  # the stub itself is not stuck
        assert client.request("GET", "/").status == 200


def test_failure_slow_body_arrives_slowly_but_completely(stub: RunningStub) -> None:
    stub.set(fail_rate=1, mode="slow")
    with socket.create_connection(("127.0.0.1", stub.port), timeout=5) as sock:
        sock.sendall(GET % b"/")
        received = sock.recv(65536)
        head_at = time.monotonic()
        assert received.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Content-Length: 3\r\n" in received
        # The head comes at once, alone: no body byte came with it...
        assert received.endswith(b"\r\n\r\n"), received
        chunks = 0
        while not received.endswith(b"\r\n\r\nt1\n"):
            received += sock.recv(65536)
            chunks += 1
        body_took = time.monotonic() - head_at
    # ...then the 3-byte body, one byte per 0.2 s after it.
    assert chunks >= 2  # in pieces (3, unless two bytes met in one read)
    assert body_took >= 0.4


def test_failure_close_mid_body(stub: RunningStub) -> None:
    stub.set(fail_rate=1, mode="close", size=1000)
    with stub.client() as client, pytest.raises(ConnectionError, match="after 500 of 1000 body"):
        client.request("GET", "/")


def test_latency_delays_and_keeps_pipelined_order(stub: RunningStub) -> None:
    stub.set(latency="100ms")
    with stub.client() as client:
        started = time.monotonic()
        assert client.request("GET", "/").status == 200
        assert time.monotonic() - started >= 0.095  # loop timers tick in whole ms
        stub.set(latency="10-30ms")
        # /health is answered at once, "/" late: order must still be the request order.
        client.send(GET % b"/" + GET % b"/health" + GET % b"/" + GET % b"/health")
        bodies = [client.read_response().body for _ in range(4)]
        assert bodies == [b"t1\n", b"ok\n", b"t1\n", b"ok\n"]


def test_fail_rate_mix_is_counted(stub: RunningStub) -> None:
    stub.set(fail_rate=0.5)
    before = stub.stats()
    with stub.client() as client:
        statuses = [client.request("GET", "/").status for _ in range(200)]
    after = stub.stats()
    failed = statuses.count(503)
    assert 60 <= failed <= 140
    assert statuses.count(200) == 200 - failed
    assert after["requests"] - before["requests"] == 200
    assert after["statuses"]["503"] - before["statuses"].get("503", 0) == failed


def test_bad_request_gets_400_and_close(stub: RunningStub) -> None:
    with stub.client() as client:
        client.send(b"NOT HTTP\r\n\r\n")
        response = client.read_response()
        assert response.status == 400
        assert response.header("X-Stub-Id") == "t1"
        assert response.header("Connection") == "close"
        assert client.is_closed()


def test_control_socket_is_owner_only_and_validates(stub: RunningStub) -> None:
    assert stat.S_IMODE(os.stat(stub.paths.sock).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(stub.paths.sock.parent).st_mode) == 0o700
    with pytest.raises(ControlError, match="status: expected 200-599"):
        stub.set(status=700)
    with pytest.raises(ControlError, match="unknown op"):
        stub.control({"op": "explode"})
    info = stub.control({"op": "get"})
    assert info["behaviour"] == Behaviour().to_dict()  # unchanged by the refused set
    assert (info["id"], info["port"], info["registration"]["state"]) == ("t1", stub.port, "off")
    record = read_record(stub.paths.record)
    assert record is not None
    assert (record.pid, record.port) == (stub.process.pid, stub.port)


def test_access_log_has_a_line_per_request(stub: RunningStub) -> None:
    stub.set(latency="20ms")
    with stub.client() as client:
        client.request("GET", "/logged-fast?x=1")
        stub.set(latency="0", status=404)
        client.request("POST", "/logged-plain", body=b"abc")

    def logged() -> list[str] | None:
        lines = [line for line in stub.paths.log.read_text().splitlines() if "/logged-" in line]
        return lines if len(lines) >= 2 else None

    lines = wait_for(logged, timeout=5)  # written in batches, every 0.25 s
    first, second = lines[-2:]
    assert first.split()[1:4] == ["GET", "/logged-fast?x=1", "200"]
    assert float(first.split()[4].removesuffix("ms")) >= 20
    assert second.split()[1:4] == ["POST", "/logged-plain", "404"]
    assert any("[stub] behaviour: 404" in line for line in stub.paths.log.read_text().splitlines())


def test_access_log_is_rotated_at_its_cap(tmp_path: Path) -> None:
    log = StubLog(tmp_path / "s1.log", cap=1000)
    for round_ in range(5):
        for _ in range(10):
            log.add(b"GET", b"/round-%d" % round_, 200, 0.001)
        log.flush()
    log.close()
    current = (tmp_path / "s1.log").read_text()
    rotated = (tmp_path / "s1.log.1").read_text()
    assert len(current) <= 1000
    assert len(rotated) <= 1000
    assert "/round-4" in current
    assert "/round-3" in rotated  # one old copy, no more
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s1.log", "s1.log.1"]


def test_sigterm_exits_0_and_removes_its_files(tmp_path: Path) -> None:
    process, port = start_stub(tmp_path)
    paths = StubPaths.of(tmp_path, "t1")
    assert paths.record.exists()
    with RawClient(port) as client:
        assert client.request("GET", "/").status == 200
        assert process.stop() == 0
        assert client.is_closed()  # idle keep-alive connections are closed
    assert not paths.record.exists()
    assert not paths.sock.exists()
    assert paths.log.read_text().splitlines()[-1].endswith("[stub] stopped")


def test_port_in_use_is_one_clear_line_and_exit_2(stub: RunningStub, tmp_path: Path) -> None:
    process = spawn(["-m", "stubs.server", "--port", str(stub.port), "--id", "t2"])
    assert process.proc.wait(10) == 2
    process.stop()
    assert process.lines == [f"stub t2: port {stub.port} is in use"]


def test_bad_flags_exit_2() -> None:
    process = spawn(["-m", "stubs.server", "--port", str(free_port()), "--latency", "soon"])
    assert process.proc.wait(10) == 2
    process.stop()
    assert "latency: expected a duration like 50ms" in "\n".join(process.lines)
