"""Deadline with a fake loop clock: the handle re-arms lazily and fires once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bunancer.core.deadline import Deadline


class FakeHandle:
    def __init__(self, when: float, callback: Any) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self.handles: list[FakeHandle] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Any) -> FakeHandle:
        handle = FakeHandle(self.now + delay, callback)
        self.handles.append(handle)
        return handle

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for handle in list(self.handles):
            if not handle.cancelled and handle.when <= self.now:
                self.handles.remove(handle)
                handle.callback()

    @property
    def armed(self) -> int:
        return sum(not h.cancelled for h in self.handles)


def make() -> tuple[FakeLoop, Deadline, list[float]]:
    loop = FakeLoop()
    fired: list[float] = []
    deadline = Deadline(loop, lambda: fired.append(loop.now))  # type: ignore[arg-type]
    return loop, deadline, fired


def test_moving_later_costs_no_new_handle_until_the_old_one_fires() -> None:
    loop, deadline, fired = make()
    deadline.set(10)
    for _ in range(100):
        loop.now += 0.05
        deadline.set(10)
    assert len(loop.handles) == 1
    loop.advance(10 - 5)  # the first handle fires at t=10 and re-arms for t=15
    assert fired == []
    assert loop.armed == 1
    loop.advance(5)
    assert fired == [pytest.approx(15.0)]


def test_moving_earlier_rearms() -> None:
    loop, deadline, fired = make()
    deadline.set(75)
    deadline.set(10)
    loop.advance(10)
    assert fired == [10.0]
    loop.advance(100)
    assert fired == [10.0]


def test_clear_and_cancel() -> None:
    loop, deadline, fired = make()
    deadline.set(1)
    deadline.clear()
    loop.advance(5)
    assert fired == []
    deadline.set(1)
    deadline.cancel()
    assert loop.armed == 0


def test_real_loop_fires() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        deadline = Deadline(loop, done.set)
        deadline.set(0.01)
        await asyncio.wait_for(done.wait(), 2)
        return ["fired"]

    assert asyncio.run(main()) == ["fired"]


def test_close_cancels_and_forgets_the_callback() -> None:
    loop, deadline, fired = make()
    deadline.set(10)
    deadline.close()
    assert loop.armed == 0
    deadline.set(5)  # a late set after the owner is gone fires into nothing
    loop.advance(20)
    assert fired == []
