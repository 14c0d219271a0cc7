"""Slow start: a server coming up takes a growing share of traffic, from 10% of its weight
to all of it over the pool's `slow_start` seconds (weighted algorithms only).

One timer for all ramping servers, every half second while any ramps; each step sets the
servers' effective weight and rebuilds their pools' selections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from ..core.server import State
from .records import ServerRecord

STEP: Final = 0.5  # seconds between weight steps
START: Final = 0.1  # share of its weight a server starts with


class SlowStart:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        duration_of: Callable[[str], float],
        rebuild: Callable[[str], None],
    ) -> None:
        self.loop = loop
        self.duration_of = duration_of  # a pool's slow_start (0: off)
        self.rebuild = rebuild  # rebuild a pool's selection after weights changed
        self._ramping: set[ServerRecord] = set()
        self._handle: asyncio.TimerHandle | None = None

    def start(self, record: ServerRecord) -> None:
        """The server just became healthy: ramp it up, or give it its weight at once."""
        server = record.server
        if not self.duration_of(server.pool_name):
            record.ramp_since = None
            server.effective_weight = server.weight
            return
        server.effective_weight = server.weight * START
        record.ramp_since = self.loop.time()
        self._ramping.add(record)
        if self._handle is None:
            self._handle = self.loop.call_later(STEP, self._step)

    def ramping(self, record: ServerRecord) -> bool:
        return record in self._ramping

    def forget(self, record: ServerRecord) -> None:
        self._ramping.discard(record)

    def _step(self) -> None:
        self._handle = None
        now = self.loop.time()
        touched: set[str] = set()
        for record in list(self._ramping):
            server = record.server
            duration = self.duration_of(server.pool_name)
            since = record.ramp_since if record.ramp_since is not None else now
            share = 1.0 if not duration else min(1.0, max(START, (now - since) / duration))
            if record.state is not State.HEALTHY or share >= 1.0:
                share = 1.0
                self._ramping.discard(record)
                record.ramp_since = None
            server.effective_weight = server.weight * share
            touched.add(server.pool_name)
        for name in touched:
            self.rebuild(name)
        if self._ramping:
            self._handle = self.loop.call_later(STEP, self._step)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
