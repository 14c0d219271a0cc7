"""A listener's shared state: its open client connections, settings and routes, and the
sweep that watches for late first heads; and the states a client connection's reading
and timer can be in (shared by the connection, its exchanges and the sweep).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, Protocol

from .plan import ForwardingCache
from .routing import RouteTable
from .settings import ListenerSettings
from .stats import ServerStats
from .tls import subject_text

if TYPE_CHECKING:
    from .accesslog import AccessLog
    from .pool import ServerPool
    from .tunnel import Tunnel

# Why the client side's reading is paused (several reasons can hold at once).
PAUSE_UPSTREAM_FULL: Final = 1  # the upstream write buffer is over its high-water mark
PAUSE_PENDING: Final = 2  # body bytes are buffered while no upstream connection is attached
PAUSE_PIPELINE: Final = 4  # too many pipelined requests wait behind the active one
PAUSE_DONE: Final = 8  # no more requests will be read on this connection
PAUSE_UPGRADE: Final = 16  # an upgrade request waits for its answer

# What the single downstream deadline currently means.
T_NONE: Final = 0
T_HEADER: Final = 1
T_BODY: Final = 2
T_KEEPALIVE: Final = 3
T_SEND: Final = 4
# The first head of a connection, due `header_timeout` after connecting. No timer of the
# connection's own: the listener's sweep watches every such connection (see ListenerContext).
T_FIRST: Final = 5


class ClientConnection(Protocol):
    """What a listener needs of its connections (bunancer.core.downstream's)."""

    timeout_kind: int
    born: float
    transport: asyncio.Transport | None

    def on_timeout(self) -> None: ...

    def drain(self) -> None: ...


def sweep_interval(header_timeout: float) -> float:
    """How often a listener looks for first heads that are late: a quarter of the timeout,
    at most a second. A late head is answered `header_timeout` after the first sweep that
    saw its connection, so never early and at most about two intervals late."""
    return min(1.0, max(header_timeout / 4, 0.001))


class ListenerContext:
    """What every connection of one listener shares."""

    __slots__ = (
        "access_log",
        "connections",
        "draining",
        "forwarding",
        "loop",
        "rejected",
        "routes",
        "settings",
        "stats_enabled",
        "sweeping",
        "tunnels",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        routes: RouteTable[ServerPool],
        settings: ListenerSettings,
    ) -> None:
        self.loop = loop
        self.routes = routes
        self.settings = settings
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.forwarding = ForwardingCache(settings.forwarding)
        self.stats_enabled = settings.stats
        self.access_log: AccessLog | None = None
        self.tunnels: set[Tunnel] = set()  # upgraded connections (WebSocket)
        self.rejected = ServerStats()  # requests refused before any pool was chosen
        self.sweeping = False

    def subject_line(self, transport: asyncio.BaseTransport) -> bytes:
        """The `client_subject_header` line (the listener has one) carrying a TLS client's
        verified certificate subject upstream."""
        name = self.settings.client_subject_header
        return b"%s: %s\r\n" % (name, subject_text(transport.get_extra_info("peercert")))

    def reconfigure(self, routes: RouteTable[ServerPool], settings: ListenerSettings) -> None:
        """A config reload: the next request of every connection uses these."""
        self.routes = routes
        self.settings = settings
        self.forwarding = ForwardingCache(settings.forwarding)
        self.stats_enabled = settings.stats

    # A new connection's first head has a deadline, and arming a timer for it, then
    # cancelling it when the head arrives, costs more than all the rest of the connection's
    # own bookkeeping when each connection carries one request. So one timer per listener
    # sweeps the open connections instead, while there are any: one attribute check per
    # open connection and interval (bench/README.md has what a sweep costs).

    def start_sweep(self) -> None:
        self.sweeping = True
        self.loop.call_later(sweep_interval(self.settings.header_timeout), self._sweep)

    def _sweep(self) -> None:
        if not self.connections:
            self.sweeping = False
            return
        # Re-armed first: a failure below must not end the sweeping for the listener.
        self.loop.call_later(sweep_interval(self.settings.header_timeout), self._sweep)
        now = self.loop.time()
        due = now - self.settings.header_timeout
        late: list[ClientConnection] = []
        for conn in self.connections:
            if conn.timeout_kind == T_FIRST:
                if conn.born < 0.0:
                    # Arrived since the last sweep: its clock starts now, never before
                    # it connected (however late this sweep runs), at most a sweep after.
                    conn.born = now
                elif conn.born <= due:
                    late.append(conn)
        for conn in late:
            conn.on_timeout()

    def drain(self) -> None:
        """Stop keeping connections alive: idle ones close now, busy ones after their reply."""
        self.draining = True
        for conn in list(self.connections):
            conn.drain()

    @property
    def busy(self) -> int:
        """Connections and tunnels still open (graceful shutdown waits for them)."""
        return len(self.connections) + len(self.tunnels)

    def abort_all(self) -> None:
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for tunnel in list(self.tunnels):
            tunnel.close()
