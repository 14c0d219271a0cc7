"""The algorithm lab: one pool's real traffic split between two to four algorithms for a
while, each arm's figures taken every second, and the result kept afterwards.

The data plane's side is core/pool.py (`Experiment`, `Arm`): each request goes to an arm (at
random, or by a hash of the client's address), the arm's own selector picks among the pool's
servers, and the arm counts what its requests got. Here an experiment is started (token
guarded, as every change), ticked once a second (each arm's figures, a point of its chart,
markers when a server of the pool changes state or a fault rule comes or goes), ended by
itself after its duration, and its result kept (the last `KEPT`, in memory) as JSON.

The arms share what describes a server (its state, its requests in flight, peak-ewma's
latency estimate of it); what each algorithm decides with (a round-robin position, a
least-connections heap, its random draws) is the arm's own.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from ..config import ALGORITHMS, BalancingConfig
from ..core.pool import Arm, Experiment
from ..core.settings import BalancingSettings
from ..core.stats import ServerStats, merge, percentile
from .events import (
    FAULT_ADDED,
    FAULT_REMOVED,
    LAB_ENDED,
    LAB_STARTED,
    LAB_TICK,
    SERVER_ADDED,
    SERVER_REMOVED,
    SERVER_STATE,
    EventBus,
)
from .figures import Window, round_or_none
from .records import Conflict
from .registry import Registry

log = logging.getLogger("bunancer")

KEPT = 10  # finished experiments whose results stay listed
SPLITS = ("random", "client")
MARKED = (SERVER_STATE, SERVER_ADDED, SERVER_REMOVED, FAULT_ADDED, FAULT_REMOVED)
WINDOW = 5  # seconds of each arm's live figures (the table while it runs)


def arm_figures(stats: ServerStats, seconds: int | None = None) -> dict[str, Any]:
    """An arm's requests/s, error rate and p50/p90/p99 over its last `seconds` closed
    seconds (None: since it started)."""
    if seconds is None:
        requests, errors = stats.requests, sum(stats.errors)
        histogram, span = stats.latency, max(len(stats.seconds), 1)
    else:
        window = Window(seconds).add(stats)
        requests, errors, histogram, span = (
            window.requests, window.errors, window.histogram, seconds,
        )  # fmt: skip
    return {
        "requests": requests,
        "rps": round(requests / span, 1),
        "errors": errors,
        "error_rate": round(errors / requests, 4) if requests else None,
        **{
            name: round_or_none(percentile(histogram, q) if requests else None)
            for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
        },
    }


@dataclass
class Run:
    """One experiment: its arms, and what was seen of them so far."""

    run_id: str
    pool: str
    split: str
    seconds: float
    arms: list[Arm]
    started: float  # wall clock
    timeline: list[dict[str, Any]] = field(default_factory=list)  # a point per second
    markers: list[dict[str, Any]] = field(default_factory=list)
    ended: float | None = None
    why: str = ""
    last_event: int = 0

    def arm_view(self, arm: Arm, seconds: int | None) -> dict[str, Any]:
        total = merge(arm.outcomes.values())
        answered = {sid: stats.requests for sid, stats in arm.outcomes.items()}
        count = sum(answered.values())
        return {
            "label": arm.label,
            "algorithm": arm.balancing.algorithm,
            **arm_figures(total, seconds),
            "shares": {sid: round(n / count, 4) for sid, n in sorted(answered.items())}
            if count
            else {},
        }

    def view(self, now: float) -> dict[str, Any]:
        """The experiment as the API, the CLI and the page show it (figures of the last
        seconds while it runs; of its whole length once it ended)."""
        running = self.ended is None
        elapsed = (now if running else self.ended or now) - self.started
        return {
            "id": self.run_id,
            "pool": self.pool,
            "split": self.split,
            "seconds": self.seconds,
            "started": self.started,
            "ended": self.ended,
            "elapsed": round(elapsed, 1),
            "running": running,
            "why": self.why or None,
            "arms": [self.arm_view(arm, WINDOW if running else None) for arm in self.arms],
            "markers": self.markers,
        }


class Lab:
    """The experiment running (one at a time) and the results of those that ended."""

    def __init__(
        self,
        registry: Registry,
        bus: EventBus,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.bus = bus
        self.loop = loop
        self.clock = clock
        self.running: Run | None = None
        self.results: deque[dict[str, Any]] = deque(maxlen=KEPT)
        # With workers: the experiments they count for, by id (Workers reads it), and how to
        # wait until they all applied a change (they report an ended one's last counts then).
        self.experiments: dict[str, Experiment] = {}
        self.settle: Callable[[], Awaitable[bool]] | None = None
        self._ids = itertools.count(1)
        self._ticker: asyncio.TimerHandle | None = None
        self._ending: asyncio.Task[dict[str, Any]] | None = None  # (held: a task not kept can go)

    async def start(self, pool_name: str, algorithms: list[str], split: str, seconds: float) -> Run:
        """Split `pool_name`'s traffic between `algorithms` for `seconds` (a ValueError
        names what is wrong with them; Conflict while another experiment runs); it is in
        effect (in every worker) when this returns."""
        if self.running is not None:
            raise Conflict(f"experiment {self.running.run_id} is running on {self.running.pool}")
        pool = self.registry.pool(pool_name)  # NotFound: 404
        if not 2 <= len(algorithms) <= 4:
            raise ValueError("algorithms: two to four")
        if split not in SPLITS:
            raise ValueError(f"split: {' or '.join(SPLITS)}")
        settings = [arm_settings(spec, pool.balancing) for spec in algorithms]
        arms = [
            Arm(pool, _label(spec, algorithms[:index]), settings[index])
            for index, spec in enumerate(algorithms)
        ]
        now = self.clock()
        run = Run(f"e{next(self._ids)}", pool_name, split, seconds, arms, now)
        run.last_event = self._newest_event()
        experiment = Experiment(arms, by_client=split == "client", name=run.run_id)
        self.experiments[run.run_id] = experiment
        pool.set_lab(experiment)
        self.running = run
        if self.settle is not None:
            await self.settle()
        run.started = self.clock()  # (a worker's requests count from here, not before)
        self._ticker = self.loop.call_later(1.0, self._tick)
        what = ", ".join(arm.label for arm in arms)
        log.warning("lab: experiment %s on pool %s: %s for %gs", run.run_id, pool_name, what,
                    seconds)  # fmt: skip
        self.bus.publish(LAB_STARTED, run.view(run.started))
        return run

    async def stop(self, why: str = "stopped") -> dict[str, Any]:
        """End the running experiment now (with workers, once they all ended it and sent
        their last counts); its result."""
        run = self.running
        if run is None or run.why:
            raise Conflict("no experiment is running")
        run.why = why  # (ending: the workers are told first; it is listed running until then)
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        pool = self.registry.pools.get(run.pool)
        if pool is not None and pool.lab is not None:
            pool.set_lab(None)
        if self.settle is not None:
            await self.settle()
        self.experiments.pop(run.run_id, None)
        for arm in run.arms:
            for stats in arm.outcomes.values():
                stats.rotate()  # the last part-second counts too
        run.ended = self.clock()
        self.running = None
        result = {**run.view(run.ended), "timeline": run.timeline}
        self.results.appendleft(result)
        log.warning("lab: experiment %s %s", run.run_id, why)
        self.bus.publish(LAB_ENDED, {k: v for k, v in result.items() if k != "timeline"})
        return result

    def note(self, text: str) -> None:
        """A marker on the running experiment's timeline (a stub broken from the lab)."""
        run = self.running
        if run is not None:
            run.markers.append({"t": round(self.clock() - run.started, 1), "text": text})

    def result(self, run_id: str) -> dict[str, Any] | None:
        return next((r for r in self.results if r["id"] == run_id), None)

    def _tick(self) -> None:
        run = self.running
        if run is None:
            return
        for arm in run.arms:
            for stats in arm.outcomes.values():
                stats.rotate()
        now = self.clock()
        self._mark(run, now)
        point = {
            "t": round(now - run.started, 1),
            "arms": {arm.label: arm_figures(merge(arm.outcomes.values()), 1) for arm in run.arms},
        }
        run.timeline.append(point)
        if now - run.started >= run.seconds or run.pool not in self.registry.pools:
            why = "finished" if run.pool in self.registry.pools else "its pool is gone"
            self._ending = self.loop.create_task(self.stop(why))
            return
        self.bus.publish(LAB_TICK, {**run.view(now), "point": point})
        self._ticker = self.loop.call_later(1.0, self._tick)

    def _mark(self, run: Run, now: float) -> None:
        """Markers for what changed in the pool since the last tick."""
        for event in self.bus.recent(MARKED, limit=100):
            if event.id <= run.last_event or event.data.get("pool") != run.pool:
                continue
            run.markers.append({"t": round(event.at - run.started, 1), "text": _said(event)})
        run.last_event = self._newest_event()

    def _newest_event(self) -> int:
        newest = self.bus.recent(None, limit=1)
        return newest[-1].id if newest else 0


def arm_settings(spec: str, base: BalancingSettings) -> BalancingSettings:
    """An arm's settings from its spec: an algorithm, with its option after a colon
    (`hash:header:X-User`: the hash key; `sticky:least-connections`: the fallback); the
    pool's for the rest. A ValueError names what is wrong."""
    name, _, option = spec.partition(":")
    if name not in ALGORITHMS:
        raise ValueError(f"algorithms: unknown {name or spec!r}")
    if not option:
        return replace(base, algorithm=name)
    if name not in ("hash", "sticky"):
        raise ValueError(f"algorithms: {name} takes no option (hash and sticky do)")
    key = "hash_key" if name == "hash" else "sticky_fallback"
    try:
        BalancingConfig.model_validate({key: option})
    except ValidationError as error:
        problem = error.errors()[0]["msg"].removeprefix("Value error, ")
        raise ValueError(f"algorithms: {spec}: {problem}") from None
    return replace(base, algorithm=name, **{key: option})


def _label(name: str, before: list[str]) -> str:
    """The arm's name: its algorithm, numbered when the same one is in twice."""
    count = before.count(name)
    return name if not count else f"{name} #{count + 1}"


def _said(event: Any) -> str:
    data = event.data
    if event.kind == SERVER_STATE:
        return f"{data['id']}: {data['old']} → {data['new']}"
    if event.kind in (FAULT_ADDED, FAULT_REMOVED):
        verb = "set" if event.kind == FAULT_ADDED else data.get("why", "removed")
        return f"fault {data['id']} {verb}: {data['summary']}"
    return f"{data['id']} {'added' if event.kind == SERVER_ADDED else 'removed'}"
