"""The data plane's objects built from a `Config`: the settings it reads (plain values, no
pydantic), routes, and listeners (a context, and the factory of its connections' protocol).
A config reload builds them again and hands them to the running listeners.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from .config import Config, ListenerConfig
from .core.downstream import DownstreamProtocol
from .core.headers import ForwardingOptions
from .core.listen import ListenGroup
from .core.listener import ListenerContext
from .core.pool import ServerPool
from .core.routing import Route, RouteTable
from .core.settings import ListenerSettings, TcpSettings, UpstreamSettings
from .core.tcp import TcpClientEnd, TcpListenerContext


@dataclass
class Listener:
    address: str
    host: str
    port: int
    ctx: ListenerContext | TcpListenerContext
    factory: Callable[[], asyncio.BaseProtocol]
    default_pool: str
    mode: str = "http"
    server: ListenGroup | None = None

    @property
    def key(self) -> str:
        """How a worker knows the listener: its mode and configured address."""
        return f"{self.mode} {self.address}"

    @property
    def has_connections(self) -> bool:
        ctx = self.ctx
        return bool(ctx.tunnels) or (isinstance(ctx, ListenerContext) and bool(ctx.connections))

    @property
    def bound(self) -> str:
        """The address actually bound (port 0 becomes a real port)."""
        if self.server is None or not self.server.sockets:
            return self.address
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def upstream_settings(config: Config) -> UpstreamSettings:
    """What the data plane's connection pools are told (plain values, no pydantic)."""
    timeouts, limits, upstream = config.timeouts, config.limits, config.upstream
    return UpstreamSettings(
        connect_timeout=timeouts.connect,
        response_timeout=timeouts.upstream_response,
        idle_timeout=upstream.idle_timeout,
        max_idle=upstream.max_idle,
        max_connections=upstream.max_connections,
        write_buffer_high=limits.write_buffer_high,
        write_buffer_low=limits.write_buffer_low,
    )


def listener_settings(config: Config) -> ListenerSettings:
    """What every HTTP listener's connections are told."""
    timeouts, limits, headers = config.timeouts, config.limits, config.headers
    return ListenerSettings(
        header_timeout=timeouts.header,
        body_idle_timeout=timeouts.body_idle,
        keepalive_timeout=timeouts.keepalive,
        max_request_line=limits.max_request_line,
        max_header_bytes=limits.max_header_bytes,
        max_headers=limits.max_headers,
        max_body_bytes=limits.max_body_bytes,
        max_pipelined=limits.max_pipelined,
        tunnel_idle_timeout=timeouts.tunnel_idle,
        write_buffer_high=limits.write_buffer_high,
        write_buffer_low=limits.write_buffer_low,
        stats=config.stats.enabled,
        forwarding=ForwardingOptions(
            forwarded=headers.forwarded, x_forwarded=headers.x_forwarded, via=headers.via
        ),
    )


def tcp_settings(config: Config, listener: ListenerConfig) -> TcpSettings:
    return TcpSettings(
        connect_timeout=config.timeouts.connect,
        idle_timeout=listener.idle_timeout,
        max_connections=listener.max_connections,
        send_proxy=listener.send_proxy_protocol,
        accept_proxy=listener.accept_proxy_protocol,
        trusted=tuple(
            ipaddress.ip_network(network, strict=False) for network in listener.trusted_proxies
        ),
        retries=config.pools[listener.default_pool].balancing.retries,
    )


def make_routes(config: Config, pools: dict[str, ServerPool]) -> list[Route[ServerPool]]:
    return [
        Route(pools[r.pool], r.host.encode() if r.host else None, r.path_prefix.encode())
        for r in config.routes
    ]


def make_listener(
    config: Config,
    listener: ListenerConfig,
    routes: list[Route[ServerPool]],
    pools: dict[str, ServerPool],
    loop: asyncio.AbstractEventLoop,
) -> Listener:
    host, port = listener.host_port
    pool = pools[listener.default_pool]
    ctx: ListenerContext | TcpListenerContext
    if listener.mode == "tcp":
        ctx = TcpListenerContext(loop, pool, tcp_settings(config, listener))
        factory: Callable[[], asyncio.BaseProtocol] = partial(TcpClientEnd, ctx)
    else:
        ctx = ListenerContext(loop, RouteTable(routes, pool), listener_settings(config))
        factory = partial(DownstreamProtocol, ctx)
    return Listener(
        listener.address, host, port, ctx, factory, listener.default_pool, listener.mode
    )


def reconfigure(
    listener: Listener,
    config: Config,
    routes: list[Route[ServerPool]],
    pools: dict[str, ServerPool],
) -> None:
    """A running listener takes the routes and settings of a reloaded `config`."""
    (settings,) = [x for x in config.listeners if x.host_port == (listener.host, listener.port)]
    listener.default_pool = settings.default_pool
    ctx = listener.ctx
    if isinstance(ctx, TcpListenerContext):
        ctx.pool = pools[settings.default_pool]
        ctx.settings = tcp_settings(config, settings)
    else:
        ctx.reconfigure(RouteTable(routes, pools[settings.default_pool]), listener_settings(config))
