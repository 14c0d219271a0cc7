"""The floor for a Python proxy: a bare uvloop + httptools relay, for bench.throughput.

Not a load balancer: it forwards each request's bytes as they came (no header rewriting,
no limits, no timeouts, no statistics, no health), round-robin over the backends given,
with a keep-alive connection stack per backend; httptools finds where messages end.
What it costs per request is what any Python proxy on this event loop pays before doing
anything; bunancer's cost above it is its features.

    python -m bench.bare_relay --port 0 --backend 127.0.0.1:9001 --backend 127.0.0.1:9002

Prints ``PORT <n>`` once listening. It listens the way bunancer does (bunancer.core.listen)
on uvloop imported the way bunancer imports it (bunancer.eventloop), so the two differ only
in what they do per connection and per request. A request that
says ``Connection: close`` is handled the way a proxy must: that line is not passed on
(the upstream connection stays kept alive) and the answer says ``Connection: close``
before the client connection is closed. Requests are assumed to arrive whole, one per
read (wrk's do).
"""

from __future__ import annotations

import argparse
import asyncio
from collections import deque

import httptools

from bunancer.core.listen import listen
from bunancer.eventloop import uvloop

CLOSE_REQUEST_LINE = b"\r\nConnection: close"
CLOSE_RESPONSE_LINE = b"\r\nConnection: close\r\n"


class Relay:
    def __init__(self, loop: asyncio.AbstractEventLoop, backends: list[tuple[str, int]]) -> None:
        self.loop = loop
        self.backends = backends
        self.idle: list[list[Upstream]] = [[] for _ in backends]
        self.next = 0

    def send(self, client: Client, request: bytes) -> None:
        index = self.next
        self.next = (index + 1) % len(self.backends)
        idle = self.idle[index]
        if idle:
            idle.pop().serve(client, request)
        else:
            self.loop.create_task(self._open(index, client, request))

    async def _open(self, index: int, client: Client, request: bytes) -> None:
        host, port = self.backends[index]
        _, upstream = await self.loop.create_connection(lambda: Upstream(self, index), host, port)
        upstream.serve(client, request)


class Upstream(asyncio.Protocol):
    def __init__(self, relay: Relay, index: int) -> None:
        self.relay = relay
        self.index = index
        self.client: Client | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.first = True
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def serve(self, client: Client, request: bytes) -> None:
        self.client = client
        self.first = True
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            return
        if self.first and not client.keep_alive:
            client.write(data.replace(b"\r\n", CLOSE_RESPONSE_LINE, 1))  # for the client only
        else:
            client.write(data)
        self.first = False
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        idle = self.relay.idle[self.index]
        if self in idle:
            idle.remove(self)
        client, self.client = self.client, None
        if client is not None and client.transport is not None:
            client.transport.close()  # no retry here: the client sees the connection end

    def on_message_complete(self) -> None:
        client = self.client
        self.client = None
        self.relay.idle[self.index].append(self)
        if client is not None:
            client.answered()


class Client(asyncio.Protocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.chunk = b""
        self.waiting: deque[bytes] = deque()  # pipelined requests
        self.busy = False
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.chunk = data
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        # A request that came whole and alone in one read: all this reference needs (wrk).
        request = self.chunk
        self.chunk = b""
        self.keep_alive = self.parser.should_keep_alive()
        if not self.keep_alive:
            request = request.replace(CLOSE_REQUEST_LINE, b"", 1)
        if self.busy:
            self.waiting.append(request)
        else:
            self.busy = True
            self.relay.send(self, request)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():  # the client may have left (end of a wrk run)
            self.transport.write(data)

    def answered(self) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        if not self.keep_alive:
            self.transport.close()
        elif self.waiting:
            self.relay.send(self, self.waiting.popleft())
        else:
            self.busy = False


async def serve(port: int, backends: list[tuple[str, int]]) -> None:
    loop = asyncio.get_running_loop()
    relay = Relay(loop, backends)
    group = await listen(loop, lambda: Client(relay), "127.0.0.1", port, backlog=4096)
    print(f"PORT {group.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()  # until killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backend", action="append", required=True, help="HOST:PORT")
    args = parser.parse_args()
    backends = [(b.rpartition(":")[0], int(b.rpartition(":")[2])) for b in args.backend]
    uvloop.run(serve(args.port, backends))


if __name__ == "__main__":
    main()
