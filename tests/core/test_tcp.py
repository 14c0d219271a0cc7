"""TCP mode through real sockets on 127.0.0.1: tunnels count in flight for as long as they
are open, so least-connections spreads long-lived connections."""

from __future__ import annotations

import asyncio
from functools import partial

import uvloop

from bunancer.core.pool import ServerPool
from bunancer.core.server import Server
from bunancer.core.settings import BalancingSettings, TcpSettings
from bunancer.core.tcp import TcpClientEnd, TcpListenerContext
from tests.helpers import wait_until


class Named(asyncio.Protocol):
    """A backend that greets every connection with its name and then echoes."""

    def __init__(self, name: bytes) -> None:
        self.name = name

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.name)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def test_least_connections_spreads_long_lived_tcp_connections() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        backends = [
            await loop.create_server(partial(Named, name), "127.0.0.1", 0) for name in (b"A", b"B")
        ]
        pool = ServerPool("tcp", BalancingSettings(algorithm="least-connections"))
        servers = []
        for index, backend in enumerate(backends):
            port = backend.sockets[0].getsockname()[1]
            server = Server(f"s{index}", "127.0.0.1", port)
            pool.add(server)
            servers.append(server)
        ctx = TcpListenerContext(loop, pool, TcpSettings())
        listener = await loop.create_server(partial(TcpClientEnd, ctx), "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        clients = []
        greetings = []
        try:
            for _ in range(6):  # one at a time: each sees the tunnels before it
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                greetings.append(await asyncio.wait_for(reader.readexactly(1), 5))
                clients.append(writer)
            assert sorted(greetings) == [b"A"] * 3 + [b"B"] * 3
            assert [s.in_flight for s in servers] == [3, 3]
            for writer in clients:
                writer.close()
            await wait_until(lambda: [s.in_flight for s in servers] == [0, 0])
            assert [s.max_in_flight for s in servers] == [3, 3]
        finally:
            listener.close()
            for backend in backends:
                backend.close()

    uvloop.run(scenario())
