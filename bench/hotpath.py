"""The cost of one proxied request, without sockets: the data plane's own overhead.

Drives a real `DownstreamProtocol` and `UpstreamProtocol` with fake transports: feed a
request, feed the backend's response, check the client got it, repeat. What is left is
the parsing, routing, header work, pool bookkeeping and timers that run per request,
which is the part of the cost this project controls (the rest is syscalls and the loop).

    python -m bench.hotpath [--requests 200000] [--runs 5]
    python -m bench.hotpath --instructions      # needs valgrind

Measures the data plane as `bunancer.core` loads it: compiled when `bunancer compile`
built it from this source (the output says when it is not), the Python source with
BUNANCER_PURE_PYTHON=1. Prints the median microseconds per request. Shared machines make
even this vary by 30%, so `--instructions` counts CPU instructions per request under
callgrind instead (two runs of different lengths, subtracted, so start-up cost cancels):
the same number every time for the same code, which is what a before/after comparison of
an optimisation needs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import uvloop

from bunancer.core import NATIVE
from bunancer.core.accesslog import AccessLog
from bunancer.core.connections import ConnectionPool
from bunancer.core.downstream import DownstreamProtocol
from bunancer.core.listener import ListenerContext
from bunancer.core.pool import ServerPool
from bunancer.core.routing import RouteTable
from bunancer.core.server import Server
from bunancer.core.settings import BalancingSettings, ListenerSettings, UpstreamSettings
from bunancer.core.upstream import UpstreamProtocol

# Feature switches for cost measurements: HOTPATH_STATS=0, HOTPATH_ACCESS_LOG=1,
# HOTPATH_DECISION_SAMPLE=N (1 in N selections recorded; 0: none).
STATS = os.environ.get("HOTPATH_STATS", "1") == "1"
ACCESS_LOG = os.environ.get("HOTPATH_ACCESS_LOG", "0") == "1"
REQUEST = (
    b"GET /api/items?id=42 HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: wrk\r\n"
    b"Accept: */*\r\n\r\n"
)
CLOSE_REQUEST = REQUEST[:-2] + b"Connection: close\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n"
    b"Date: Sat, 28 Nov 2026 10:00:00 GMT\r\nServer: stub\r\n\r\n" + b"x" * 100
)


class FakeTransport:
    """Records writes; the few transport methods the protocols call."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.writes = 0
        self.last = b""
        self.peer = peer

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.last = data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def build(
    loop: asyncio.AbstractEventLoop,
) -> tuple[DownstreamProtocol, FakeTransport, UpstreamProtocol, FakeTransport]:
    algorithm = os.environ.get("HOTPATH_ALGORITHM", "peak-ewma")
    # 1 in N selections recorded (why this server); the product's default unless set.
    sample = int(os.environ.get("HOTPATH_DECISION_SAMPLE", BalancingSettings().decision_sample))
    pool = ServerPool("default", BalancingSettings(algorithm=algorithm, decision_sample=sample))
    server = Server("s1", "127.0.0.1", 9001)
    connections = ConnectionPool(server.host, server.port, UpstreamSettings(), loop)
    server.connections = connections
    pool.add(server)
    ctx = ListenerContext(loop, RouteTable([], pool), ListenerSettings(stats=STATS))
    if ACCESS_LOG:
        ctx.access_log = AccessLog(loop, os.devnull)
    down = DownstreamProtocol(ctx)
    down_transport = FakeTransport(("127.0.0.1", 50000))
    down.connection_made(down_transport)  # type: ignore[arg-type]
    up = UpstreamProtocol(connections)
    up_transport = FakeTransport(("127.0.0.1", 9001))
    up.connection_made(up_transport)  # type: ignore[arg-type]
    connections.total = 1
    connections.idle.append(up)
    return down, down_transport, up, up_transport


def measure(requests: int, close: bool = False) -> float:
    """Per request: one keep-alive request, or (close) a whole client connection."""
    loop = uvloop.new_event_loop()
    try:
        down, down_transport, up, up_transport = build(loop)
        start = time.perf_counter()
        if close:
            for _ in range(requests):
                conn = DownstreamProtocol(down.ctx)
                conn.connection_made(down_transport)  # type: ignore[arg-type]
                conn.data_received(CLOSE_REQUEST)
                up.data_received(RESPONSE)
                conn.connection_lost(None)
        else:
            for _ in range(requests):
                down.data_received(REQUEST)
                up.data_received(RESPONSE)
        elapsed = time.perf_counter() - start
        assert down_transport.writes == requests, "a response went missing"
        assert down_transport.last.endswith(b"x" * 100)
        assert up_transport.writes == requests
        return elapsed / requests * 1e6
    finally:
        loop.close()


def count_instructions(requests: int, close: bool) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={tmp}/out",
                sys.executable,
                "-m",
                "bench.hotpath",
                "--requests",
                str(requests),
                "--runs",
                "1",
                *(["--close"] if close else []),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    match = re.search(r"Collected : (\d+)", result.stderr)
    assert match, result.stderr[-2000:]
    return int(match.group(1))


def instructions_per_request(close: bool) -> float:
    small, large = 2000, 7000
    return (count_instructions(large, close) - count_instructions(small, close)) / (large - small)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--show-head", action="store_true", help="print one upstream request head")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions/request (valgrind)"
    )
    parser.add_argument(
        "--close", action="store_true", help="a new client connection for every request"
    )
    args = parser.parse_args()
    mode = "connection per request" if args.close else "keep-alive"
    if NATIVE != "compiled":
        mode += f"; {NATIVE}"  # the Python source ran, and why
    if args.instructions:
        count = instructions_per_request(args.close)
        print(f"hot path ({mode}): {count:,.0f} instructions/request")
        return
    if args.show_head:
        loop = asyncio.new_event_loop()
        down, _, _, up_transport = build(loop)
        down.data_received(REQUEST)
        print(up_transport.last.decode())
        loop.close()
    results = [measure(args.requests, args.close) for _ in range(args.runs)]
    print(
        f"hot path ({mode}): median {statistics.median(results):.2f} us/request "
        f"(runs: {', '.join(f'{r:.2f}' for r in results)})"
    )


if __name__ == "__main__":
    main()
