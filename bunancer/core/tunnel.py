"""A byte relay between two connections, used by TCP mode and by HTTP upgrades (WebSocket).

Each side is a `TunnelEnd` Protocol: what it reads is written to the other side. When the
other side's write buffer passes its high-water mark, this side stops reading until it
drains (backpressure). EOF from one side becomes a write shutdown on the other (half-close);
the tunnel ends when both sides are done, when either side resets, or after `idle_timeout`
seconds with no byte either way. Bytes are counted in both directions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .deadline import Deadline

PENDING_LIMIT = 256 * 1024  # bytes held for a side that is not connected yet


class TunnelEnd(asyncio.Protocol):
    """One side of a tunnel."""

    __slots__ = (
        "_pending",
        "_reading_paused",
        "closed",
        "eof",
        "name",
        "peer",
        "received",
        "transport",
        "tunnel",
    )

    def __init__(self, tunnel: Tunnel, name: str) -> None:
        self.tunnel = tunnel
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.peer: TunnelEnd | None = None
        self.received = 0  # bytes read from this side
        self.eof = False
        self.closed = False
        self._pending: list[bytes] = []  # read before the peer could take them
        self._reading_paused = False

    # -- asyncio callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.tunnel.touch()
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.write(data)
            return
        self._pending.append(data)
        if sum(map(len, self._pending)) > PENDING_LIMIT and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if (
            peer is not None
            and peer.transport is not None
            and not peer.closed
            and peer.transport.can_write_eof()
        ):
            peer.transport.write_eof()
        self.tunnel.side_done()
        return True  # keep our side open for writing: half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.tunnel.side_lost(self, exc)

    def pause_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.resume_reading()

    # -- linking -------------------------------------------------------------------------------

    def adopt(self, transport: asyncio.BaseTransport) -> None:
        """Take over a transport that another protocol was serving (an HTTP upgrade)."""
        self.transport = transport  # type: ignore[assignment]
        transport.set_protocol(self)  # type: ignore[attr-defined]

    def flush_pending_to(self, peer: TunnelEnd) -> None:
        pending, self._pending = self._pending, []
        if pending and peer.transport is not None:
            peer.transport.write(b"".join(pending))
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def close(self, abort: bool = False) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            if abort:
                self.transport.abort()
            else:
                self.transport.close()


class Tunnel:
    """Two linked ends; `on_close(tunnel)` runs once when it is over."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        idle_timeout: float,
        on_close: Callable[[Tunnel], None] | None = None,
    ) -> None:
        self.loop = loop
        self.client = TunnelEnd(self, "client")
        self.server = TunnelEnd(self, "server")
        self.idle_timeout = idle_timeout
        self.on_close = on_close
        self.deadline = Deadline(loop, self._idle)
        self.finished = False
        self.idle = False

    @property
    def bytes_in(self) -> int:
        """Bytes from the client."""
        return self.client.received

    @property
    def bytes_out(self) -> int:
        """Bytes from the server (to the client)."""
        return self.server.received

    def link(self, to_client: bytes = b"", to_server: bytes = b"") -> None:
        """Both ends are connected: write what arrived early, then relay."""
        client, server = self.client, self.server
        client.peer, server.peer = server, client
        assert client.transport is not None
        assert server.transport is not None
        if to_client:
            client.transport.write(to_client)
        if to_server:
            server.transport.write(to_server)
        client.flush_pending_to(server)
        server.flush_pending_to(client)
        for end, peer in ((client, server), (server, client)):
            if end.eof and peer.transport is not None and peer.transport.can_write_eof():
                peer.transport.write_eof()  # it half-closed before the link was made
        # Reading may have been paused by the HTTP side before the switch.
        client.transport.resume_reading()
        server.transport.resume_reading()
        self.touch()

    def touch(self) -> None:
        self.deadline.set(self.idle_timeout)

    def side_done(self) -> None:
        if self.client.eof and self.server.eof:
            self.close()

    def side_lost(self, end: TunnelEnd, exc: Exception | None) -> None:
        other = self.server if end is self.client else self.client
        # A reset on one side resets the other; a clean close lets the other flush first.
        other.close(abort=exc is not None)
        self._finish()

    def _idle(self) -> None:
        self.idle = True
        self.close()

    def close(self) -> None:
        self.client.close()
        self.server.close()
        self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.deadline.cancel()
        if self.on_close is not None:
            self.on_close(self)
