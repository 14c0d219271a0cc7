"""TCP mode: balance whole TCP connections (databases, Redis, anything) over a pool.

For each accepted connection: optionally read a PROXY header (trusted sources only),
optionally read the TLS ClientHello's server name and pick the pool by it (SNI routes: the
TLS passes through untouched), select a server through the pool's `Selector` (a `hash` pool
keys on the client address), connect with a timeout (a failed connect is retried on another
server), optionally send a PROXY header, then hand both sides to a `Tunnel`. Bytes that
arrive meanwhile are held (bounded) and delivered first.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import TYPE_CHECKING

from . import proxyproto
from .clienthello import server_name
from .routing import RouteTable
from .settings import TcpSettings
from .stats import CONNECT, TIMEOUT, ServerStats
from .tunnel import Tunnel, TunnelEnd

if TYPE_CHECKING:
    from .pool import ServerPool
    from .server import Server

log = logging.getLogger("bunancer.tcp")
HELLO_TIMEOUT = 10.0  # seconds a client of an SNI-routed listener has to send its ClientHello


class TcpListenerContext:
    """What every connection of one TCP listener shares."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pool: ServerPool,
        settings: TcpSettings,
        routes: RouteTable[ServerPool] | None = None,
    ) -> None:
        self.loop = loop
        self.pool = pool
        self.settings = settings
        self.routes = routes  # by the ClientHello's server name; None: every connection to `pool`
        self.tunnels: set[Tunnel] = set()
        self.rejected = ServerStats()  # connections refused before reaching a server
        self.draining = False

    def trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.settings.trusted)

    def drain(self) -> None:
        """Stop taking connections; open tunnels run on until the drain timeout."""
        self.draining = True

    @property
    def busy(self) -> int:
        return len(self.tunnels)

    def abort_all(self) -> None:
        for tunnel in list(self.tunnels):
            tunnel.close()


class TcpClientEnd(TunnelEnd):
    """The accepted side of a TCP-mode connection: it reads a PROXY header if expected,
    then gets its server connected."""

    def __init__(self, ctx: TcpListenerContext) -> None:
        self.ctx = ctx
        tunnel = Tunnel(ctx.loop, ctx.settings.idle_timeout, self._tunnel_closed)
        super().__init__(tunnel, "client")
        tunnel.client = self
        self.client_address: tuple[str, int] = ("", 0)
        self.local_address: tuple[str, int] = ("", 0)
        self.header = b""  # a PROXY header being read, or the first bytes being sniffed
        self.awaiting_header = False
        self.sniffing = False  # untrusted source: do its first bytes forge a PROXY header?
        self.server: Server | None = None
        self.pool = ctx.pool  # or the one the ClientHello's server name routes to
        self.hello: asyncio.TimerHandle | None = None  # reading the ClientHello, until then
        self.tries = 0
        self.started = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        ctx = self.ctx
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        self.client_address = (peer[0], peer[1])
        self.local_address = (local[0], local[1])
        self.started = ctx.loop.time()
        limit = ctx.settings.max_connections
        if ctx.draining or (limit and len(ctx.tunnels) >= limit):
            ctx.rejected.record(0, 0, 0, 0, -1)
            self.close(abort=True)
            return
        ctx.tunnels.add(self.tunnel)
        self.tunnel.touch()
        if ctx.settings.accept_proxy:
            if ctx.trusted(peer[0]):
                self.awaiting_header = True
                return
            self.sniffing = True
        self._route_or_connect()

    def _route_or_connect(self) -> None:
        if self.ctx.routes is None:
            self._connect()
        else:
            self.hello = self.ctx.loop.call_later(HELLO_TIMEOUT, self.close, True)

    def data_received(self, data: bytes) -> None:
        if self.awaiting_header:
            self._read_header(data)
            return
        if self.sniffing:
            # Checked whether or not the server is linked yet: it may connect before the
            # client's first byte arrives.
            data = self.header + data
            forged = proxyproto.starts_with_header(data)
            if forged is None:
                self.header = data  # a few bytes that could still become a signature
                return
            self.sniffing, self.header = False, b""
            if forged:
                # An untrusted source sending a PROXY header may be forging its address.
                # Refuse rather than pass the header on as data.
                log.warning("PROXY header from untrusted %s: closing", self.client_address[0])
                self.close(abort=True)
                return
        if self.hello is not None:
            self._read_hello(data)
            return
        super().data_received(data)

    def eof_received(self) -> bool:
        if self.hello is not None:  # gone before its ClientHello was whole: nothing to route
            self.close(abort=True)
            return False
        if self.sniffing and self.header:
            # The client ended inside what could have been a signature: it was plain data.
            held, self.header, self.sniffing = self.header, b"", False
            super().data_received(held)
        return super().eof_received()

    def _read_header(self, data: bytes) -> None:
        self.header += data
        try:
            addresses, used = proxyproto.parse(self.header)
        except proxyproto.ProxyHeaderError as error:
            log.warning("bad PROXY header from %s: %s", self.client_address[0], error)
            self.close(abort=True)
            return
        if not used:
            return  # more to come
        self.awaiting_header = False
        rest, self.header = self.header[used:], b""
        if addresses is not None:
            self.client_address = (addresses.source, addresses.source_port)
            self.local_address = (addresses.destination, addresses.destination_port)
        self._route_or_connect()
        if rest:
            self.data_received(rest)

    def _read_hello(self, data: bytes) -> None:
        """Hold the client's first bytes until its ClientHello names a server (or they are
        not one): then connect to the pool routed to, and pass them all on."""
        held = self.header + data
        decided, name = server_name(held)
        if not decided:
            self.header = held
            return
        if self.hello is not None:
            self.hello.cancel()
        self.hello, self.header = None, b""
        routes = self.ctx.routes  # (None if a reload took the routes away meanwhile)
        if routes is not None:
            self.pool = routes.match(name.encode() if name else None, b"/")
        self._connect()
        super().data_received(held)

    # -- connecting ---------------------------------------------------------------------------

    def _connect(self, avoid: Server | None = None) -> None:
        pool = self.pool
        key = self.client_address[0].encode() if pool.key_kind else None
        # Counted in flight until the tunnel ends: least-connections sees open tunnels.
        server = pool.begin(key, avoid=avoid)
        if server is None:
            self.ctx.rejected.record(0, 0, 0, 0, -1)
            self.close(abort=True)
            return
        self.server = server
        self.tries += 1
        self.ctx.loop.create_task(self._open(server))

    async def _open(self, server: Server) -> None:
        loop = self.ctx.loop
        try:
            async with asyncio.timeout(self.ctx.settings.connect_timeout):
                await loop.create_connection(lambda: self.tunnel.server, server.host, server.port)
        except (OSError, TimeoutError) as error:
            self.pool.end(server)
            timeout = isinstance(error, TimeoutError)
            server.passive_failure("connect timeouts" if timeout else "connect failures")
            error_class = TIMEOUT if timeout else CONNECT
            self.server = None
            others = any(s is not server for s in self.pool.routable)
            if not self.closed and self.tries <= self.ctx.settings.retries and others:
                server.stats.record_retried(0, error_class, True)
                self._connect(avoid=server)
                return
            us = int((loop.time() - self.started) * 1_000_000)
            server.stats.record(0, us, 0, 0, error_class)
            if not self.closed:
                log.debug("tcp: no server answered for %s", self.client_address[0])
                self.close(abort=True)
            return
        if self.closed:
            self.tunnel.server.close()
            return
        header = b""
        send = self.ctx.settings.send_proxy
        if send is not None:
            addresses = proxyproto.Addresses(
                self.client_address[0],
                self.client_address[1],
                self.local_address[0],
                self.local_address[1],
            )
            header = (proxyproto.encode_v2 if send == "v2" else proxyproto.encode_v1)(addresses)
        self.tunnel.link(to_server=header)

    # -- the end ---------------------------------------------------------------------------------

    def _tunnel_closed(self, tunnel: Tunnel) -> None:
        ctx = self.ctx
        ctx.tunnels.discard(tunnel)
        if self.hello is not None:
            self.hello.cancel()
        server = self.server
        if server is not None:
            self.pool.end(server)
            self.server = None
            us = int((ctx.loop.time() - self.started) * 1_000_000)
            server.stats.record(0, us, tunnel.bytes_in, tunnel.bytes_out, -1)
