"""The dashboard: server-rendered pages kept live by SSE, and the actions behind their forms.

Pages (`/`, `/flow`, `/servers/{pool}/{id}`, `/settings`) are rendered by Jinja2 with their
data and read fine without JavaScript; `static/dashboard.js` then keeps them live from
`/events` (`sse.py`): bus events (state changes with reasons, servers and pools coming and
going, the one-second `stats.tick` that drives the flow animation) plus a per-second summary
of every figure shown, computed once for all tabs and only while a tab is open. When the
set of servers changes, the script fetches the page's content again (`?partial=1`), so the
markup has one source: the templates. What a page lists (the overview's filter, sort and
pools shown whole; the flow view's expanded pools) is in its URL query, which that fetch
carries too: a reload, a link and a live refresh all show the same.

Reading needs nothing; every change needs a login with the admin token (session cookie and
CSRF token: `session.py`). Actions call the registry directly (then `context.save()`), or
the stubs SDK in a worker thread (it blocks). Static files are served from the package with
an ETag and content-hashed URLs.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, get_args
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import orjson
from jinja2 import Environment, PackageLoader, StrictUndefined

from ..config import Algorithm
from ..core.events import (
    FEED_KINDS,
    POOL_ADDED,
    POOL_REMOVED,
    POOL_UPDATED,
    SERVER_ADDED,
    SERVER_CHECKED,
    SERVER_REMOVED,
    SERVER_STATE,
    SERVER_UPDATED,
    STATS_TICK,
    Event,
    EventBus,
)
from ..core.registry import PoolSettings, Registry, RegistryError, in_order
from ..core.stats import ServerStats, percentile
from ..core.telemetry import STATES, Telemetry, pool_figures, server_figures
from . import sse
from .api import _merged
from .auth import token_matches
from .http import (
    HTML,
    JSON,
    AnyResponse,
    App,
    CallNext,
    HTTPError,
    Request,
    Response,
    StreamResponse,
    json_response,
)
from .router import Router
from .session import Session, Sessions, clear_cookie, cookie_name, set_cookie

log = logging.getLogger("bunancer.dashboard")

Saver = Callable[[], Awaitable[None]]

ALGORITHMS: tuple[str, ...] = get_args(Algorithm)
LIVE_KINDS = (
    SERVER_ADDED,
    SERVER_REMOVED,
    SERVER_STATE,
    SERVER_UPDATED,
    POOL_ADDED,
    POOL_REMOVED,
    POOL_UPDATED,
    STATS_TICK,
)
# What changes the picture outside the one-second rotation (the summary is computed again).
CHANGE_KINDS = (*FEED_KINDS, SERVER_UPDATED)
FEED = 30  # changes the overview's activity feed shows (the script keeps as many)
CHANGES = 50  # a server's own changes its page lists
HISTORY = 60  # seconds of per-second figures the pages start with (what the stats keep)
LOG_FOLLOWERS = 8  # live stub logs open at once (each holds a thread)
STUB_CACHE = 1.5  # seconds the list of stubs is reused between pages
_LOG_BUFFER = 2000  # log lines held for a page that reads slowly
SAFE_METHODS = frozenset({"GET", "HEAD"})
HEALTH_FIELDS = {  # the health settings the Settings page edits, and their types
    "path": str,
    "expect": str,
    "interval": float,
    "timeout": float,
    "rise": int,
    "fall": int,
    "dead_after": int,
}


@dataclass
class DashboardContext:
    """What the dashboard reads and acts on; built by the app."""

    registry: Registry
    telemetry: Telemetry
    bus: EventBus
    token: str
    state_dir: str
    save: Saver  # make registry changes durable
    api_url: str = ""  # the registry API, for stubs to register ("" = the SDK's default)
    routes: list[dict[str, Any]] = field(default_factory=list)  # in the order they are tried
    api_address: str = ""


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


# -- formatting (templates and the script show figures the same way) -------------------------


def fmt_rps(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 10000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


def fmt_pct(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "0%"
    if value < 0.001:
        return "<0.1%"
    return f"{value * 100:.1f}%" if value < 0.1 else f"{value * 100:.0f}%"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "—"
    ms = value * 1000
    # Thresholds sit where rounding would carry over: 0.9996 ms is "1.0 ms", not "1000 µs".
    if ms < 0.9995:
        return f"{ms * 1000:.0f} µs"
    if ms < 9.95:
        return f"{ms:.1f} ms"
    if ms < 9999.5:
        return f"{ms:.0f} ms"
    return f"{ms / 1000:.1f} s"


def fmt_ago(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return "just now"
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def fmt_duration(seconds: float) -> str:
    """``12s``, ``3m 4s``, ``1.5h`` (as fmtFor in the script)."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{int(seconds)}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m {int(seconds % 60)}s"
    return f"{seconds / 3600:.1f}h"


def fmt_clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


def event_text(event: Event) -> str:
    """One line for the activity feed (the script writes live lines the same way)."""
    data = event.data
    if event.kind == SERVER_STATE:
        return f"{data['pool']}/{data['id']}: {data['old']} → {data['new']} ({data['reason']})"
    if event.kind == SERVER_ADDED:
        return f"{data['pool']}/{data['id']} added at {data['address']}"
    if event.kind == SERVER_REMOVED:
        return f"{data['pool']}/{data['id']} removed ({data['reason']})"
    if event.kind == POOL_ADDED:
        return f"pool {data['name']} added ({data['algorithm']})"
    if event.kind == POOL_REMOVED:
        return f"pool {data['name']} removed"
    if event.kind == POOL_UPDATED:
        return f"pool {data['name']} updated: {data['algorithm']}, {data['routable']} routable"
    return event.kind


def check_schedule(health: dict[str, Any]) -> str:
    """When checks run, in words: the interval depends on the state (states.py)."""
    return (
        f"every {health['interval']:g} s while healthy, {health['fast_interval']:g} s while a "
        f"rise or fall streak is under way; while down from {health['down_interval']:g} s, "
        f"x{health['backoff']:g} after each failure up to {health['max_down_interval']:g} s; "
        f"every {health['dead_interval']:g} s once dead (intervals +-"
        f"{health['jitter'] * 100:g}%)"
    )


def points(values: list[Any], width: float, height: float, top: float | None = None) -> list[str]:
    """SVG polyline `points` for a series scaled into width x height; a None value breaks
    the line, so the result is a list of segments (the script draws charts the same way)."""
    numbers = [v for v in values if v is not None]
    top = top if top is not None else max(numbers, default=0)
    scale = (height - 2) / top if top else 0.0
    step = width / max(len(values) - 1, 1)
    segments: list[str] = []
    current: list[str] = []
    for index, value in enumerate(values):
        if value is None:
            if current:
                segments.append(" ".join(current))
            current = []
            continue
        current.append(f"{index * step:.1f},{height - 1 - value * scale:.1f}")
    if current:
        segments.append(" ".join(current))
    return segments


# -- stubs -------------------------------------------------------------------------------------


class StubDirectory:
    """The stubs of the balancer's state dir, matched to servers by address. The SDK
    blocks (files, /proc, control sockets), so every call runs in a worker thread."""

    def __init__(self, state_dir: str) -> None:
        from stubs.sdk import StubManager  # the stubs package ships beside bunancer

        self.manager = StubManager(state_dir)
        self._cache: dict[tuple[str, int], dict[str, Any]] = {}
        self._at = -STUB_CACHE
        self._lock = asyncio.Lock()
        self.followers = 0

    def invalidate(self) -> None:
        self._at = -STUB_CACHE

    async def run(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: call(*args, **kwargs))

    async def by_address(self) -> dict[tuple[str, int], dict[str, Any]]:
        async with self._lock:  # one listing at a time; the others reuse it
            if time.monotonic() - self._at < STUB_CACHE:
                return self._cache
            try:
                self._cache = await self.run(self._list)
            except Exception:  # a broken state dir must not break the pages
                log.exception("listing stubs failed")
                self._cache = {}
            self._at = time.monotonic()
            return self._cache

    def _list(self) -> dict[tuple[str, int], dict[str, Any]]:
        from stubs.sdk import StubError

        found: dict[tuple[str, int], dict[str, Any]] = {}
        for stub in self.manager.list():
            try:
                behaviour = stub.behaviour()
                described, settings = behaviour.describe(), behaviour.to_dict()
            except StubError:
                described, settings = "?", {}
            found[(_host_key(stub.host), stub.port)] = {
                "id": stub.id,
                "pid": stub.pid,
                "pool": stub.pool,
                "behaviour": described,
                "settings": settings,
            }
        return found


def _host_key(host: str) -> str:
    return "127.0.0.1" if host in ("localhost", "127.0.0.1") else host


async def follow_log(
    directory: StubDirectory, stub_id: str, lines: int = 50
) -> AsyncIterator[str | None]:
    """Lines of a stub's access log as they are written (`StubManager.follow` runs in a
    thread of its own: it blocks while it waits). None marks lines skipped because the
    reader fell more than `_LOG_BUFFER` lines behind: memory stays bounded."""
    loop = asyncio.get_running_loop()
    buffer: deque[str] = deque(maxlen=_LOG_BUFFER)  # appended by the thread, drained here
    wake = asyncio.Event()
    stop = threading.Event()
    outcome: list[BaseException | None] = []  # set by the thread when it ends
    skipped = [0]

    def pump() -> None:
        try:
            for line in directory.manager.follow(stub_id, lines, stop=stop.is_set):
                if stop.is_set():
                    return
                if len(buffer) == buffer.maxlen:
                    skipped[0] += 1  # the deque drops the oldest line
                buffer.append(line)
                if len(buffer) == 1:  # it was empty: the reader may be waiting
                    loop.call_soon_threadsafe(wake.set)
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)
        finally:
            if not outcome:
                outcome.append(None)
            loop.call_soon_threadsafe(wake.set)

    thread = threading.Thread(target=pump, name=f"dashboard-log-{stub_id}", daemon=True)
    thread.start()
    reported = 0
    try:
        while True:
            wake.clear()
            while buffer:
                if skipped[0] != reported:
                    reported = skipped[0]
                    yield None
                yield buffer.popleft()
            if outcome:
                if buffer:
                    continue
                if outcome[0] is not None:
                    raise outcome[0]
                return
            await wake.wait()
    finally:
        stop.set()  # the thread sees it within one poll (0.1 s) and ends


# -- static files ------------------------------------------------------------------------------

_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    etag: str
    version: str
    content_type: str


def load_assets() -> dict[str, Asset]:
    """The files of `static/`, read once: they are part of the installed package."""
    assets: dict[str, Asset] = {}
    for entry in resources.files("bunancer.web").joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in _TYPES:
            continue
        body = entry.read_bytes()
        version = hashlib.sha256(body).hexdigest()[:16]
        assets[entry.name] = Asset(body, f'"{version}"', version, _TYPES[suffix])
    return assets


def _etag_matches(header: str, etag: str) -> bool:
    if header.strip() == "*":
        return True
    candidates = (tag.strip().removeprefix("W/") for tag in header.split(","))
    return etag in candidates


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


# -- layout of the flow graph --------------------------------------------------------------------

# A pool of more servers than this is drawn as one node (a click shows them all): twelve
# rows, about 770 px, is most of a screen.
FLOW_POOL_MAX = 12
# More servers than this in all (24 rows, about 1,600 px) do not fit a screen even at half
# size, where names are still legible: then pools of more than FLOW_KEEP servers are collapsed
# too (smaller ones stay drawn: their node would be about as tall as their servers).
FLOW_CROWDED = 24
FLOW_KEEP = 4

BALANCER = (150.0, 76.0)
POOL = (176.0, 60.0)
SERVER = (250.0, 52.0)
GROUP = (300.0, 136.0)  # a collapsed pool's node
TOGGLE = (176.0, 26.0)  # "collapse" under an expanded big pool
ROW = 64.0
GROUP_GAP = 28.0
MARGIN = 24.0
COLUMNS = (24.0, 300.0, 600.0)


def _curve(x1: float, y1: float, x2: float, y2: float) -> str:
    middle = (x1 + x2) / 2
    return f"C {middle:.1f},{y1:.1f} {middle:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"


def collapsible(pools: list[dict[str, Any]]) -> set[str]:
    """The pools the flow view draws as one node unless asked to expand them."""
    total = sum(len(pool["servers"]) for pool in pools)
    limit = FLOW_KEEP if total > FLOW_CROWDED else FLOW_POOL_MAX
    return {pool["name"] for pool in pools if len(pool["servers"]) > limit}


def flow_link(expanded: frozenset[str], pool: str) -> str:
    """The flow view's URL with `pool` expanded, or collapsed again if it is."""
    names = sorted(expanded ^ {pool})
    return "/flow?" + urlencode([("expand", name) for name in names]) if names else "/flow"


def share_spread(servers: list[dict[str, Any]]) -> dict[str, float] | None:
    """The busiest and the quietest healthy server's share of the pool's requests in the
    last second, and the share each would have if the pool were even; None without
    requests (the script computes the same: shareSpread)."""
    total = sum(server["rps"] for server in servers)
    healthy = [server["rps"] for server in servers if server["state"] == "healthy"]
    if not total or not healthy:
        return None
    shares = [rps / total for rps in healthy]
    return {"max": max(shares), "min": min(shares), "even": 1 / len(shares)}


def spread_text(spread: dict[str, float] | None) -> str:
    if spread is None:
        return "no requests in the last second"
    return (
        f"busiest {fmt_pct(spread['max'])} · quietest {fmt_pct(spread['min'])}"
        f" · even {fmt_pct(spread['even'])}"
    )


def state_bar(states: dict[str, int], width: float) -> list[dict[str, Any]]:
    """A stacked bar of the pool's servers by state: one segment per state, in STATES order
    (width 0 when none, so the script can resize them in place)."""
    total = sum(states.values())
    segments, x = [], 0.0
    for state in STATES:
        w = width * states[state] / total if total else 0.0
        segments.append({"state": state, "x": round(x, 1), "w": round(w, 1)})
        x += w
    return segments


def flow_layout(
    pools: list[dict[str, Any]], expanded: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Positions of the balancer, pool and server nodes (left to right) and the paths
    between them. A server's `route` runs from the balancer through its pool: the path
    the dots of its requests travel. A collapsed pool has one `group` node instead of its
    servers, with one route for the whole pool's dots."""
    big = collapsible(pools)
    y = MARGIN
    laid_pools: list[dict[str, Any]] = []
    for pool in pools:
        name = pool["name"]
        collapsed = name in big and name not in expanded
        node: dict[str, Any] = {"x": COLUMNS[1], "w": POOL[0], "h": POOL[1], "pool": pool}
        node["toggle"] = None
        node["group"] = None
        servers = []
        if collapsed:
            block = GROUP[1] + 8
            node["y"] = y + block / 2 - POOL[1] / 2
            node["group"] = {
                "x": COLUMNS[2],
                "y": y + (block - GROUP[1]) / 2,
                "w": GROUP[0],
                "h": GROUP[1],
                "bar": state_bar(pool["states"], GROUP[0] - 28),  # 14 px padding each side
                "spread": spread_text(share_spread(pool["servers"])),
                "link": flow_link(expanded, name),
            }
        else:
            rows = max(len(pool["servers"]), 1)
            block = rows * ROW
            # A long expanded pool keeps its node level with its first servers, where the
            # view goes when it is expanded; a short one centres it as before.
            block_middle = min(block, FLOW_POOL_MAX * ROW) / 2
            node["y"] = y + block_middle - POOL[1] / 2
            for index, server in enumerate(pool["servers"]):
                server_y = y + index * ROW + (ROW - SERVER[1]) / 2
                servers.append(
                    {
                        "x": COLUMNS[2],
                        "y": server_y,
                        "w": SERVER[0],
                        "h": SERVER[1],
                        "server": server,
                    }
                )
            if name in big:
                block = max(block, node["y"] + POOL[1] + 8 + TOGGLE[1] - y)
                node["toggle"] = {
                    "x": COLUMNS[1],
                    "y": node["y"] + POOL[1] + 8,
                    "w": TOGGLE[0],
                    "h": TOGGLE[1],
                    "link": flow_link(expanded, name),
                }
        node["servers"] = servers
        laid_pools.append(node)
        y += block + GROUP_GAP
    height = max(y - GROUP_GAP + MARGIN, BALANCER[1] + 2 * MARGIN)
    balancer: dict[str, Any] = {
        "x": COLUMNS[0],
        "y": height / 2 - BALANCER[1] / 2,
        "w": BALANCER[0],
        "h": BALANCER[1],
    }
    bx, by = balancer["x"] + balancer["w"], balancer["y"] + balancer["h"] / 2
    for node in laid_pools:
        px, py = node["x"], node["y"] + node["h"] / 2
        node["edge"] = f"M {bx:.1f},{by:.1f} " + _curve(bx, by, px, py)
        exit_x = px + node["w"]
        targets = node["servers"] + ([node["group"]] if node["group"] else [])
        for target in targets:
            sx, sy = target["x"], target["y"] + target["h"] / 2
            target["edge"] = f"M {exit_x:.1f},{py:.1f} " + _curve(exit_x, py, sx, sy)
            target["route"] = f"{node['edge']} L {exit_x:.1f},{py:.1f} " + _curve(
                exit_x, py, sx, sy
            )
    wide = any(node["group"] for node in laid_pools)
    width = COLUMNS[2] + (GROUP[0] if wide else SERVER[0]) + MARGIN
    return {
        "width": width,
        "height": height,
        "balancer": balancer,
        "pools": laid_pools,
        "expanded": sorted(expanded & big),
    }


# -- requests and responses ----------------------------------------------------------------------


def _form(request: Request) -> dict[str, str]:
    if isinstance(request.data, dict):
        return request.data
    return {}


def _parse_form(request: Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded" or not request.body:
        return {}
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, "form data must be UTF-8") from None
    return {name: values[0] for name, values in parse_qs(text, keep_blank_values=True).items()}


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _safe_path(value: str | None, default: str = "/") -> str:
    """A same-site path to go back to (never another host: no open redirect)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


def _redirect(location: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(303, b"", [("Location", location), *(headers or [])])


def _segment(value: str) -> str:
    return quote(value, safe="")


SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
)


# -- the app -------------------------------------------------------------------------------------


class Dashboard:
    """The dashboard's state: templates, assets, sessions, stubs and the shared summary."""

    def __init__(self, context: DashboardContext) -> None:
        self.context = context
        self.registry = context.registry
        self.sessions = Sessions()
        self.assets = load_assets()
        self.summaries = Summaries(context.registry, context.telemetry, context.bus)
        self.frames = sse.FrameCache()
        self.stubs = StubDirectory(context.state_dir)
        self.env = Environment(
            loader=PackageLoader("bunancer.web", "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            rps=fmt_rps,
            pct=fmt_pct,
            ms=fmt_ms,
            ago=fmt_ago,
            clock=fmt_clock,
            duration=fmt_duration,
            seg=_segment,
        )
        self.env.globals.update(
            static=self.static_url, states=STATES, points=points, algorithms=ALGORITHMS
        )

    # -- helpers -------------------------------------------------------------------------------

    def static_url(self, name: str) -> str:
        asset = self.assets.get(name)
        return f"/static/{name}?v={asset.version}" if asset else f"/static/{name}"

    def session(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(cookie_name(request.headers.get("host"))))

    def require_session(self, request: Request) -> Session:
        session = self.session(request)
        if session is None:
            raise HTTPError(403, "log in with the admin token first")
        return session

    def render(
        self,
        request: Request,
        content: str,
        status: int = 200,
        *,
        title: str,
        page: str,
        **data: Any,
    ) -> Response:
        """A page: `content` inside the layout, or alone for `?partial=1` (live refresh)."""
        session = self.session(request)
        data.update(
            user=session is not None,
            csrf=session.csrf if session else "",
            path=request.path,
            page=page,
            title=title,
        )
        if request.query.get("partial") == ["1"]:
            html = self.env.get_template(content).render(data)
        else:
            flashes = session.take_flashes() if session else []
            html = self.env.get_template("layout.html").render(
                data, content=content, flashes=flashes
            )
        headers = [("Cache-Control", "no-store")]  # pages carry the CSRF token
        return Response(status, html, headers, HTML)

    def pool_view(self, name: str, stubs: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
        registry = self.registry
        pool = registry.pools[name]
        now = registry.loop.time()
        figures, _ = pool_figures(pool, now)
        servers = []
        for server in in_order(pool):
            server_data, _ = server_figures(server, now)
            server_data.update(
                {
                    "id": server.id,
                    "pool": name,
                    "key": f"{name}/{server.id}",
                    "address": server.address,
                    "since": now - server.health.since,
                    "history": server.stats.history(HISTORY),
                    "stub": stubs.get((_host_key(server.host), server.port)),
                    "removing": server in registry.removing,
                    # Health settings of its own (a stub's /health path) over the pool's.
                    "overrides": registry.overrides.get(server, {}),
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

    async def pools_view(self) -> list[dict[str, Any]]:
        stubs = await self.stubs.by_address()
        return [self.pool_view(name, stubs) for name in self.registry.pools]

    def boot(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The data a page's script starts from (then SSE takes over)."""
        _, summary, _ = self.summaries.current()
        newest = self.context.bus.recent(None, limit=1)
        return {
            "summary": summary,
            "seq": summary["seq"],
            # The script's EventSource resumes from here: nothing between render and connect
            # is lost.
            "last_id": newest[-1].id if newest else 0,
            **(extra or {}),
        }

    def wall(self, loop_time: float) -> float:
        """A loop-clock time (states and checks use the monotonic clock) as wall time."""
        return time.time() - (self.registry.loop.time() - loop_time)


def build_dashboard(context: DashboardContext) -> App:
    dash = Dashboard(context)
    registry = context.registry
    router: Router[Any] = Router()

    # -- pages ---------------------------------------------------------------------------------

    @router.get("/")
    async def overview(request: Request) -> Response:
        pools = await dash.pools_view()
        _, summary, _ = dash.summaries.current()
        view = ServerFilter.from_query(request.query)
        for pool in pools:
            pool["rows"], pool["matching"] = view.rows(pool)
        feed = [
            {"at": e.at, "kind": e.kind, "text": event_text(e)}
            for e in reversed(context.bus.activity.recent(FEED))
        ]
        histories = {server["key"]: server["history"] for pool in pools for server in pool["rows"]}
        return dash.render(
            request,
            "overview.html",
            title="Overview",
            page="overview",
            pools=pools,
            summary=summary,
            feed=feed,
            view=view,
            shown=sum(len(pool["rows"]) for pool in pools),
            listed_of=sum(len(pool["servers"]) for pool in pools),
            state_filters=STATE_FILTERS,
            sorts=SORTS,
            orders=ORDERS,
            rows_max=OVERVIEW_ROWS,
            boot=dash.boot({"histories": histories}),
        )

    @router.get("/flow")
    async def flow(request: Request) -> Response:
        pools = await dash.pools_view()
        _, summary, _ = dash.summaries.current()
        expanded = frozenset(request.query.get("expand", [])) & set(registry.pools)
        return dash.render(
            request,
            "flow.html",
            title="Flow",
            page="flow",
            layout=flow_layout(pools, expanded),
            summary=summary,
            pools=pools,
            boot=dash.boot(),
        )

    @router.get("/routing")
    async def routing(request: Request) -> Response:
        return dash.render(
            request,
            "routing.html",
            title="Routing",
            page="routing",
            listeners=context.telemetry.listeners_view(),
            routes=context.routes,
            pools=sorted(registry.pools),
            api_address=context.api_address,
            boot={},
        )

    @router.get("/settings")
    async def settings(request: Request) -> Response:
        pools = await dash.pools_view()
        return dash.render(
            request, "settings.html", title="Settings", page="settings", pools=pools, boot={}
        )

    async def server_data(pool_name: str, server_id: str) -> dict[str, Any]:
        try:
            server = registry.server(pool_name, server_id)
        except RegistryError as error:
            raise HTTPError(404, error.message) from None
        stubs = await dash.stubs.by_address()
        pool = dash.pool_view(pool_name, stubs)
        data = next(s for s in pool["servers"] if s["id"] == server_id)
        checks = [
            {
                "at": dash.wall(check.at),
                "ok": check.ok,
                "detail": check.detail,
                "latency": check.latency,
            }
            for check in reversed(server.health.history)
        ]
        health = registry.settings[pool_name].health
        override = registry.overrides.get(server)
        merged = health.merged(override) if override else health
        next_at = registry.checker.next_check_at(server)
        changes = context.bus.activity.of_server(pool_name, server_id, CHANGES)
        return {
            "server": data,
            "pool": pool,
            "checks": checks,
            "series": server_history(server.stats),
            # What this server is checked with: the pool's settings and its own overrides.
            "health": merged.model_dump(),
            "overrides": sorted(override or {}),
            "schedule": check_schedule(merged.model_dump()),
            "next_check": None if next_at is None else max(next_at - registry.loop.time(), 0.0),
            "changes": [
                {"at": e.at, "kind": e.kind, "text": event_text(e)} for e in reversed(changes)
            ],
        }

    @router.get("/servers/{pool}/{id}")
    async def server_page(request: Request) -> Response:
        data = await server_data(str(request.params["pool"]), str(request.params["id"]))
        server = data["server"]
        return dash.render(
            request,
            "server.html",
            title=f"{server['pool']}/{server['id']}",
            page="server",
            boot=dash.boot({"key": server["key"], "series": data["series"]}),
            **data,
        )

    @router.get("/panels/servers/{pool}/{id}")
    async def server_panel(request: Request) -> Response:
        data = await server_data(str(request.params["pool"]), str(request.params["id"]))
        request.query["partial"] = ["1"]
        return dash.render(request, "panel_server.html", title="", page="panel", **data)

    @router.get("/panels/pools/{pool}")
    async def pool_panel(request: Request) -> Response:
        name = str(request.params["pool"])
        if name not in registry.pools:
            raise HTTPError(404, f"no pool {name!r}")
        pool = dash.pool_view(name, await dash.stubs.by_address())
        request.query["partial"] = ["1"]
        return dash.render(request, "panel_pool.html", title="", page="panel", pool=pool)

    # -- login ---------------------------------------------------------------------------------

    @router.get("/login")
    async def login_form(request: Request) -> Response:
        after = _safe_path((request.query.get("next") or ["/"])[0])
        return dash.render(
            request, "login.html", title="Log in", page="login", next=after, error="", boot={}
        )

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = _form(request)
        after = _safe_path(form.get("next"))
        # token_matches compares in constant time; the form's field plays the bearer token.
        if not token_matches(context.token, f"Bearer {form.get('token', '').strip()}"):
            return dash.render(
                request,
                "login.html",
                403,
                title="Log in",
                page="login",
                next=after,
                error="That is not the admin token.",
                boot={},
            )
        dash.sessions.delete(request.cookies.get(cookie_name(request.headers.get("host"))))
        session = dash.sessions.create()
        session.flash("Logged in: actions are enabled.")
        name = cookie_name(request.headers.get("host"))
        return _redirect(after, [("Set-Cookie", set_cookie(name, session, dash.sessions.ttl))])

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        name = cookie_name(request.headers.get("host"))
        dash.sessions.delete(request.cookies.get(name))
        return _redirect("/", [("Set-Cookie", clear_cookie(name))])

    # -- live ----------------------------------------------------------------------------------

    @router.get("/events")
    async def events(request: Request) -> StreamResponse:
        kinds = list(LIVE_KINDS)
        if request.query.get("checks") == ["1"]:
            kinds.append(SERVER_CHECKED)
        after = sse.last_event_id(request.headers, request.query)
        subscription, gap = sse.open_subscription(context.bus, kinds, after)
        newest = context.bus.recent(None, limit=1)
        last_id = after if after is not None and not gap else (newest[-1].id if newest else 0)
        prelude = [sse.frame(b"{}", event="resync", id=last_id)] if gap else []
        sent = -1

        def pulse(last_id: int) -> bytes | None:
            nonlocal sent
            version, _, body = dash.summaries.current()
            if version == sent:
                return None
            sent = version
            return sse.frame(body, event="summary", id=last_id)

        stream = sse.event_stream(
            subscription,
            dash.frames,
            last_id=last_id,
            prelude=prelude,
            pulse=pulse,
            pulse_after=frozenset({STATS_TICK}),
        )
        return StreamResponse(stream, headers=sse.HEADERS, content_type=sse.CONTENT_TYPE)

    # -- stub logs (need a login: they show the traffic) --------------------------------------

    @router.get("/stubs/{id}/log")
    async def stub_log(request: Request) -> Response:
        from stubs.sdk import StubError

        if dash.session(request) is None:
            return _redirect(f"/login?next={quote(request.path)}")
        stub_id = str(request.params["id"])
        try:
            lines = await dash.stubs.run(dash.stubs.manager.tail, stub_id, 200)
        except StubError as error:
            raise HTTPError(404, str(error)) from None
        return dash.render(
            request, "log.html", title=f"log of {stub_id}", page="log", stub=stub_id, lines=lines,
            boot={},
        )  # fmt: skip

    @router.get("/stubs/{id}/log/stream")
    async def stub_log_stream(request: Request) -> StreamResponse:
        from stubs.sdk import StubError

        dash.require_session(request)
        stub_id = str(request.params["id"])
        try:
            await dash.stubs.run(dash.stubs.manager.log_path, stub_id)
        except StubError as error:
            raise HTTPError(404, str(error)) from None
        if dash.stubs.followers >= LOG_FOLLOWERS:
            raise HTTPError(503, "too many live logs open; close one", headers={"Retry-After": "5"})

        raw = (request.query.get("lines") or ["50"])[0]
        backlog = min(int(raw), 500) if raw.isdigit() else 50  # lines before the live ones

        async def lines() -> AsyncIterator[bytes]:
            dash.stubs.followers += 1
            try:
                yield b"retry: 3000\n\n"
                async for line in follow_log(dash.stubs, stub_id, backlog):
                    if line is None:
                        yield sse.frame("lines skipped: the page fell behind", event="skipped")
                    else:
                        yield sse.frame(line, event="line")
                yield sse.frame("", event="end")  # the stub stopped: do not reconnect
            except StubError as error:
                yield sse.frame(str(error), event="end")
            finally:
                dash.stubs.followers -= 1

        return StreamResponse(lines(), headers=sse.HEADERS, content_type=sse.CONTENT_TYPE)

    # -- static files ----------------------------------------------------------------------------

    @router.get("/static/{name}")
    async def static(request: Request) -> Response:
        asset = dash.assets.get(str(request.params["name"]))
        if asset is None:
            raise HTTPError(404, "not found")
        versioned = request.query.get("v") == [asset.version]
        # A hashed URL never changes: cache it for good. A bare one: revalidate each time.
        cache = "public, max-age=31536000, immutable" if versioned else "no-cache"
        headers = [("ETag", asset.etag), ("Cache-Control", cache)]
        if _etag_matches(request.headers.get("if-none-match", ""), asset.etag):
            return Response(304, b"", headers)
        return Response(200, asset.body, headers, asset.content_type)

    # -- actions ---------------------------------------------------------------------------------

    async def act(request: Request, action: Callable[[], Awaitable[str]]) -> Response:
        """Run an action; answer JSON to the script, or redirect back with a message."""
        from stubs.behaviour import BehaviourError
        from stubs.sdk import StubError

        session = dash.require_session(request)
        try:
            message, status, ok = await action(), 200, True
        except HTTPError as error:
            message, status, ok = error.message, error.status, False
            detail = error.extra.get("detail")
            if detail:
                field = error.extra.get("field")
                message = f"{field}: {detail}" if field else f"{message}: {detail}"
        except RegistryError as error:
            message, status, ok = error.message, error.status, False
        except (StubError, BehaviourError) as error:
            message, status, ok = str(error), 400, False
        log.info("dashboard action %s %s: %s", request.method, request.path, message)
        if _wants_json(request):
            return json_response({"ok": ok, "message": message}, status)
        session.flash(message, "ok" if ok else "error")
        return _redirect(_safe_path(_form(request).get("back")))

    def server_of(request: Request) -> tuple[str, str]:
        pool, server_id = str(request.params["pool"]), str(request.params["id"])
        registry.server(pool, server_id)  # NotFound (404) first
        return pool, server_id

    @router.post("/actions/servers/{pool}/{id}/admin")
    async def server_admin(request: Request) -> Response:
        async def action() -> str:
            pool, server_id = server_of(request)
            what = _form(request).get("action", "")
            if what == "drain":
                registry.drain(pool, server_id)
            elif what == "disable":
                registry.disable(pool, server_id)
            elif what == "enable":
                registry.enable(pool, server_id)
            else:
                raise HTTPError(422, "action must be drain, disable or enable")
            await context.save()
            done = {"drain": "draining", "disable": "disabled", "enable": "enabled"}[what]
            return f"{pool}/{server_id}: {done}"

        return await act(request, action)

    @router.post("/actions/servers/{pool}/{id}/weight")
    async def server_weight(request: Request) -> Response:
        async def action() -> str:
            pool, server_id = server_of(request)
            weight = _int_field(_form(request), "weight", 1, 10000)
            registry.set_weight(pool, server_id, weight)
            await context.save()
            return f"{pool}/{server_id}: weight {weight}"

        return await act(request, action)

    @router.post("/actions/servers/{pool}/{id}/remove")
    async def server_remove(request: Request) -> Response:
        async def action() -> str:
            pool, server_id = server_of(request)
            await registry.deregister(pool, server_id, "removed from the dashboard")
            await context.save()
            return f"{pool}/{server_id}: removed"

        return await act(request, action)

    @router.post("/actions/pools/{pool}/settings")
    async def pool_settings(request: Request) -> Response:
        async def action() -> str:
            name = str(request.params["pool"])
            registry.pool(name)
            form = _form(request)
            old = registry.settings[name]
            algorithm = form.get("algorithm") or old.algorithm
            if algorithm not in ALGORITHMS:
                raise HTTPError(422, "validation failed", field="algorithm", detail="unknown")
            patch: dict[str, Any] = {}
            for key, kind in HEALTH_FIELDS.items():
                raw = form.get(f"health.{key}")
                if raw is None or raw.strip() == "":
                    continue
                try:
                    patch[key] = kind(raw.strip())
                except ValueError:
                    raise HTTPError(
                        422, "validation failed", field=f"health.{key}", detail="not a number"
                    ) from None
            health = _merged(old.health, patch, "health") if patch else old.health
            weights: dict[str, int] = {}
            for key, raw in form.items():
                if key.startswith("weight.") and raw.strip():
                    server_id = key.removeprefix("weight.")
                    registry.server(name, server_id)
                    weights[server_id] = _int_field(form, key, 1, 10000)
            changed = []
            if algorithm != old.algorithm:
                changed.append(f"algorithm {algorithm}")
            if health != old.health:
                changed.append("health checks")
            if changed:
                registry.update_pool(
                    name, PoolSettings(algorithm, health, old.outlier, old.source, old.balancing)
                )
            for server_id, weight in weights.items():
                if registry.server(name, server_id).weight != weight:
                    registry.set_weight(name, server_id, weight)
                    changed.append(f"{server_id} weight {weight}")
            await context.save()
            said = ", ".join(changed) or "nothing changed"
            return f"pool {name}: {said}"

        return await act(request, action)

    @router.post("/actions/pools/{pool}/stubs")
    async def add_stub(request: Request) -> Response:
        async def action() -> str:
            name = str(request.params["pool"])
            registry.pool(name)
            behaviour = _behaviour(_form(request))
            started = await dash.stubs.run(
                dash.stubs.manager.start,
                1,
                pool=name,
                register=True,
                api=context.api_url or None,
                token=context.token,
                behaviour=behaviour or None,
            )
            dash.stubs.invalidate()
            stub = started[0]
            return f"stub {stub.id} started on {stub.host}:{stub.port}, joining pool {name}"

        return await act(request, action)

    @router.post("/actions/stubs/{id}/behaviour")
    async def stub_behaviour(request: Request) -> Response:
        async def action() -> str:
            stub_id = str(request.params["id"])
            changes = _behaviour(_form(request))
            if not changes:
                raise HTTPError(422, "nothing to change")
            behaviour = await dash.stubs.run(dash.stubs.manager.set, stub_id, **changes)
            dash.stubs.invalidate()
            # Its servers are checked now, not at their next check (10 s away once dead):
            # what the user just changed shows at once.
            stub = await dash.stubs.run(dash.stubs.manager.get, stub_id)
            for server in registry.all_servers():
                if (_host_key(server.host), server.port) == (_host_key(stub.host), stub.port):
                    registry.recheck(server)
            return f"stub {stub_id}: {behaviour.describe()}"

        return await act(request, action)

    @router.post("/actions/stubs/{id}/stop")
    async def stub_stop(request: Request) -> Response:
        async def action() -> str:
            stub_id = str(request.params["id"])
            await dash.stubs.run(dash.stubs.manager.stop, stub_id)
            dash.stubs.invalidate()
            return f"stub {stub_id} stopped"

        return await act(request, action)

    # -- middlewares -----------------------------------------------------------------------------

    async def errors_as_pages(request: Request, call_next: CallNext) -> AnyResponse:
        """Errors reach a browser as a page, a script (Accept: JSON) as JSON."""
        try:
            response = await call_next(request)
        except HTTPError as error:
            response = error.response()
        if (
            isinstance(response, Response)
            and response.status >= 400
            and response.content_type == JSON
            and not _wants_json(request)
        ):
            try:
                message = str(orjson.loads(response.body).get("error", ""))
            except (orjson.JSONDecodeError, AttributeError):
                message = ""
            page = dash.render(
                request,
                "error.html",
                response.status,
                title=f"{response.status}",
                page="error",
                code=response.status,
                message=message or "something went wrong",
                boot={},
            )
            page.headers.extend(h for h in response.headers if h[0].lower() != "cache-control")
            return page
        return response

    async def security_headers(request: Request, call_next: CallNext) -> AnyResponse:
        response = await call_next(request)
        response.headers.extend(SECURITY_HEADERS)
        return response

    async def guard(request: Request, call_next: CallNext) -> AnyResponse:
        """Every change needs a session and its CSRF token, and a same-origin request."""
        if request.method in SAFE_METHODS or request.route is None:
            return await call_next(request)
        request.data = _parse_form(request)
        origin = request.headers.get("origin")
        # Browsers send Origin with every POST: another site's page is refused here even
        # before the cookie (SameSite=Strict) and the CSRF token would stop it.
        if origin and urlsplit(origin).netloc != request.headers.get("host", ""):
            raise HTTPError(403, "cross-origin request refused")
        if request.route == "/login":
            return await call_next(request)
        session = dash.session(request)
        if session is None:
            raise HTTPError(403, "log in with the admin token first")
        presented = request.headers.get("x-csrf-token") or _form(request).get("csrf")
        if not Sessions.csrf_ok(session, presented):
            raise HTTPError(403, "missing or wrong CSRF token: reload the page")
        return await call_next(request)

    return App(router, [security_headers, errors_as_pages, guard])


def _int_field(form: dict[str, str], key: str, low: int, high: int) -> int:
    raw = form.get(key, "").strip()
    try:
        value = int(raw)
    except ValueError:
        raise HTTPError(422, "validation failed", field=key, detail="a whole number") from None
    if not low <= value <= high:
        raise HTTPError(422, "validation failed", field=key, detail=f"between {low} and {high}")
    return value


def _behaviour(form: dict[str, str]) -> dict[str, str]:
    """The stub behaviour fields a form filled in (the SDK validates them)."""
    return {
        key: form[key].strip()
        for key in ("status", "latency", "fail_rate", "mode", "health")
        if form.get(key, "").strip()
    }
