"""Configuration: TOML file -> typed, validated `Config`, with embedded defaults.

Every problem becomes a `ConfigError` whose message names the file, the key and the
problem, e.g. ``bunancer.toml: pools.web.servers[0].weight: must be >= 1``; the CLI
prints it and exits with code 2. Reading a file and applying flags on top of it is
configfile.py's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .problems import KeyedError, describe_problem
from .values import check_host, networks, parse_backend_url, parse_expect, parse_hostport

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_API_LISTEN = "127.0.0.1:8081"
# Link-local: cloud metadata services live there (169.254.169.254).
DEFAULT_REGISTRATION_DENY = ("169.254.0.0/16", "fe80::/10")
DEFAULT_DASHBOARD_LISTEN = "127.0.0.1:8082"
DEFAULT_POOL = "default"
DEFAULT_STATE_DIR = ".bunancer"


class ConfigError(Exception):
    """A configuration problem, already phrased for the user (file: key: problem)."""


# The rules every way in holds names, hosts and weights to (config file, API, saved state).
NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"  # pool names and chosen server ids
WEIGHT_MAX = 10000


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Seconds = Annotated[float, Field(gt=0, le=86400)]
HostPort = Annotated[str, AfterValidator(lambda value: parse_hostport(value) and value)]


class CertificateConfig(_Section):
    cert: str  # PEM file: the certificate, then its chain
    key: str  # PEM file: its private key


class TlsConfig(_Section):
    """A listener's TLS: `cert` and `key`, and/or `certificates` (chosen by the client's
    server name; the first one listed is the default)."""

    cert: str | None = None
    key: str | None = None
    certificates: list[CertificateConfig] = Field(default_factory=list)
    client_ca: str | None = None  # set: clients must present a certificate it signed
    # With client_ca: the header that carries the verified certificate's subject upstream
    client_subject_header: str | None = Field(default=None, pattern=r"^[A-Za-z0-9-]{1,64}$")

    @model_validator(mode="after")
    def _some_certificate(self) -> TlsConfig:
        if self.client_subject_header is not None and self.client_ca is None:
            raise ValueError("client_subject_header needs client_ca (a verified certificate)")
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")
        if self.cert is None and not self.certificates:
            raise ValueError("needs cert and key, or certificates")
        return self

    def pairs(self) -> list[CertificateConfig]:
        """Every certificate, the default first."""
        first = [CertificateConfig(cert=self.cert, key=self.key)] if self.cert and self.key else []
        return [*first, *self.certificates]


def host_pattern(value: str) -> str:
    """An exact host, or `*.suffix` for every host ending so."""
    if "*" in value.removeprefix("*.") or value == "*.":
        raise ValueError("use an exact host or '*.suffix'")
    return value


class SniRouteConfig(_Section):
    """A TCP listener's route by the server name of a TLS ClientHello (passed through)."""

    host: Annotated[str, Field(min_length=1), AfterValidator(host_pattern)]
    pool: str


class ListenerConfig(_Section):
    address: HostPort = DEFAULT_LISTEN
    mode: Literal["http", "tcp"] = "http"
    default_pool: str = DEFAULT_POOL  # for tcp: the pool every connection goes to
    tls: TlsConfig | None = None  # terminate TLS (HTTPS, or TLS over a TCP listener)
    # TCP mode: pick the pool by the ClientHello's server name, the TLS passed through
    sni_routes: list[SniRouteConfig] = Field(default_factory=list)
    redirect_https: bool = False  # a plain HTTP listener answers everything with a 308 to https
    # TCP mode
    idle_timeout: float = Field(default=300.0, gt=0)  # a tunnel with no bytes either way
    max_connections: int = Field(default=0, ge=0)  # 0 = no limit
    # PROXY protocol: send a header to upstreams ("v1"/"v2"), accept one from trusted
    # sources only (a header from anyone else closes the connection).
    send_proxy_protocol: Literal["v1", "v2"] | None = None
    accept_proxy_protocol: bool = False
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])

    @field_validator("trusted_proxies")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        return networks(value)

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_hostport(self.address)


# Keys an HTTP listener has no use for: refused there rather than ignored.
TCP_ONLY = frozenset(ListenerConfig.model_fields) - {
    "address",
    "mode",
    "default_pool",
    "tls",
    "redirect_https",
}


class HealthConfig(_Section):
    """Active health checks of a pool (each server may override any key)."""

    enabled: bool = True
    type: Literal["http", "tcp"] = "http"  # tcp: a connect is the check (TCP-mode pools)
    method: Literal["GET", "HEAD", "OPTIONS"] = "GET"
    path: str = "/"
    expect: str = "200-499"  # status ranges that pass: "200-399", "200,204"
    timeout: Seconds = 1.0
    interval: Seconds = 1.0  # healthy servers
    fast_interval: Seconds = 0.5  # while a rise or fall is under way
    down_interval: Seconds = 1.0  # first interval while down, then backoff...
    backoff: float = Field(default=1.5, ge=1.0, le=10.0)
    max_down_interval: Seconds = 2.0  # ...up to this
    dead_interval: Seconds = 10.0
    jitter: float = Field(default=0.1, ge=0.0, le=0.5)
    rise: int = Field(default=2, ge=1, le=100)
    fall: int = Field(default=2, ge=1, le=100)
    dead_after: int = Field(default=10, ge=1, le=100000)
    remove_dead_after: float = Field(default=0.0, ge=0.0, description="seconds; 0 = never")

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() for c in value):
            raise ValueError("must start with '/' and contain no whitespace")
        return value

    @field_validator("expect")
    @classmethod
    def _check_expect(cls, value: str) -> str:
        parse_expect(value)
        return value

    def merged(self, override: dict[str, Any]) -> HealthConfig:
        """This config with a server's overrides applied (validated: ValidationError)."""
        return HealthConfig.model_validate({**self.model_dump(), **override})


class OutlierConfig(_Section):
    """Passive health: ejection of servers that fail real traffic."""

    enabled: bool = True
    consecutive_failures: int = Field(default=5, ge=1, le=100000)
    statuses: list[int] = Field(default_factory=lambda: [502, 503, 504])
    base_ejection_time: Seconds = 2.0
    max_ejection_time: Seconds = 60.0
    max_ejection_percent: int = Field(default=50, ge=0, le=100)

    @field_validator("statuses")
    @classmethod
    def _check_statuses(cls, value: list[int]) -> list[int]:
        if any(not 100 <= status <= 599 for status in value):
            raise ValueError("statuses must be within 100-599")
        return value


Algorithm = Literal[
    "round-robin",
    "weighted-round-robin",
    "least-connections",
    "random",
    "p2c",
    "peak-ewma",
    "hash",
    "sticky",
]
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)  # the names, for checks and menus
# peak-ewma, not p2c: with one backend 10x slower, p2c still sends it ~7% of requests (in
# flight counts equalise) and p99 stays at its latency; peak-ewma does not (bench/algorithms.py).
DEFAULT_ALGORITHM = "peak-ewma"


class BalancingConfig(_Section):
    """Options of the pool's algorithm, retries, overload protection and panic mode."""

    hash_key: str = "client_ip"  # client_ip, path, header:NAME, cookie:NAME (algorithm "hash")
    sticky_cookie: str = Field(default="bunancer_sticky", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    sticky_fallback: Literal[
        "round-robin", "weighted-round-robin", "least-connections", "random", "p2c", "peak-ewma"
    ] = "p2c"
    slow_start: float = Field(default=0.0, ge=0.0, le=3600.0)  # seconds; 0 = off
    retries: int = Field(default=1, ge=0, le=10)  # extra attempts, each on another server
    retry_on: list[int] = Field(default_factory=lambda: [502, 503, 504])
    retry_timeouts: bool = True  # retry idempotent requests whose upstream timed out
    retry_budget: float = Field(default=0.2, ge=0.0, le=1.0)  # retries per request, at most
    retry_body_max: int = Field(default=64 * 1024, ge=0, le=16 * 1024 * 1024)
    max_pending: int = Field(default=0, ge=0)  # requests waiting for a connection; 0 = no cap
    max_connections: int | None = Field(default=None, ge=0)  # per server; None: [upstream]
    panic_threshold: float = Field(default=0.0, ge=0.0, le=1.0)  # 0 = off
    # 1 in N requests has its selection recorded ("why this server"); 0 = none.
    decision_sample: int = Field(default=1000, ge=0, le=1_000_000)

    @field_validator("hash_key")
    @classmethod
    def _check_key(cls, value: str) -> str:
        kind, _, name = value.partition(":")
        if kind in ("client_ip", "path") and not name:
            return value
        if kind in ("header", "cookie") and name and all(c.isalnum() or c in "-_." for c in name):
            return value
        raise ValueError("use client_ip, path, header:NAME or cookie:NAME")

    @field_validator("retry_on")
    @classmethod
    def _check_statuses(cls, value: list[int]) -> list[int]:
        if any(not 500 <= status <= 599 for status in value):
            raise ValueError("retry only on 5xx statuses")
        return value


class ServerConfig(_Section):
    address: str
    id: str | None = Field(default=None, pattern=NAME_PATTERN)
    weight: int = Field(default=1, ge=1, le=WEIGHT_MAX)
    health: dict[str, Any] = Field(default_factory=dict)  # overrides of the pool's [health]

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        parse_backend_url(value)
        return value

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_backend_url(self.address)


class UpstreamTlsConfig(_Section):
    """TLS from the balancer to a pool's servers."""

    verify: bool = True  # false: any certificate is taken (warned at start)
    ca_file: str | None = None  # verify against this CA bundle, not the system's store
    server_name: str | None = None  # SNI and the name verified; default: each server's host


class PoolConfig(_Section):
    algorithm: Algorithm = DEFAULT_ALGORITHM
    servers: list[ServerConfig] = Field(default_factory=list)
    tls: UpstreamTlsConfig | None = None  # set, or https:// servers: the servers speak TLS

    @property
    def upstream_tls(self) -> UpstreamTlsConfig | None:
        """TLS to the servers: the `tls` table, or its defaults for https:// servers."""
        if self.tls is None and any(s.address.startswith("https://") for s in self.servers):
            return UpstreamTlsConfig()
        return self.tls

    health: HealthConfig = Field(default_factory=HealthConfig)
    outlier: OutlierConfig = Field(default_factory=OutlierConfig)
    balancing: BalancingConfig = Field(default_factory=BalancingConfig)

    @model_validator(mode="after")
    def _unique_servers(self) -> PoolConfig:
        schemes = {s.address.partition("://")[0] for s in self.servers if "://" in s.address}
        if {"http", "https"} <= schemes:
            raise ValueError("http:// and https:// servers in one pool (TLS is the pool's)")
        seen_ids: set[str] = set()
        seen_addresses: set[tuple[str, int]] = set()
        for index, server in enumerate(self.servers):
            if server.health:
                try:
                    self.health.merged(server.health)
                except ValidationError as error:
                    key, message = describe_problem(error.errors()[0])
                    raise KeyedError(f"servers[{index}].health.{key}", message) from None
            if server.id is not None:
                if server.id in seen_ids:
                    raise ValueError(f"duplicate server id {server.id!r}")
                seen_ids.add(server.id)
            if server.host_port in seen_addresses:
                raise ValueError(f"duplicate server address {server.address!r}")
            seen_addresses.add(server.host_port)
        return self


class RouteConfig(_Section):
    pool: str
    host: str | None = Field(default=None, min_length=1)
    path_prefix: str = "/"

    @field_validator("path_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        return value if value is None else host_pattern(value)


class TimeoutsConfig(_Section):
    connect: Seconds = 3.0
    header: Seconds = 10.0
    body_idle: Seconds = 30.0
    upstream_response: Seconds = 60.0
    keepalive: Seconds = 75.0
    drain: Seconds = 10.0
    tunnel_idle: Seconds = 3600.0  # an upgraded (WebSocket) connection with no bytes either way


class LimitsConfig(_Section):
    max_request_line: int = Field(default=8 * 1024, ge=64, le=1024 * 1024)
    max_header_bytes: int = Field(default=64 * 1024, ge=256, le=16 * 1024 * 1024)
    max_headers: int = Field(default=100, ge=1, le=10000)
    max_body_bytes: int = Field(default=0, ge=0, description="0 means no limit")
    write_buffer_high: int = Field(default=256 * 1024, ge=4096)
    write_buffer_low: int = Field(default=64 * 1024, ge=0)
    max_pipelined: int = Field(default=32, ge=1, le=1024)

    @model_validator(mode="after")
    def _low_below_high(self) -> LimitsConfig:
        if self.write_buffer_low > self.write_buffer_high:
            raise ValueError("write_buffer_low must not exceed write_buffer_high")
        return self


class UpstreamConfig(_Section):
    # Enough for a busy server: with fewer, requests beyond it open (and close) a new
    # connection each (1,000 clients on 2 servers: 0.4x the req/s of 1,024).
    max_idle: int = Field(default=1024, ge=0, le=100000)
    # Shorter than the keep-alive timeout of common backends (Node.js: 5 s), so an idle
    # connection is closed by us before the backend closes it under a request in flight.
    idle_timeout: Seconds = 4.0
    max_connections: int = Field(default=0, ge=0, description="0 means no limit")


class HeadersConfig(_Section):
    forwarded: bool = True
    x_forwarded: bool = True
    via: bool = True


class _AdminListener(_Section):
    """What the API's and the dashboard's listeners share: the address and the caps on
    what clients may hold open (beyond them a 503)."""

    listen: HostPort
    max_connections: int = Field(default=256, ge=1, le=100000)
    max_connections_per_client: int = Field(default=32, ge=1, le=100000)
    # Reads without the token (API) or login (dashboard); unset: on only on a loopback address.
    public_reads: bool | None = None
    allowed_hosts: list[str] = Field(default_factory=list)  # Host names answered besides
    # localhost, IP addresses and the listen address's name (against DNS rebinding)
    tls: TlsConfig | None = None  # serve HTTPS (the certificates are read at start)

    @field_validator("allowed_hosts")
    @classmethod
    def _check_allowed_hosts(cls, value: list[str]) -> list[str]:
        return [check_host(name) for name in value]


class ApiConfig(_AdminListener):
    """The registry/admin API listener and its token."""

    listen: str = DEFAULT_API_LISTEN
    token: str | None = Field(default=None, min_length=16)
    token_file: str | None = None
    # Addresses a registration may name (empty: any), and those it may not.
    registration_allow: list[str] = Field(default_factory=list)
    registration_deny: list[str] = Field(default_factory=lambda: list(DEFAULT_REGISTRATION_DENY))

    @field_validator("registration_allow", "registration_deny")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        return networks(value)


class StatsConfig(_Section):
    enabled: bool = True  # per-request counters and histograms (a few % of throughput)
    statsd: HostPort | None = None  # send StatsD lines over UDP once a second
    statsd_prefix: str = Field(default="bunancer", pattern=r"^[A-Za-z0-9_.-]+$")


class AccessLogConfig(_Section):
    path: str | None = None  # off by default; "-" for standard output
    format: Literal["combined", "json"] = "combined"


class DashboardConfig(_AdminListener):
    listen: str = DEFAULT_DASHBOARD_LISTEN  # read-only without login; actions need the token
    enabled: bool = True


class Config(_Section):
    # Data-plane processes: 0 serves in this one process; "auto" is one per core.
    workers: int | Literal["auto"] = 0

    @field_validator("workers", mode="before")
    @classmethod
    def _check_workers(cls, value: object) -> object:
        if value == "auto" or (type(value) is int and 0 <= value <= 256):
            return value
        raise ValueError('a number of worker processes from 0 to 256, or "auto"')

    state_dir: str = DEFAULT_STATE_DIR
    store: str = "file"  # "file" (state.json in state_dir) or "redis://host:port/db"
    api: ApiConfig = Field(default_factory=ApiConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    stats: StatsConfig = Field(default_factory=StatsConfig)
    access_log: AccessLogConfig = Field(default_factory=AccessLogConfig)
    listeners: list[ListenerConfig] = Field(
        default_factory=lambda: [ListenerConfig()], min_length=1
    )
    pools: dict[str, PoolConfig] = Field(default_factory=dict)
    routes: list[RouteConfig] = Field(default_factory=list)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    headers: HeadersConfig = Field(default_factory=HeadersConfig)

    @field_validator("pools")
    @classmethod
    def _pool_names(cls, pools: dict[str, PoolConfig]) -> dict[str, PoolConfig]:
        for name in pools:
            if not name or not all(c.isalnum() or c in "._-" for c in name):
                raise ValueError(f"pool name {name!r} may hold only letters, digits, '.', '_', '-'")
        return pools

    @field_validator("store")
    @classmethod
    def _check_store(cls, value: str) -> str:
        if value != "file" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("use 'file' or a redis:// URL")
        return value

    @model_validator(mode="after")
    def _references(self) -> Config:
        # The default pool always exists, empty if the file does not fill it.
        if DEFAULT_POOL not in self.pools:
            self.pools[DEFAULT_POOL] = PoolConfig()
        for index, route in enumerate(self.routes):
            if route.pool not in self.pools:
                raise KeyedError(f"routes[{index}].pool", f"unknown pool {route.pool!r}")
        tcp_listeners = [x for x in self.listeners if x.mode == "tcp"]
        tcp_pools = {x.default_pool for x in tcp_listeners}
        tcp_pools |= {r.pool for x in tcp_listeners for r in x.sni_routes}
        http_pools = {x.default_pool for x in self.listeners if x.mode == "http"}
        http_pools |= {r.pool for r in self.routes}
        for name in tcp_pools - http_pools:
            pool = self.pools.get(name)
            if pool is None:
                continue
            # A pool only TCP listeners use is checked with a connect, not HTTP, and is
            # round-robin by default (no response times to be latency-aware about).
            update: dict[str, Any] = {}
            if "type" not in pool.health.model_fields_set:
                update["health"] = pool.health.model_copy(update={"type": "tcp"})
            if "algorithm" not in pool.model_fields_set:
                update["algorithm"] = "round-robin"
            if update:
                self.pools[name] = pool.model_copy(update=update)
        for index, listener in enumerate(self.listeners):
            if listener.default_pool not in self.pools:
                raise KeyedError(
                    f"listeners[{index}].default_pool", f"unknown pool {listener.default_pool!r}"
                )
            for number, route in enumerate(listener.sni_routes):
                if route.pool not in self.pools:
                    key = f"listeners[{index}].sni_routes[{number}].pool"
                    raise KeyedError(key, f"unknown pool {route.pool!r}")
        seen: set[tuple[str, int]] = set()
        for index, listener in enumerate(self.listeners):
            if listener.mode == "http":
                for key in sorted(TCP_ONLY & listener.model_fields_set):
                    raise KeyedError(
                        f"listeners[{index}].{key}", 'applies to mode = "tcp" listeners only'
                    )
            if listener.redirect_https and (listener.mode == "tcp" or listener.tls is not None):
                raise KeyedError(
                    f"listeners[{index}].redirect_https", "is for a plain HTTP listener (no tls)"
                )
            if listener.host_port in seen:
                raise KeyedError(f"listeners[{index}].address", "listed twice")
            seen.add(listener.host_port)
        return self
