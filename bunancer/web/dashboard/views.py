"""The data the dashboard's pages render: pools and servers with their figures, the shared
per-second summary, histories, the activity feed, and what the overview lists.

The overview's filter, sort and pools shown whole are in its URL query (`ServerFilter`),
which the live refresh (`?partial=1`) carries too: a reload, a link and a refresh all show
the same rows.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

from ...control.events import FEED_KINDS, SERVER_UPDATED, EventBus
from ...control.figures import STATES, pool_figures, server_figures
from ...control.records import PoolSettings, RegistryError
from ...control.registry import Registry
from ...control.telemetry import Telemetry
from ...core.stats import ServerStats, percentile
from ..app import HTTPError
from .format import check_schedule, event_text
from .stubs import StubDirectory, StubsByAddress, host_key

# What changes the picture outside the one-second rotation (the summary is computed again).
CHANGE_KINDS = (*FEED_KINDS, SERVER_UPDATED)
FEED = 30  # changes the overview's activity feed shows (the script keeps as many)
CHANGES = 50  # a server's own changes its page lists
HISTORY = 60  # seconds of per-second figures the pages start with (what the stats keep)


class Summaries:
    """The summary, computed at most once per stats rotation however many tabs are open, and
    again when a server or pool changed (so a page rendered right after a change shows it).

    `seq` counts the balancer's one-second rotations, so a page can line up per-second
    series: a jump of two means one second went by unseen (and was like the one before).
    `version` counts computations: a new one is worth sending even within the same second."""

    def __init__(self, registry: Registry, telemetry: Telemetry, bus: EventBus) -> None:
        self.registry = registry
        self.telemetry = telemetry
        self.seq = 0
        self.version = 0
        self._data: dict[str, Any] | None = None
        self._body = b""
        self._marker: object = None
        self._observed = 0.0
        # Never read as a stream: a non-empty queue just says "something changed".
        self._changes = bus.subscribe(CHANGE_KINDS, maxsize=1)

    def _rotation_marker(self) -> object:
        # Every rotation appends a new `Second` to every stats object: the newest one of any
        # stats that always exists tells whether a rotation happened since last time.
        candidates = itertools.chain(
            self.telemetry.listener_stats, (p.rejected for p in self.registry.pools.values())
        )
        for stats in candidates:
            if stats.seconds:
                return stats.seconds[-1]
        return None

    def current(self) -> tuple[int, dict[str, Any], bytes]:
        """(version, summary, summary as JSON)."""
        now = time.monotonic()
        marker = self._rotation_marker()
        rotated = self._data is None or (
            marker is not self._marker if marker is not None else now - self._observed >= 1.0
        )
        changed = self._changes.pending() > 0
        if not rotated and not changed:
            return self.version, self._data, self._body  # type: ignore[return-value]
        while self._changes.get_nowait() is not None:
            pass
        if rotated:
            # Rotations are a second apart: the time since the last look says how many passed.
            self.seq += 1 if self._data is None else max(1, round(now - self._observed))
            self._marker = marker
            self._observed = now
        self.version += 1
        data = self.telemetry.figures()
        data["seq"] = self.seq
        self._data = data
        self._body = orjson.dumps(data)
        return self.version, data, self._body


def server_history(stats: ServerStats, seconds: int = HISTORY) -> dict[str, list[Any]]:
    """Per-second rps, errors, p50 and p99 for the last `seconds` (oldest first)."""
    window = stats.last(seconds)
    pad = seconds - len(window)
    return {
        "rps": [0] * pad + [s.requests for s in window],
        "errors": [0] * pad + [s.errors for s in window],
        "p50": [None] * pad + [percentile(s.latency, 0.5) if s.requests else None for s in window],
        "p99": [None] * pad + [percentile(s.latency, 0.99) if s.requests else None for s in window],
    }


# -- what the overview lists: filter, sort, and a cut for big pools ---------------------------

# A pool's table lists this many rows (worst first) until "show all": a dozen rows is about a
# screen under the summary tiles, and a pool of 500 must not bury the pools after it.
OVERVIEW_ROWS = 12
STATE_FILTERS = ("all", "not-healthy", *STATES)
SORTS = {  # ?sort= value: its label in the toolbar
    "trouble": "trouble first",
    "name": "name",
    "state": "state",
    "errors": "errors",
    "p99": "p99",
    "rps": "req/s",
}
ORDERS = {  # how a cut table says which rows it lists
    "trouble": "trouble first",
    "name": "by name",
    "state": "worst state first",
    "errors": "most errors first",
    "p99": "slowest first",
    "rps": "busiest first",
}
# Worst first: what needs a look before what an operator switched off on purpose.
SEVERITY = {"dead": 0, "unhealthy": 1, "pending": 2, "draining": 3, "disabled": 4, "healthy": 5}


def _high_first(value: float | None) -> tuple[bool, float]:
    """Sort key: the biggest figure first, "no figure" (no answers) last."""
    return (value is None, -(value or 0.0))


# Every key ends in the server's position by name: pool_view lists servers by name, and
# sorted() is stable.
SORT_KEYS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "trouble": lambda s: (
        SEVERITY[s["state"]],
        _high_first(s["error_rate"]),
        _high_first(s["p99"]),
    ),
    "name": lambda s: 0,
    "state": lambda s: SEVERITY[s["state"]],
    "errors": lambda s: _high_first(s["error_rate"]),
    "p99": lambda s: _high_first(s["p99"]),
    "rps": lambda s: _high_first(s["rps"]),
}


def _first(query: dict[str, list[str]], name: str) -> str:
    values = query.get(name) or [""]
    return values[0].strip()


@dataclass(frozen=True)
class ServerFilter:
    """The overview's filter and sort, read from and written to its URL query
    (`?state=not-healthy&q=web&sort=errors&all=POOL`), so a reload, a link and the live
    refresh (`?partial=1`) all show the same rows. Defaults are left out of links."""

    state: str = "all"  # "all", "not-healthy" or one state
    text: str = ""  # a piece of the id or the address, any case
    sort: str = "trouble"
    full: tuple[str, ...] = ()  # pools listed whole ("show all")

    @classmethod
    def from_query(cls, query: dict[str, list[str]]) -> ServerFilter:
        state = _first(query, "state")
        sort = _first(query, "sort")
        return cls(
            state=state if state in STATE_FILTERS else "all",
            text=_first(query, "q")[:100],
            sort=sort if sort in SORTS else "trouble",
            full=tuple(sorted({name for name in query.get("all", []) if name})),
        )

    @property
    def changed(self) -> bool:
        """Whether anything differs from the plain overview (a Reset link is worth showing)."""
        return self != ServerFilter()

    @property
    def active(self) -> bool:
        """Whether some servers may be left out (not counting the cut of big pools)."""
        return self.state != "all" or bool(self.text)

    def matches(self, server: dict[str, Any]) -> bool:
        if self.state == "not-healthy" and server["state"] == "healthy":
            return False
        if self.state not in ("all", "not-healthy") and server["state"] != self.state:
            return False
        needle = self.text.lower()
        return not needle or needle in server["id"].lower() or needle in server["address"].lower()

    def rows(self, pool: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
        """(the rows the pool's table shows, how many servers match in all)."""
        matching = sorted(filter(self.matches, pool["servers"]), key=SORT_KEYS[self.sort])
        if pool["name"] in self.full:
            return matching, len(matching)
        return matching[:OVERVIEW_ROWS], len(matching)

    def link(self, *, show: str | None = None, hide: str | None = None, **changes: str) -> str:
        """The overview's URL with this filter, some of it changed; `show` and `hide` list
        a pool whole or cut it again."""
        full = set(self.full) - {hide} | ({show} if show else set())
        plain = ServerFilter()
        defaults = {"state": plain.state, "q": plain.text, "sort": plain.sort}
        settings = {"state": self.state, "q": self.text, "sort": self.sort, **changes}
        query = [(k, v) for k, v in settings.items() if v != defaults[k]]
        query += [("all", name) for name in sorted(full)]
        return "/?" + urlencode(query) if query else "/"


# -- pools and servers as the pages show them ------------------------------------------------


class Views:
    """Pools and servers with their figures, stubs and health, read from the registry."""

    def __init__(self, registry: Registry, bus: EventBus, stubs: StubDirectory) -> None:
        self.registry = registry
        self.bus = bus
        self.stubs = stubs

    def pool(self, name: str, stubs: StubsByAddress) -> dict[str, Any]:
        """A pool's figures, settings and servers (each with its figures and history)."""
        registry = self.registry
        pool = registry.pools[name]
        now = registry.loop.time()
        records = registry.in_order(name)
        figures, _ = pool_figures(pool, records, now)
        servers = []
        for record in records:
            server = record.server
            server_data, _ = server_figures(record, now)
            server_data.update(
                {
                    "id": server.id,
                    "pool": name,
                    "key": f"{name}/{server.id}",
                    "address": server.address,
                    "since": now - record.health.since,
                    "history": server.stats.history(HISTORY),
                    "stub": stubs.get((host_key(server.host), server.port)),
                    "removing": record.removing,
                    # Health settings of its own (a stub's /health path) over the pool's.
                    "overrides": record.overrides,
                }
            )
            servers.append(server_data)
        settings = registry.settings.get(name, PoolSettings())
        states = dict.fromkeys(STATES, 0)
        for row in servers:
            states[row["state"]] += 1
        return {
            "name": name,
            **figures,
            "states": states,
            "servers": servers,
            "health": settings.health.model_dump(),
            "source": settings.source,
        }

    async def pools(self) -> list[dict[str, Any]]:
        """Every pool, in the registry's order."""
        stubs = await self.stubs.by_address()
        return [self.pool(name, stubs) for name in self.registry.pools]

    async def server(self, pool_name: str, server_id: str) -> dict[str, Any]:
        """A server with its pool, recent checks, per-second series, health settings (the
        pool's and its own overrides), when it is checked next and its own changes."""
        registry = self.registry
        try:
            record = registry.record(pool_name, server_id)
        except RegistryError as error:
            raise HTTPError(404, error.message) from None
        pool = self.pool(pool_name, await self.stubs.by_address())
        checks = [
            {
                "at": self.wall(check.at),
                "ok": check.ok,
                "detail": check.detail,
                "latency": check.latency,
            }
            for check in reversed(record.health.history)
        ]
        health = registry.settings[pool_name].health
        override = record.overrides
        merged = health.merged(override) if override else health
        next_at = registry.checker.next_check_at(record)
        changes = self.bus.activity.of_server(pool_name, server_id, CHANGES)
        return {
            "server": next(s for s in pool["servers"] if s["id"] == server_id),
            "pool": pool,
            "checks": checks,
            "series": server_history(record.server.stats),
            "health": merged.model_dump(),
            "overrides": sorted(override or {}),
            "schedule": check_schedule(merged.model_dump()),
            "next_check": None if next_at is None else max(next_at - registry.loop.time(), 0.0),
            "changes": [
                {"at": e.at, "kind": e.kind, "text": event_text(e)} for e in reversed(changes)
            ],
        }

    def feed(self) -> list[dict[str, Any]]:
        """The newest changes of the whole balancer, newest first (the overview's feed)."""
        return [
            {"at": e.at, "kind": e.kind, "text": event_text(e)}
            for e in reversed(self.bus.activity.recent(FEED))
        ]

    def wall(self, loop_time: float) -> float:
        """A loop-clock time (states and checks use the monotonic clock) as wall time."""
        return time.time() - (self.registry.loop.time() - loop_time)
