"""Listening sockets that accept more than one connection per event-loop turn.

libuv, under uvloop, accepts a single connection each time the loop polls a listening
socket (libuv PR #3696: most second accept() calls fail with EAGAIN, so it no longer
loops). A proxy loop whose turns are long, because hundreds of busy connections all had
data, then takes one new client per turn: under load new clients wait seconds in the
kernel's accept queue (measured here: 1,000 keep-alive clients, the last ones connected
waited 6 s for their first answer, until the others stopped).

Polling several descriptors of the same listening socket lets each turn accept up to that
many connections, as asyncio's own loop does (it accepts up to its backlog per turn). The
price is an accept() that finds nothing, on the spare descriptors, in turns with fewer
pending connections than descriptors: one cheap syscall each.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any, Protocol

from ..eventloop import uvloop
from .tls import HANDSHAKE_TIMEOUT

log = logging.getLogger("bunancer")

# Connections accepted per loop turn at most (the descriptors polled per listening socket).
ACCEPTS_PER_TURN = 16


class ListenGroup:
    """The servers sharing one listening socket; closes like one `asyncio.Server`."""

    def __init__(self, servers: list[asyncio.Server]) -> None:
        self.servers = servers

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self.servers[0].sockets)

    def close(self) -> None:
        for server in self.servers:
            server.close()

    async def wait_closed(self) -> None:
        for server in self.servers:
            await server.wait_closed()


async def listen(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.BaseProtocol],
    host: str = "",
    port: int = 0,
    *,
    backlog: int,
    accepts_per_turn: int = ACCEPTS_PER_TURN,
    sock: socket.socket | None = None,
    tls: ssl.SSLContext | None = None,
) -> ListenGroup:
    """Bind host:port (every address it resolves to), or take `sock` (bound already: a
    worker's, inherited from the control process), and serve `factory` on it (over TLS
    with the `tls` context)."""
    options: dict[str, Any] = {"backlog": backlog}
    if tls is not None:
        options.update(ssl=tls, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
    if sock is None:
        first = await loop.create_server(factory, host, port, reuse_address=True, **options)
    else:
        first = await loop.create_server(factory, sock=sock, **options)
    group = ListenGroup([first])
    if not isinstance(loop, uvloop.Loop):
        return group  # asyncio's loop accepts in a loop already
    try:
        for bound in first.sockets:
            for _ in range(accepts_per_turn - 1):
                spare = socket.socket(
                    bound.family, bound.type, bound.proto, fileno=os.dup(bound.fileno())
                )
                group.servers.append(await loop.create_server(factory, sock=spare, **options))
    except BaseException:
        group.close()
        raise
    return group


class Drainable(Protocol):
    """A listener's context as a graceful stop sees it (HTTP and TCP alike)."""

    def drain(self) -> None: ...

    @property
    def busy(self) -> int: ...

    def abort_all(self) -> None: ...


async def drain(loop: asyncio.AbstractEventLoop, contexts: list[Drainable], seconds: float) -> bool:
    """Let the connections and tunnels of `contexts` finish for up to `seconds`, then cut
    the rest; whether everything finished in time."""
    for ctx in contexts:
        ctx.drain()
    deadline = loop.time() + seconds
    while any(ctx.busy for ctx in contexts):
        if loop.time() >= deadline:
            left = sum(ctx.busy for ctx in contexts)
            log.warning("drain timeout: closing %d connection(s) still busy", left)
            for ctx in contexts:
                ctx.abort_all()
            return False
        await asyncio.sleep(0.05)
    return True
