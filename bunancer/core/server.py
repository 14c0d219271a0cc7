"""Server: one upstream endpoint of a pool, with its connection pool and live counters."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .upstream import UpstreamPool


class Server:
    """An upstream endpoint: address, weight, whether it takes traffic, in-flight count."""

    __slots__ = (
        "connections",
        "host",
        "id",
        "in_flight",
        "pool_name",
        "port",
        "routable",
        "weight",
    )

    def __init__(
        self, id: str, host: str, port: int, weight: int = 1, pool_name: str = "default"
    ) -> None:
        self.id = id
        self.host = host
        self.port = port
        self.weight = weight
        self.pool_name = pool_name
        self.routable = True
        self.in_flight = 0
        self.connections: UpstreamPool | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __repr__(self) -> str:
        return f"<Server {self.pool_name}/{self.id} {self.address} in_flight={self.in_flight}>"
