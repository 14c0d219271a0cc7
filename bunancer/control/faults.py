"""The lab's fault rules as the control process keeps them (the data plane's side is
core/faults.py).

Rules are set from the API, the dashboard and the CLI, never from the config file: they
are experiments, off by default, and each one ends by itself at its expiry (a timer here
removes it, and it is gone from the workers with the next snapshot). Every change is an
event in the activity feed and a line in the log. Rules live in memory only: a restart
ends them all, as a balancer that comes back should not come back broken on purpose.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from ..core.faults import ABORT, DELAY, FaultRule, PoolFaults
from .events import FAULT_ADDED, FAULT_REMOVED, EventBus
from .records import NotFound
from .registry import Registry

log = logging.getLogger("bunancer")

Settle = Callable[[], Awaitable[bool]]  # the change is in effect in every worker


@dataclass(frozen=True)
class ActiveFault:
    pool: str
    rule: FaultRule
    created: float  # wall clock
    expires: float  # wall clock

    def view(self, now: float) -> dict[str, Any]:
        rule = self.rule
        view: dict[str, Any] = {
            "id": rule.rule_id,
            "pool": self.pool,
            "kind": rule.kind,
            "percent": rule.percent,
            "header": rule.header.decode() or None,
            "path_prefix": rule.path_prefix.decode() or None,
            "host": rule.host.decode() or None,
            "created": self.created,
            "expires": self.expires,
            "seconds_left": round(max(0.0, self.expires - now), 1),
            "summary": self.summary(),
        }
        if rule.kind == DELAY:
            view["delay_ms"] = round(rule.delay_min * 1000)
            view["delay_max_ms"] = round(rule.delay_max * 1000)
        elif rule.kind == ABORT:
            view["status"] = rule.status
        return view

    def summary(self) -> str:
        """One line for the log and the activity feed."""
        rule, what = self.rule, self.rule.kind
        if rule.kind == DELAY:
            low, high = round(rule.delay_min * 1000), round(rule.delay_max * 1000)
            what = f"delay {low} ms" if low == high else f"delay {low}-{high} ms"
        elif rule.kind == ABORT:
            what = f"abort with {rule.status}"
        only = "".join(
            f" {label} {value.decode()}"
            for label, value in (
                ("for host", rule.host),
                ("under", rule.path_prefix),
                ("with header", rule.header),
            )
            if value
        )
        return f"{what} for {rule.percent:g}% of pool {self.pool}'s requests{only}"


class FaultBook:
    """Every active rule, by id, in the order they were set."""

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
        self.settle: Settle | None = None  # set with workers: wait until they all have it
        self.active: dict[str, ActiveFault] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._ids = itertools.count(1)

    def views(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [fault.view(now) for fault in self.active.values()]

    async def add(self, pool: str, rule: FaultRule, seconds: float) -> dict[str, Any]:
        """Set `rule` (its id is given here) on `pool` for `seconds`; its view."""
        self.registry.pool(pool)  # NotFound: 404
        rule_id = f"f{next(self._ids)}"
        now = self.clock()
        fault = ActiveFault(pool, replace(rule, rule_id=rule_id), now, now + seconds)
        self.active[rule_id] = fault
        self._timers[rule_id] = self.loop.call_later(seconds, self._expire, rule_id)
        await self._apply(pool)
        log.warning("fault %s set for %gs: %s", rule_id, seconds, fault.summary())
        view = fault.view(now)
        self.bus.publish(FAULT_ADDED, {**view, "active": len(self.active)})
        return view

    async def remove(self, rule_id: str, why: str = "removed") -> dict[str, Any]:
        fault = self.active.pop(rule_id, None)
        if fault is None:
            raise NotFound(f"no fault rule {rule_id!r}")
        timer = self._timers.pop(rule_id, None)
        if timer is not None:
            timer.cancel()
        await self._apply(fault.pool)
        log.warning("fault %s %s: %s", rule_id, why, fault.summary())
        view = fault.view(self.clock())
        # (`active`: how many are in effect now, for the dashboard's banner)
        self.bus.publish(FAULT_REMOVED, {**view, "active": len(self.active), "why": why})
        return view

    def _expire(self, rule_id: str) -> None:
        self._timers.pop(rule_id, None)
        if rule_id in self.active:
            task = self.loop.create_task(self.remove(rule_id, "expired"))
            task.add_done_callback(_log_failure)

    async def _apply(self, pool_name: str) -> None:
        """Give the pool its rules now (and the workers, through the next snapshot)."""
        pool = self.registry.pools.get(pool_name)
        if pool is not None:
            rules = tuple(f.rule for f in self.active.values() if f.pool == pool_name)
            pool.set_faults(PoolFaults(rules) if rules else None)
        if self.settle is not None:
            await self.settle()


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a fault rule did not end cleanly", exc_info=task.exception())
