"""What the data plane is told: plain, frozen settings objects.

The app builds these from the validated config (bunancer/config.py); the data plane never
sees a pydantic model, so it imports nothing of the control plane and reads attributes of
slotted classes on the request path. A worker process will receive them the same way.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .headers import ForwardingOptions

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    header_timeout: float = 10.0
    body_idle_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    max_request_line: int = 8 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_body_bytes: int = 0  # 0: no limit
    max_pipelined: int = 32
    tunnel_idle_timeout: float = 3600.0
    write_buffer_high: int = 256 * 1024
    write_buffer_low: int = 64 * 1024
    forwarding: ForwardingOptions = field(default_factory=ForwardingOptions)
    stats: bool = True
    redirect_https: bool = False  # answer every request with a 308 to its https:// URL
    client_subject_header: bytes = b""  # carries a TLS client certificate's subject upstream


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    connect_timeout: float = 3.0
    response_timeout: float = 60.0
    idle_timeout: float = 4.0
    max_idle: int = 1024
    max_connections: int = 0  # 0: no limit
    write_buffer_high: int = 256 * 1024
    write_buffer_low: int = 64 * 1024
    # TLS to the servers (`https://` servers): verified against the system's CAs, or
    # `tls_ca_file`'s; the name sent (SNI) and verified is each server's host, or this one.
    tls: bool = False
    tls_verify: bool = True
    tls_ca_file: str | None = None
    tls_server_name: str | None = None


@dataclass(frozen=True, slots=True)
class TcpSettings:
    connect_timeout: float = 3.0
    idle_timeout: float = 300.0
    max_connections: int = 0  # 0: no limit
    send_proxy: str | None = None  # "v1" or "v2"
    accept_proxy: bool = False
    trusted: tuple[Network, ...] = ()
    retries: int = 1


@dataclass(frozen=True, slots=True)
class BalancingSettings:
    """A pool's algorithm and what the request path needs of its balancing settings
    (config.BalancingConfig documents each)."""

    algorithm: str = "peak-ewma"
    hash_key: str = "client_ip"  # client_ip, path, header:NAME, cookie:NAME
    sticky_cookie: str = "bunancer_sticky"
    sticky_fallback: str = "p2c"
    retries: int = 1
    retry_on: frozenset[int] = frozenset({502, 503, 504})
    retry_timeouts: bool = True
    retry_budget: float = 0.2
    retry_body_max: int = 64 * 1024
    max_pending: int = 0
    panic_threshold: float = 0.0
    decision_sample: int = 1000  # 1 in N requests has its selection recorded (0: none)
