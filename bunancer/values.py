"""Values as people write them, in the config file, on the command line and in API bodies:
HOST:PORT, backend URLs, hosts, networks and status ranges, checked and split."""

from __future__ import annotations

import ipaddress

_NOT_IN_HOST = frozenset("/@?#[]")


def check_host(host: str) -> str:
    """A bare host name or IP address: no whitespace, control characters or URL parts."""
    if not host or len(host) > 255:
        raise ValueError("a host name or IP address of 1 to 255 characters")
    if any(c.isspace() or c in _NOT_IN_HOST or ord(c) < 32 or ord(c) == 127 for c in host):
        raise ValueError("a bare host name or IP address")
    return host


def networks(value: list[str]) -> list[str]:
    """CIDR networks (a ValueError names the bad one)."""
    for network in value:
        ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
    return value


def parse_hostport(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` or ``:PORT`` too) and check the port."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        host = default_host
    try:
        check_host(host)
    except ValueError:
        raise ValueError(f"invalid host {host!r}") from None
    return host, port


def parse_backend_url(text: str) -> tuple[str, int]:
    """Accept ``http://HOST:PORT``, ``https://HOST:PORT`` (TLS to the server: its pool's
    `tls`), ``tcp://HOST:PORT`` or a bare ``HOST:PORT``."""
    rest = text
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme not in ("http", "https", "tcp"):
            raise ValueError(
                f"unsupported scheme {scheme!r} in {text!r} (http://, https:// or tcp://)"
            )
        rest = rest.rstrip("/")
        if "/" in rest:
            raise ValueError(f"a backend address has no path: {text!r}")
    host, port = parse_hostport(rest)
    if port == 0:
        raise ValueError(f"a backend needs a port other than 0: {text!r}")
    return host, port


def parse_expect(text: str) -> tuple[tuple[int, int], ...]:
    """``"200-399"``, ``"200,204"`` or ``"200-299, 404"`` -> inclusive ranges."""
    ranges = []
    for part in text.split(","):
        part = part.strip()
        low, sep, high = part.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError(f"expected status ranges like '200-399' or '200,204', got {text!r}")
        start, end = int(low), int(high) if sep else int(low)
        if not 100 <= start <= end <= 599:
            raise ValueError(f"status range {part!r} is outside 100-599 or reversed")
        ranges.append((start, end))
    return tuple(ranges)
