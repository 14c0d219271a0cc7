"""ServerPool: the servers of one named pool and what the data plane selects from.

The data plane reads `routable`, an immutable tuple rebuilt whenever a server is added,
removed or changes state, so a selection never sees a half-changed set. The pool also
holds what the request path needs of its settings: the selector, how to take a request's
key (hash, sticky), the retry rules and budget, the cap on waiting requests, panic mode.

It is the one owner of selection accounting: every use of a server (a request, each
attempt of it, a TCP or upgraded tunnel) begins with `begin` and ends with one `end`, which
keep its count in flight, its peak, and the selector's own books (least-connections' load,
peak-ewma's latency) in step.

The lab's three parts meet here, on the one path a request with a hash key already took
(`per_request` and `prepare`): fault rules (core/faults.py), an experiment splitting the
pool's requests between arms (`Experiment`, `Arm`, below), and a request asking why this
server (X-Bunancer-Debug); 1 in `decision_sample` selections is recorded (`admit`,
core/decisions.py).
"""

from __future__ import annotations

import random
from _operator import _compare_digest as compare_digest  # (hmac's would load hashlib)
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

from .algorithms import Selector, _stable_hash, make_selector
from .decisions import KEPT, Decision, Recorder, Traced
from .faults import TRACE, FaultRule, PoolFaults
from .headers import RequestHead
from .server import OUT_OF_ROTATION, Server
from .settings import BalancingSettings
from .stats import UPSTREAM_5XX, ServerStats, error_class

# Retries allowed in a burst beyond the budget's share: enough for every request in flight
# on a server that dies at once (a few dozen at 20k req/s), small against a pool that fails
# for good (then the share, retry_budget per request, is the limit).
RETRY_RESERVE: Final = 100.0


class Prepared(Protocol):
    """What `ServerPool.prepare` sets on a request (an exchange)."""

    pool: ServerPool | None
    key: bytes | None
    fault: FaultRule | None


# A request asking why this server (X-Bunancer-Debug with the API token) has this "rule":
# its selection is recorded and told in its response.
TRACED: Final = FaultRule("trace", TRACE, 100.0)
# The API token, for X-Bunancer-Debug (set once known; b"": nobody may ask).
DEBUG_TOKEN: list[bytes] = [b""]


def may_ask(value: bytes) -> bool:
    """Whether an X-Bunancer-Debug value is the API token (constant time)."""
    token = DEBUG_TOKEN[0]
    return bool(token) and compare_digest(value, token)


class ServerPool:
    __slots__ = (
        "balancing",
        "decisions",
        "faults",
        "key_kind",
        "key_name",
        "lab",
        "label",
        "max_pending",
        "name",
        "panic",
        "pending",
        "per_request",
        "rejected",
        "retry_on",
        "retry_ratio",
        "retry_tokens",
        "routable",
        "sample_in",
        "selector",
        "servers",
        "sticky",
    )

    def __init__(self, name: str, balancing: BalancingSettings | None = None) -> None:
        self.name = name
        self.servers: dict[str, Server] = {}
        self.routable: tuple[Server, ...] = ()
        self.rejected = ServerStats()  # requests of this pool that reached no server
        self.panic = False
        self.pending = 0  # requests waiting for an upstream connection (max_pending)
        self.retry_tokens = RETRY_RESERVE
        self.selector: Selector  # set by configure
        self.faults: PoolFaults | None = None  # the lab's fault rules, when any are set
        self.lab: Experiment | None = None  # the lab's experiment on this pool, while it runs
        self.per_request = False  # a request needs `prepare`: a key, fault rules, a lab
        self.label = ""  # an experiment's arm: its name
        self.decisions: deque[Decision] = deque(maxlen=KEPT)  # recorded, not yet collected
        self.sample_in = 0  # requests until the next recorded selection (set by configure)
        self.configure(balancing or BalancingSettings())

    def configure(self, balancing: BalancingSettings) -> None:
        """Apply settings (live: the next request uses them)."""
        algorithm = balancing.algorithm
        options: dict[str, Any] = {}
        if algorithm == "sticky":
            options["fallback"] = balancing.sticky_fallback
        self.selector = make_selector(algorithm, **options)
        self.balancing = balancing
        self.retry_on = balancing.retry_on
        self.retry_ratio = balancing.retry_budget
        self.max_pending = balancing.max_pending
        self.sample_in = balancing.decision_sample  # (0: never: the countdown goes below 0)
        # Only the sticky algorithm sets a cookie (hash on a cookie only reads the client's).
        self.sticky = algorithm == "sticky"
        if algorithm == "sticky":
            self.key_kind, self.key_name = "cookie", balancing.sticky_cookie.encode()
        elif algorithm == "hash":
            kind, _, name = balancing.hash_key.partition(":")
            self.key_kind, self.key_name = kind, name.lower().encode()
        else:
            self.key_kind, self.key_name = "", b""
        self._per_request()
        self.rebuild()

    def set_faults(self, faults: PoolFaults | None) -> None:
        """The lab's fault rules for the next requests (None: none)."""
        self.faults = faults
        self._per_request()

    def set_lab(self, lab: Experiment | None) -> None:
        """Split the next requests between an experiment's arms (None: select as usual)."""
        self.lab = lab
        self._per_request()
        if lab is not None:
            lab.follow(self.routable, self.panic)

    def _per_request(self) -> None:
        self.per_request = bool(self.key_kind) or self.faults is not None or self.lab is not None

    # -- membership ---------------------------------------------------------------------------

    def add(self, server: Server) -> None:
        if server.id in self.servers:
            raise ValueError(f"server {server.id!r} is already in pool {self.name!r}")
        self.servers[server.id] = server
        self.rebuild()

    def remove(self, server_id: str) -> Server:
        server = self.servers.pop(server_id)
        self.rebuild()
        return server

    def rebuild(self) -> bool:
        """Recompute the routable snapshot; True when panic mode switched on or off."""
        healthy = tuple(s for s in self.servers.values() if s.routable)
        panic = False
        threshold = self.balancing.panic_threshold
        if threshold:
            # Envoy's panic mode: with too few healthy servers, spreading load over all of
            # them beats crushing the few healthy ones.
            candidates = tuple(s for s in self.servers.values() if s.state not in OUT_OF_ROTATION)
            panic = bool(candidates) and len(healthy) < threshold * len(candidates)
            if panic:
                healthy = candidates
        changed = panic != self.panic
        self.panic = panic
        self.routable = healthy
        self.selector.update(healthy)
        if self.lab is not None:
            self.lab.follow(healthy, panic)
        return changed

    # -- the request path -----------------------------------------------------------------------

    def pick(self, key: bytes | None = None, avoid: Server | None = None) -> Server | None:
        """Select a routable server; with `avoid`, prefer any other one (for a retry)."""
        routable = self.routable
        server = self.selector.pick(routable, key)
        if avoid is not None and server is avoid and len(routable) > 1:
            server = self.selector.pick(routable, None)
            if server is avoid:
                server = next(s for s in routable if s is not avoid)
        return server

    def begin(self, key: bytes | None = None, avoid: Server | None = None) -> Server | None:
        """A server for one use, counted in flight until its `end`: a routable one (another
        than `avoid` when there is one), else `avoid` itself (a retry with nowhere else to
        go), else None."""
        server = self.pick(key, avoid)
        if server is None:
            server = avoid
            if server is None:
                return None
        in_flight = server.in_flight + 1
        server.in_flight = in_flight
        if in_flight > server.max_in_flight:
            server.max_in_flight = in_flight
        selector = self.selector
        if selector.tracks_load:
            selector.started(server)
        return server

    def end(self, server: Server, us: int = -1, status: int = 0) -> None:
        """A use of `server` ended; `us` is how long its answer took, or -1 when it gave
        none worth learning from (a failed attempt, a client that left, a tunnel); `status`:
        what the client got, when this was its request's last try (an arm counts it)."""
        server.in_flight -= 1
        selector = self.selector
        if us >= 0 and selector.tracks_latency:
            selector.observe(server, us)
        if selector.tracks_load:
            selector.finished(server)

    def prepare(
        self,
        request: Prepared,
        client_ip: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        head: RequestHead,
    ) -> None:
        """What a request needs of the pool before it starts, when `per_request` or when it
        asks why (its X-Bunancer-Debug, in `head`): the pool that selects for it (an
        experiment's arm, while one runs), its key for hash and sticky selection, and the
        fault rule that hits it (a request allowed to ask why gets none: TRACED)."""
        pool: ServerPool = self if self.lab is None else self.lab.arm_for(client_ip)
        request.pool = pool
        if pool.key_kind:
            request.key = pool.request_key(client_ip, target, headers)
        faults = self.faults
        if head.debug is not None and may_ask(head.debug):
            request.fault = TRACED
        elif faults is not None:
            request.fault = faults.pick(target, head.host, headers)

    def request_key(
        self, client_ip: str, target: bytes, headers: list[tuple[bytes, bytes]]
    ) -> bytes | None:
        """The request's key for hash and sticky selection."""
        kind = self.key_kind
        if kind == "client_ip":
            return client_ip.encode()
        if kind == "path":
            return target.partition(b"?")[0]
        name = self.key_name
        if kind == "header":
            for key, value in headers:
                if key.lower() == name:
                    return value
            return None
        if kind == "cookie":
            for key, value in headers:
                if key.lower() == b"cookie":
                    for part in value.split(b";"):
                        cookie, _, cookie_value = part.strip().partition(b"=")
                        if cookie == name:
                            return cookie_value
            return None
        return None

    def admit(self, request: Traced) -> None:
        """A new request: it adds `retry_budget` to the budget (up to the reserve), and 1 in
        `decision_sample` has its selection recorded (the next pick; see core/decisions.py)."""
        tokens = self.retry_tokens + self.retry_ratio
        if tokens <= RETRY_RESERVE:
            self.retry_tokens = tokens
        countdown = self.sample_in - 1
        self.sample_in = countdown
        if countdown == 0:
            self.sample_in = self.balancing.decision_sample
            self.selector = Recorder(self, self.selector, request)

    def may_retry(self, tries: int) -> bool:
        """Whether a request tried `tries` times may go again: tries and budget left."""
        return tries <= self.balancing.retries and self.retry_tokens >= 1.0

    def retry(
        self, failed: Server, tries: int, key: bytes | None, status: int, error: int, count: bool
    ) -> Server | None:
        """The next server for a request whose use of `failed` just failed (its use ends
        here), or None when no try or budget is left. The failed attempt (`status` 0 when
        nothing was answered) counts against `failed` when `count`, unless `error` is -1 (it
        never reached the server)."""
        if not self.may_retry(tries):
            return None
        self.take_retry()
        self.end(failed)
        other = self.begin(key, avoid=failed)  # `failed` itself when no other is left
        if error >= 0 and count:
            failed.stats.record_retried(status, error, other is not failed)
        return other

    def take_retry(self) -> bool:
        """Spend one retry from the budget: `retry_budget` per request, plus a reserve of
        RETRY_RESERVE for bursts."""
        if self.retry_tokens >= 1.0:
            self.retry_tokens -= 1.0
            return True
        return False

    def __repr__(self) -> str:
        panic = " PANIC" if self.panic else ""
        return (
            f"<ServerPool {self.name} servers={len(self.servers)} "
            f"routable={len(self.routable)}{panic}>"
        )


# -- the lab: one pool's traffic split between algorithms ------------------------------------


class Arm(ServerPool):
    """One arm of an experiment: the pool's own servers (the same objects: their states,
    connections and in-flight counts), selected by this arm's algorithm with its own
    selector state; it counts, per server, what the requests it selected for got."""

    __slots__ = ("outcomes",)

    def __init__(self, parent: ServerPool, label: str, balancing: BalancingSettings) -> None:
        super().__init__(parent.name, balancing)
        self.label = label
        self.servers = parent.servers
        self.decisions = parent.decisions  # its recorded selections are the pool's
        self.rejected = parent.rejected  # a request that reached no server: the pool's figure
        self.outcomes: dict[str, ServerStats] = {}  # by server id

    def follow(self, routable: tuple[Server, ...], panic: bool) -> None:
        self.routable = routable
        self.panic = panic
        self.selector.update(routable)

    def end(self, server: Server, us: int = -1, status: int = 0) -> None:
        ServerPool.end(self, server, us, status)
        if not status:
            return  # an attempt tried again, or a tunnel: the request's last try counts
        stats = self.outcomes.get(server.id)
        if stats is None:
            stats = self.outcomes[server.id] = ServerStats()
        if us >= 0:
            stats.record(status, us, 0, 0, error_class(status))
        else:
            stats.record(502, 0, 0, 0, UPSTREAM_5XX)  # the answer broke off


class Experiment:
    """A pool's arms, and which one a request goes to: at random, or by a hash of the
    client's address (a client stays on its arm)."""

    def __init__(
        self,
        arms: list[Arm],
        by_client: bool,
        draw: Callable[[], float] = random.random,
        name: str = "",
    ) -> None:
        self.arms = arms
        self.by_client = by_client
        self.draw = draw
        self.name = name  # the lab's id for it: a worker tells one experiment from the next

    def arm_for(self, client_ip: str) -> Arm:
        arms = self.arms
        if self.by_client:
            return arms[_stable_hash(client_ip.encode()) % len(arms)]
        return arms[int(self.draw() * len(arms))]

    def follow(self, routable: tuple[Server, ...], panic: bool) -> None:
        for arm in self.arms:
            arm.follow(routable, panic)
