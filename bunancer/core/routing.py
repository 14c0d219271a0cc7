"""Route table: Host (exact or ``*.suffix``) and path-prefix rules choose a pool.

Rules are tried in order and the first match wins; a request no rule matches goes to the
listener's default pool. Hosts compare case-insensitively and without the port.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Route(Generic[T]):
    target: T
    host: bytes | None = None  # b"example.com" or b"*.example.com"
    path_prefix: bytes = b"/"

    def matches(self, host: bytes, path: bytes) -> bool:
        if self.host is not None:
            if self.host.startswith(b"*."):
                # "*.example.com" matches "a.example.com" and "a.b.example.com", not the apex.
                if not host.endswith(self.host[1:]):
                    return False
            elif host != self.host:
                return False
        return path.startswith(self.path_prefix)


def normalise_host(host: bytes | None) -> bytes:
    """Lower-case, port removed, IPv6 brackets kept: ``Example.COM:8080`` -> ``example.com``."""
    if not host:
        return b""
    host = host.lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end != -1 else host
    colon = host.rfind(b":")
    return host[:colon] if colon != -1 else host


class RouteTable(Generic[T]):
    """Ordered rules plus a default; `match` is a short loop, nothing when there are no rules."""

    __slots__ = ("default", "routes")

    def __init__(self, routes: Sequence[Route[T]], default: T) -> None:
        self.routes = tuple(
            Route(r.target, r.host.lower() if r.host else None, r.path_prefix) for r in routes
        )
        self.default = default

    def match(self, host: bytes | None, path: bytes) -> T:
        if not self.routes:
            return self.default
        bare = normalise_host(host)
        for route in self.routes:
            if route.matches(bare, path):
                return route.target
        return self.default
