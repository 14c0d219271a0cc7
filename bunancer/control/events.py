"""Event bus: typed control-plane events fanned out to bounded subscriber queues.

`publish` never blocks and never waits for a subscriber: each subscription is a bounded
queue, and a subscriber that falls behind loses its oldest events (counted in `dropped`),
so a slow dashboard tab can never slow the balancer. Every event gets an increasing id;
the bus keeps the last few hundred so a reconnecting client can resume after the id it
saw last (SSE Last-Event-ID).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

# Kinds of events (the dashboard and `bunancer top` subscribe by these names).
SERVER_ADDED = "server.added"
SERVER_REMOVED = "server.removed"
SERVER_STATE = "server.state"  # a state transition, with its reason
SERVER_UPDATED = "server.updated"  # weight or other settings
SERVER_CHECKED = "server.checked"  # one active health check result
POOL_ADDED = "pool.added"
POOL_REMOVED = "pool.removed"
POOL_UPDATED = "pool.updated"
STATS_TICK = "stats.tick"
FAULT_ADDED = "fault.added"  # a lab fault rule set (the API, the dashboard or the CLI)
FAULT_REMOVED = "fault.removed"  # removed, or expired
LAB_STARTED = "lab.started"  # an experiment of the algorithm lab
LAB_TICK = "lab.tick"  # its figures, once a second
LAB_ENDED = "lab.ended"

# What the activity feed keeps: changes, not the once-a-second figures.
FEED_KINDS = (
    SERVER_ADDED,
    SERVER_REMOVED,
    SERVER_STATE,
    POOL_ADDED,
    POOL_REMOVED,
    POOL_UPDATED,
    FAULT_ADDED,
    FAULT_REMOVED,
    LAB_STARTED,
    LAB_ENDED,
)


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    kind: str
    data: dict[str, Any]
    at: float = field(default_factory=time.time)  # wall clock, for display

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "at": self.at, "data": self.data}


class Subscription:
    """One subscriber's bounded queue; iterate it with ``async for``."""

    __slots__ = ("_bus", "_queue", "_wakeup", "closed", "dropped", "kinds")

    def __init__(self, bus: EventBus, kinds: frozenset[str] | None, maxsize: int) -> None:
        self._bus = bus
        self.kinds = kinds
        self._queue: deque[Event] = deque(maxlen=maxsize)
        self._wakeup = asyncio.Event()
        self.dropped = 0
        self.closed = False

    def _offer(self, event: Event) -> None:
        if self.kinds is not None and event.kind not in self.kinds:
            return
        queue = self._queue
        if len(queue) == queue.maxlen:
            self.dropped += 1  # the deque drops the oldest on append
        queue.append(event)
        self._wakeup.set()

    def pending(self) -> int:
        return len(self._queue)

    def get_nowait(self) -> Event | None:
        return self._queue.popleft() if self._queue else None

    async def get(self) -> Event:
        while not self._queue:
            if self.closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._queue.popleft()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        return await self.get()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._bus._subscriptions.discard(self)
            self._wakeup.set()


class ActivityLog:
    """The history of changes (states, servers and pools coming and going), kept apart from
    the bus's replay buffer, which ticks fill within minutes.

    Bounded per server: a flapping server keeps its last `per_server` changes without
    pushing out anybody else's. Servers are forgotten least recently changed first beyond
    `servers` of them (removed ones, in practice)."""

    def __init__(self, per_server: int = 50, servers: int = 1000, pools: int = 200) -> None:
        self.per_server = per_server
        self.max_servers = servers
        self._servers: OrderedDict[tuple[str, str], deque[Event]] = OrderedDict()
        self._pools: deque[Event] = deque(maxlen=pools)

    def add(self, event: Event) -> None:
        data = event.data
        if not event.kind.startswith("server."):
            self._pools.append(event)
            return
        key = (str(data.get("pool")), str(data.get("id")))
        kept = self._servers.get(key)
        if kept is None:
            kept = self._servers[key] = deque(maxlen=self.per_server)
            if len(self._servers) > self.max_servers:
                self._servers.popitem(last=False)
        else:
            self._servers.move_to_end(key)
        kept.append(event)

    def recent(self, limit: int = 15) -> list[Event]:
        """The newest `limit` changes of all, oldest first."""
        tails = [list(kept)[-limit:] for kept in self._servers.values()]
        tails.append(list(self._pools)[-limit:])
        newest = heapq.nlargest(limit, itertools.chain.from_iterable(tails), key=_event_id)
        return newest[::-1]

    def of_server(self, pool: str, server_id: str, limit: int = 50) -> list[Event]:
        """One server's changes, oldest first."""
        return list(self._servers.get((pool, server_id), ()))[-limit:]


def _event_id(event: Event) -> int:
    return event.id


class EventBus:
    def __init__(self, history: int = 500) -> None:
        self._ids = itertools.count(1)
        self._subscriptions: set[Subscription] = set()
        self._history: deque[Event] = deque(maxlen=history)
        self.activity = ActivityLog()

    def publish(self, kind: str, data: dict[str, Any]) -> Event:
        event = Event(next(self._ids), kind, data)
        self._history.append(event)
        if kind in FEED_KINDS:
            self.activity.add(event)
        for subscription in self._subscriptions:
            subscription._offer(event)
        return event

    def subscribe(
        self,
        kinds: Iterable[str] | None = None,
        maxsize: int = 1000,
        after: int | None = None,
    ) -> Subscription:
        """Subscribe to `kinds` (all when None). With `after`, first replay the kept events
        whose id is greater (those still in the history)."""
        subscription = Subscription(self, frozenset(kinds) if kinds is not None else None, maxsize)
        if after is not None:
            for event in self._history:
                if event.id > after:
                    subscription._offer(event)
        self._subscriptions.add(subscription)
        return subscription

    def recent(self, kinds: Iterable[str] | None = None, limit: int = 50) -> list[Event]:
        wanted = frozenset(kinds) if kinds is not None else None
        events = [e for e in self._history if wanted is None or e.kind in wanted]
        return events[-limit:]

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)
