"""Selection algorithms: small sans-I/O objects that pick a server from a snapshot.

A `Selector` is handed the pool's immutable tuple of routable servers whenever it changes
(`update`), and picks from it per request (`pick`), O(1) or O(log n). Selectors read only
plain attributes of servers: `effective_weight` (the weight, ramped during slow start),
`in_flight`, and for `peak-ewma` the latency estimate that `observe` keeps. Randomness and
time come in from outside (an `rng`, a `clock`), so tests run them with a seed.

- round-robin: each server in turn; for alike servers and alike requests.
- weighted-round-robin: in proportion to weights, interleaved (nginx's smooth order); for
  servers of different sizes.
- least-connections: fewest requests in flight per unit of weight; for varied request costs.
- random: uniformly (weighted) at random; when many balancers share the servers.
- p2c: the less loaded of two random servers; cheap, steers away from slow ones.
- peak-ewma: the lower latency x load of two random servers; the default: latency matters most.
- hash: by a key (client IP, header, cookie, path) through a Maglev table; caches, affinity.
- sticky: the server named in a cookie the balancer sets, else a fallback; in-memory sessions.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Final

from .server import Server

try:  # hashlib's own blake2b, without loading hashlib's OpenSSL binding (0.6 MiB a worker)
    from _blake2 import blake2b
except ImportError:  # an interpreter built without it
    from hashlib import blake2b

Clock = Callable[[], float]


class Selector:
    """The base of every algorithm: the interface with its defaults. The pool holds its
    selector as this class (compiled, calls through it are direct, not looked up by name)."""

    name: ClassVar[str] = ""
    needs_key = False  # pick() wants a request key (hash, sticky)
    tracks_load = False  # wants started()/finished() calls per request (least-connections)
    tracks_latency = False  # wants observe() per response (peak-ewma)

    def update(self, servers: Sequence[Server]) -> None:
        """The routable set changed: rebuild per-set state."""

    def pick(self, servers: Sequence[Server], key: bytes | None = None) -> Server | None:
        raise NotImplementedError

    def knows(self, key: bytes | None) -> bool:
        """Whether `key` names a server (sticky cookies)."""
        return False

    def started(self, server: Server) -> None:
        pass

    def finished(self, server: Server) -> None:
        pass

    def observe(self, server: Server, us: int) -> None:
        pass

    def estimate(self, server: Server) -> float | None:
        """The number this algorithm compares servers by, lower first (None: it compares
        none: round-robin, random, hash). For the lab's "why this server": never per request."""
        return None


class RoundRobin(Selector):
    """Each routable server in turn."""

    name: ClassVar[str] = "round-robin"
    __slots__ = ("_next",)

    def __init__(self, **_: Any) -> None:
        self._next = 0

    def pick(self, servers: Sequence[Server], key: bytes | None = None) -> Server | None:
        count = len(servers)
        if not count:
            return None
        index = self._next
        if index >= count:
            index = 0
        self._next = index + 1
        return servers[index]

    def update(self, servers: Sequence[Server]) -> None:
        if self._next >= len(servers):
            self._next = 0


def _weights(servers: Sequence[Server]) -> list[int]:
    """Integer weights (effective weights during slow start can be fractional)."""
    return [max(1, round(s.effective_weight * 10)) for s in servers]


class WeightedRoundRobin(Selector):
    """nginx's smooth weighted round-robin, precomputed: weights 5,1,1 give a,a,b,a,c,a,a
    rather than a,a,a,a,a,b,c. The order is built once per change (`update`), so a pick is
    an index into it, O(1)."""

    name: ClassVar[str] = "weighted-round-robin"
    MAX_SCHEDULE = 4096  # longer schedules are scaled down (proportions kept to ~0.1%)

    def __init__(self, **_: Any) -> None:
        self._schedule: list[Server] = []
        self._next = 0

    def update(self, servers: Sequence[Server]) -> None:
        weights = _weights(servers)
        divisor = math.gcd(*weights) if weights else 1
        weights = [w // divisor for w in weights]
        total = sum(weights)
        if total > self.MAX_SCHEDULE:
            weights = [max(1, w * self.MAX_SCHEDULE // total) for w in weights]
            total = sum(weights)
        current = [0] * len(weights)
        schedule = []
        for _ in range(total):
            for index, weight in enumerate(weights):
                current[index] += weight
            best = max(range(len(weights)), key=current.__getitem__)
            current[best] -= total
            schedule.append(servers[best])
        self._schedule = schedule
        self._next = 0

    def pick(self, servers: Sequence[Server], key: bytes | None = None) -> Server | None:
        schedule = self._schedule
        if not schedule:
            return None
        index = self._next
        if index >= len(schedule):
            index = 0
        self._next = index + 1
        return schedule[index]


class LeastConnections(Selector):
    """Fewest requests in flight per unit of weight; ties broken in turn.

    A heap with lazy invalidation keeps each pick O(log n): every start and finish of a
    request pushes the server's new load, and stale entries are dropped when they surface.
    """

    name: ClassVar[str] = "least-connections"
    tracks_load = True

    def __init__(self, **_: Any) -> None:
        self._heap: list[tuple[float, int, int, Server]] = []
        self._version: dict[Server, int] = {}
        self._order = itertools.count()

    def update(self, servers: Sequence[Server]) -> None:
        self._version = dict.fromkeys(servers, 0)
        self._heap = []
        for server in servers:
            self._push(server)

    def _push(self, server: Server) -> None:
        version = self._version.get(server)
        if version is None:
            return  # not routable (any more)
        version += 1
        self._version[server] = version
        load = (server.in_flight + 1) / server.effective_weight
        heapq.heappush(self._heap, (load, next(self._order), version, server))
        if len(self._heap) > 4 * len(self._version) + 64:
            self.update(list(self._version))  # drop the stale entries in one go

    def started(self, server: Server) -> None:
        self._push(server)

    def finished(self, server: Server) -> None:
        self._push(server)

    def estimate(self, server: Server) -> float | None:
        return (server.in_flight + 1) / server.effective_weight

    def pick(self, servers: Sequence[Server], key: bytes | None = None) -> Server | None:
        heap = self._heap
        version = self._version
        while heap:
            _, _, entry_version, server = heap[0]
            if version.get(server) == entry_version:
                return server
            heapq.heappop(heap)
        return None


class Random(Selector):
    """Uniformly at random, or in proportion to weights (bisect over cumulative weights)."""

    name: ClassVar[str] = "random"

    def __init__(self, rng: random.Random | None = None, **_: Any) -> None:
        self._rng = rng or random.Random()
        self._cumulative: list[int] = []
        self._servers: Sequence[Server] = ()

    def update(self, servers: Sequence[Server]) -> None:
        self._servers = servers
        self._cumulative = list(itertools.accumulate(_weights(servers)))

    def pick(self, servers: Sequence[Server], key: bytes | None = None) -> Server | None:
        cumulative = self._cumulative
        if not cumulative:
            return None
        point = self._rng.random() * cumulative[-1]
        return self._servers[bisect.bisect_right(cumulative, point)]


class PowerOfTwoChoices(Selector):
    """Two servers at random, the one with fewer requests in flight per unit of weight.

    Nearly as good as least-connections at keeping a slow server from piling up requests
    (its in-flight count grows), at O(1) and without shared bookkeeping.
    """

    name: ClassVar[str] = "p2c"

    def __init__(self, rng: random.Random | None = None, **_: Any) -> None:
        self._rng = rng or random.Random()

    def _cost(self, server: Server) -> float:
        return (server.in_flight + 1) / server.effective_weight

    def estimate(self, server: Server) -> float | None:
        return self._cost(server)

    def pick(self, servers: Sequence[Server], key: bytes | None = None) -> Server | None:
        count = len(servers)
        if count < 2:
            return servers[0] if count else None
        first = int(self._rng.random() * count)
        second = int(self._rng.random() * (count - 1))
        if second >= first:
            second += 1
        a, b = servers[first], servers[second]
        return a if self._cost(a) <= self._cost(b) else b


# Peak EWMA's defaults, measured by bench/spread.py and bench/algorithms.py (bench/README).
TIE: Final = 1.25  # costs closer than this factor count as equal...
SLACK: Final = 1000.0  # ...and so do costs a millisecond apart (one hiccup of a fast server)
DECAY: Final = 2.0  # seconds: an estimate nothing refreshes falls to a third in two


class PeakEwma(PowerOfTwoChoices):
    """Power of two choices on latency x load (Finagle's peak EWMA).

    Each server keeps a moving average of its response times that jumps up at once on a
    slow response (the "peak"), moves a fifth of the way toward each faster one, and decays
    with time constant `decay` while no answer comes: a server that was slow is tried again
    once its estimate has decayed, within seconds, rather than shunned while it is not
    asked. Cost = estimate x (in flight + 1); two costs within `TIE` of each other do not
    really differ (sampling noise), and the pick between them is random, so identical
    servers share the load evenly.
    """

    name: ClassVar[str] = "peak-ewma"
    tracks_latency = True
    ALPHA = 0.2  # weight of a new sample below the estimate

    def __init__(
        self,
        rng: random.Random | None = None,
        clock: Clock = time.monotonic,
        decay: float = DECAY,
        **_: Any,
    ) -> None:
        super().__init__(rng)
        self._clock = clock
        self._decay = decay

    def observe(self, server: Server, us: int) -> None:
        now = self._clock()
        estimate = self._decayed(server, now)
        if us > estimate:
            server.latency_ewma = float(us)  # peak: believe a slowdown at once
        else:
            # Per sample, not per second: a one-off spike on a busy fast server is forgotten
            # after a few answers (a purely time-based weight kept it for ~`decay` seconds
            # and sent traffic to the slow server meanwhile: bench/algorithms.py).
            server.latency_ewma = estimate + (us - estimate) * self.ALPHA
        server.latency_at = now

    def estimate(self, server: Server) -> float | None:
        """Its cost as `pick` weighs it: latency estimate (µs) x (in flight + 1) / weight."""
        latency = self._decayed(server, self._clock()) or 1.0
        return latency * (server.in_flight + 1) / server.effective_weight

    def _decayed(self, server: Server, now: float) -> float:
        age = now - server.latency_at
        if age < 0.05:
            return server.latency_ewma  # fresh: decay is under 1% (and exp() costs)
        return server.latency_ewma * math.exp(-age / self._decay)

    def pick(self, servers: Sequence[Server], key: bytes | None = None) -> Server | None:
        count = len(servers)
        if count < 2:
            return servers[0] if count else None
        random_ = self._rng.random
        first = int(random_() * count)
        second = int(random_() * (count - 1))
        if second >= first:
            second += 1
        a, b = servers[first], servers[second]
        now = self._clock()  # once per pick, not per candidate
        # A server with no estimate yet costs as little as possible: it gets tried.
        cost_a = (self._decayed(a, now) or 1.0) * (a.in_flight + 1) / a.effective_weight
        cost_b = (self._decayed(b, now) or 1.0) * (b.in_flight + 1) / b.effective_weight
        # Within TIE and SLACK, `a`: itself a uniformly random server, so ties spread evenly.
        return b if cost_b * TIE + SLACK < cost_a else a


def _stable_hash(data: bytes) -> int:
    """A hash that is the same in every process (Python's own is salted per process)."""
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


class MaglevHash(Selector):
    """Consistent hashing with a Maglev lookup table: O(1) per pick, and when a server
    joins or leaves about 1/n of the keys move. Weights give servers more table entries.

    The table size is a prime well above the number of servers (65537 here for up to a few
    hundred servers); building it is O(table size) per change of the routable set.
    """

    name: ClassVar[str] = "hash"
    needs_key = True
    TABLE_SIZE = 65537

    def __init__(self, **_: Any) -> None:
        self._table: list[Server] = []
        self._fallback = RoundRobin()

    def update(self, servers: Sequence[Server]) -> None:
        self._fallback.update(servers)
        size = self.TABLE_SIZE
        if not servers:
            self._table = []
            return
        # Order by id so that the table depends on the set, not on the order of the tuple.
        ordered = sorted(servers, key=lambda s: s.id)
        weights = _weights(ordered)
        top = max(weights)
        offsets, skips = [], []
        for server in ordered:
            digest = _stable_hash(server.id.encode())
            offsets.append((digest >> 32) % size)
            skips.append((digest & 0xFFFFFFFF) % (size - 1) + 1)
        nexts = [0] * len(ordered)
        credit = [0.0] * len(ordered)
        table: list[Server | None] = [None] * size
        filled = 0
        while filled < size:
            for index, server in enumerate(ordered):
                credit[index] += weights[index] / top
                if credit[index] < 1.0:
                    continue
                credit[index] -= 1.0
                slot = (offsets[index] + nexts[index] * skips[index]) % size
                while table[slot] is not None:
                    nexts[index] += 1
                    slot = (offsets[index] + nexts[index] * skips[index]) % size
                table[slot] = server
                nexts[index] += 1
                filled += 1
                if filled == size:
                    break
        self._table = table  # type: ignore[assignment]

    def pick(self, servers: Sequence[Server], key: bytes | None = None) -> Server | None:
        table = self._table
        if not table:
            return None
        if key is None:
            return self._fallback.pick(servers)
        return table[zlib.crc32(key) % self.TABLE_SIZE]


def sticky_token(server: Server) -> str:
    """The cookie value naming a server: opaque, stable across restarts and instances."""
    return blake2b(f"{server.pool_name}/{server.id}".encode(), digest_size=6).hexdigest()


def sticky_cookie(name: str, server: Server) -> bytes:
    """The Set-Cookie line that sends a client back to `server` (algorithm "sticky")."""
    return b"Set-Cookie: %s=%s; Path=/; HttpOnly; SameSite=Lax\r\n" % (
        name.encode(),
        sticky_token(server).encode(),
    )


class Sticky(Selector):
    """The server named by the request's sticky cookie, while it is routable; otherwise
    `fallback` picks, and the response sets the cookie (see `Exchange`)."""

    name: ClassVar[str] = "sticky"
    needs_key = True

    def __init__(self, fallback: str = "p2c", **options: Any) -> None:
        if fallback in ("sticky", "hash"):
            raise ValueError("sticky needs a fallback that does not use a key")
        self.fallback = make_selector(fallback, **options)
        self.tracks_load = self.fallback.tracks_load
        self.tracks_latency = self.fallback.tracks_latency
        self._by_token: dict[bytes, Server] = {}

    def update(self, servers: Sequence[Server]) -> None:
        self.fallback.update(servers)
        self._by_token = {sticky_token(s).encode(): s for s in servers}

    def pick(self, servers: Sequence[Server], key: bytes | None = None) -> Server | None:
        if key:
            server = self._by_token.get(key)
            if server is not None:
                return server
        return self.fallback.pick(servers)

    def knows(self, key: bytes | None) -> bool:
        return bool(key) and key in self._by_token

    def started(self, server: Server) -> None:
        self.fallback.started(server)

    def finished(self, server: Server) -> None:
        self.fallback.finished(server)

    def observe(self, server: Server, us: int) -> None:
        self.fallback.observe(server, us)

    def estimate(self, server: Server) -> float | None:
        return self.fallback.estimate(server)


ALGORITHMS: dict[str, type[Selector]] = {
    cls.name: cls
    for cls in (
        RoundRobin,
        WeightedRoundRobin,
        LeastConnections,
        Random,
        PowerOfTwoChoices,
        PeakEwma,
        MaglevHash,
        Sticky,
    )
}
ALGORITHM_NAMES = tuple(ALGORITHMS)


def make_selector(name: str, **options: Any) -> Selector:
    try:
        cls = ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}") from None
    return cls(**options)
