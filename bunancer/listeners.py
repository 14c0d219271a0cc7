"""The data plane's objects built from a `Config`: the settings it reads (plain values, no
pydantic), routes, and listeners (a context, and the factory of its connections' protocol).
A config reload builds them again and hands them to the running listeners.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

from .config import Config, ConfigError, ListenerConfig
from .control.certificates import files_version, tls_settings
from .core.downstream import DownstreamProtocol
from .core.headers import ForwardingOptions
from .core.listen import ListenGroup
from .core.listener import ListenerContext
from .core.pool import ServerPool
from .core.routing import Route, RouteTable
from .core.settings import ListenerSettings, TcpSettings, UpstreamSettings
from .core.tcp import TcpClientEnd, TcpListenerContext
from .core.tls import TlsSettings, TlsTerminator

log = logging.getLogger("bunancer")


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
    tls: TlsSettings | None = None
    sni_routes: list[tuple[str, str]] = field(default_factory=list)  # TCP: (host, pool)
    terminator: TlsTerminator | None = None  # serving TLS in this process (no workers)

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


def listener_settings(config: Config, listener: ListenerConfig) -> ListenerSettings:
    """What an HTTP listener's connections are told."""
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
            forwarded=headers.forwarded,
            x_forwarded=headers.x_forwarded,
            via=headers.via,
            https=listener.tls is not None,
        ),
        redirect_https=listener.redirect_https,
        client_subject_header=(
            (listener.tls.client_subject_header or "").encode() if listener.tls else b""
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


def sni_routes(
    listener: ListenerConfig, pools: dict[str, ServerPool]
) -> RouteTable[ServerPool] | None:
    """A TCP listener's routes by server name (None without any: no ClientHello is read)."""
    if not listener.sni_routes:
        return None
    routes = [Route(pools[r.pool], r.host.encode(), b"/") for r in listener.sni_routes]
    return RouteTable(routes, pools[listener.default_pool])


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
        routes = sni_routes(listener, pools)
        ctx = TcpListenerContext(loop, pool, tcp_settings(config, listener), routes)
        factory: Callable[[], asyncio.BaseProtocol] = partial(TcpClientEnd, ctx)
    else:
        ctx = ListenerContext(loop, RouteTable(routes, pool), listener_settings(config, listener))
        factory = partial(DownstreamProtocol, ctx)
    tls = tls_settings(listener, config.listeners.index(listener))
    by_name = [(r.host, r.pool) for r in listener.sni_routes]
    return Listener(
        listener.address, host, port, ctx, factory, listener.default_pool, listener.mode, tls=tls,
        sni_routes=by_name,
    )  # fmt: skip


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
        ctx.routes = sni_routes(settings, pools)
        listener.sni_routes = [(r.host, r.pool) for r in settings.sni_routes]
    else:
        table = RouteTable(routes, pools[settings.default_pool])
        ctx.reconfigure(table, listener_settings(config, settings))
    tls = tls_settings(settings, config.listeners.index(settings))
    if tls != listener.tls:
        use_tls(listener, tls)


def use_tls(listener: Listener, tls: TlsSettings | None) -> None:
    """New certificates for a running listener (checked already): new handshakes take them.
    Turning TLS on or off on a listener takes a restart (the socket's server is made with it
    or without)."""
    listener.tls = tls
    if tls is None:
        return
    if listener.terminator is None or listener.terminator.reload(
        tls, f"listener {listener.address}"
    ):
        log.info("listener %s: new certificates for new handshakes", listener.address)


def refresh_certificates(listeners: list[Listener], config: Config) -> bool:
    """Take the TLS files that changed on disk since they were read (a renewal rewrites
    them): new handshakes use the new pair, a bad one is logged and the current one stays.
    Whether a listener took new ones."""
    changed = False
    for index, settings in enumerate(config.listeners):
        address = settings.host_port
        listener = next((x for x in listeners if (x.host, x.port) == address), None)
        if listener is None or listener.tls is None:
            continue
        version = files_version(settings.tls)
        if version == listener.tls.version:
            continue
        try:
            tls = tls_settings(settings, index)
        except ConfigError as error:
            log.error("changed certificate files refused, the current ones stay: %s", error)
            listener.tls = replace(listener.tls, version=version)  # said once, not every look
            continue
        use_tls(listener, tls)
        changed = True
    return changed


def listener_view(
    listener: Listener, figures: tuple[int, int, int, int] | None
) -> dict[str, object]:
    """A listener as the API shows it; `figures` (connections, tunnels, tunnel bytes in and
    out) from the workers' reports, None to count this process's own."""
    if figures is None:
        ctx = listener.ctx
        tunnels = list(ctx.tunnels)
        connections = len(ctx.connections) if isinstance(ctx, ListenerContext) else 0
        figures = (connections, len(tunnels), sum(t.bytes_in for t in tunnels),
                   sum(t.bytes_out for t in tunnels))  # fmt: skip
    connections, open_tunnels, bytes_in, bytes_out = figures
    now = time.time()
    certificates = [
        {"names": list(c.names), "expires": time.strftime("%Y-%m-%d", time.gmtime(c.not_after)),
         "days_left": round((c.not_after - now) / 86400, 1)}
        for c in (listener.tls.certificates if listener.tls is not None else ())
    ]  # fmt: skip
    secure = {"http": "https", "tcp": "tls"}[listener.mode] if listener.tls else listener.mode
    return {
        "address": listener.bound,
        "mode": listener.mode,
        "scheme": secure,
        "certificates": certificates,
        "sni_routes": [{"host": host, "pool": pool} for host, pool in listener.sni_routes],
        "default_pool": listener.default_pool,
        "connections": open_tunnels if listener.mode == "tcp" else connections,
        "tunnels": open_tunnels,
        "tunnel_bytes_in": bytes_in,
        "tunnel_bytes_out": bytes_out,
    }


def certificate_expiry(
    listeners: list[tuple[str, TlsSettings | None]],
) -> list[tuple[dict[str, str], float]]:
    """Each TLS listener's certificates, labelled, with when they expire (Unix time);
    `listeners`: each one's name and TLS (None: plain)."""
    return [
        ({"listener": name, "certificate": c.cert, "names": ",".join(c.names)}, c.not_after)
        for name, tls in listeners
        if tls is not None
        for c in tls.certificates
    ]
