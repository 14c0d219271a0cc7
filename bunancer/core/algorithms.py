"""Selection algorithms: small sans-I/O objects that pick a server from a snapshot.

A `Selector` sees the pool's immutable tuple of routable servers (rebuilt when the pool
changes) and an optional request key; it returns one of them or None. Selectors hold
only their own small state (a counter here), so they are testable without sockets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

S = TypeVar("S")


class Selector(Protocol[S]):
    name: str

    def pick(self, servers: Sequence[S], key: bytes | None = None) -> S | None: ...

    def update(self, servers: Sequence[S]) -> None:
        """Called when the routable set changes (rebuild any per-set state)."""


class RoundRobin:
    """Each routable server in turn."""

    name = "round-robin"
    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def pick(self, servers: Sequence[S], key: bytes | None = None) -> S | None:
        count = len(servers)
        if not count:
            return None
        index = self._next
        if index >= count:
            index = 0
        self._next = index + 1
        return servers[index]

    def update(self, servers: Sequence[S]) -> None:
        if self._next >= len(servers):
            self._next = 0


ALGORITHMS: dict[str, type[RoundRobin]] = {RoundRobin.name: RoundRobin}


def make_selector(name: str) -> RoundRobin:
    try:
        return ALGORITHMS[name]()
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}") from None
