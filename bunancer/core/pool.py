"""ServerPool: the servers of one named pool and the snapshot the data plane selects from.

The data plane reads `routable`, an immutable tuple rebuilt whenever a server is added,
removed or changes state, so a selection never sees a half-changed set.
"""

from __future__ import annotations

from .algorithms import RoundRobin, make_selector
from .server import Server
from .stats import ServerStats


class ServerPool:
    __slots__ = ("name", "rejected", "routable", "selector", "servers")

    def __init__(self, name: str, algorithm: str = "round-robin") -> None:
        self.name = name
        self.servers: dict[str, Server] = {}
        self.selector: RoundRobin = make_selector(algorithm)
        self.routable: tuple[Server, ...] = ()
        self.rejected = ServerStats()  # requests of this pool that reached no server

    def add(self, server: Server) -> None:
        if server.id in self.servers:
            raise ValueError(f"server {server.id!r} is already in pool {self.name!r}")
        self.servers[server.id] = server
        self.rebuild()

    def remove(self, server_id: str) -> Server:
        server = self.servers.pop(server_id)
        self.rebuild()
        return server

    def rebuild(self) -> None:
        self.routable = tuple(s for s in self.servers.values() if s.routable)
        self.selector.update(self.routable)

    def pick(self, key: bytes | None = None, avoid: Server | None = None) -> Server | None:
        """Select a routable server; with `avoid`, prefer any other one (for a retry)."""
        routable = self.routable
        server = self.selector.pick(routable, key)
        if avoid is not None and server is avoid and len(routable) > 1:
            server = self.selector.pick(routable, key)
            if server is avoid:
                server = next(s for s in routable if s is not avoid)
        return server

    def __repr__(self) -> str:
        return f"<ServerPool {self.name} servers={len(self.servers)} routable={len(self.routable)}>"
