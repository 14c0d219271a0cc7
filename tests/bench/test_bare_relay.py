"""The reference relay bench.throughput measures as the floor (bench/bare_relay.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import Process, RawClient, spawn

STUB = ("--size", "10", "--id")


@pytest.fixture
def relay() -> Iterator[int]:
    started: list[Process] = []
    try:
        ports = []
        for stub_id in ("a", "b"):
            stub = spawn(
                ["-m", "stubs.server", "--host", "127.0.0.1", "--port", "0", *STUB, stub_id]
            )
            started.append(stub)
            ports.append(int(stub.wait_line(r"^PORT (\d+)$").group(1)))
        argv = ["-m", "bench.bare_relay", "--port", "0"]
        for port in ports:
            argv += ["--backend", f"127.0.0.1:{port}"]
        relay = spawn(argv)
        started.append(relay)
        yield int(relay.wait_line(r"^PORT (\d+)$").group(1))
    finally:
        for process in started:
            process.stop()


def test_relays_round_robin_and_closes_when_asked(relay: int) -> None:
    with RawClient(relay) as client:
        answers = [client.request("GET", "/") for _ in range(4)]
    assert [a.status for a in answers] == [200] * 4
    assert [a.header("X-Stub-Id") for a in answers] in (["a", "b"] * 2, ["b", "a"] * 2)
    for _ in range(4):  # the upstream connections stay usable after close-mode requests
        with RawClient(relay) as client:
            answer = client.request("GET", "/", headers={"Connection": "close"})
            assert answer.status == 200
            assert answer.header("Connection") == "close"
            assert client.is_closed()
