"""The control process's fault rules (control/faults.py): a rule reaches its pool, ends at
its expiry or when removed, and every change is an event; with a real event loop."""

from __future__ import annotations

import asyncio
import copy
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from bunancer.configfile import build_config
from bunancer.control.events import FAULT_ADDED, FAULT_REMOVED, EventBus
from bunancer.control.faults import FaultBook
from bunancer.control.records import NotFound
from bunancer.control.registry import PoolSettings, Registry
from bunancer.control.workers import Workers
from bunancer.core.faults import ABORT, DELAY, FaultRule
from bunancer.core.settings import UpstreamSettings
from bunancer.core.snapshot import World
from tests.helpers import wait_until

RULE = FaultRule("", ABORT, 100.0, status=503)


def in_a_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


def book_with_pool() -> tuple[FaultBook, Registry, EventBus]:
    loop = asyncio.get_running_loop()
    bus = EventBus()
    registry = Registry(loop, UpstreamSettings(), bus)
    registry.add_pool("shop", PoolSettings())
    return FaultBook(registry, bus, loop), registry, bus


@in_a_loop
async def test_a_rule_reaches_its_pool_and_is_gone_once_removed() -> None:
    book, registry, bus = book_with_pool()
    view = await book.add("shop", RULE, 60)
    pool = registry.pools["shop"]
    assert pool.faults is not None
    assert pool.per_request
    assert pool.faults.rules[0].rule_id == view["id"] == "f1"
    assert view["seconds_left"] == 60
    removed = await book.remove("f1")
    assert removed["id"] == "f1"
    assert pool.faults is None
    assert not pool.per_request
    kinds = [e.kind for e in bus.recent(None)]
    assert kinds.count(FAULT_ADDED) == 1
    assert kinds.count(FAULT_REMOVED) == 1
    added = next(e for e in bus.recent(None) if e.kind == FAULT_ADDED)
    assert added.data["summary"] == "abort with 503 for 100% of pool shop's requests"
    assert added.data["active"] == 1
    assert (
        next(e.data for e in bus.activity.recent(5) if e.kind == FAULT_REMOVED)["why"] == "removed"
    )


@in_a_loop
async def test_a_rule_ends_by_itself_at_its_expiry() -> None:
    book, registry, bus = book_with_pool()
    delay = FaultRule("", DELAY, 25.0, 0.1, 0.2, path_prefix=b"/api")
    await book.add("shop", delay, 0.05)
    await book.add("shop", RULE, 60)
    assert len(registry.pools["shop"].faults.rules) == 2  # type: ignore[union-attr]
    await wait_until(lambda: len(book.active) == 1, timeout=2)
    assert [r.rule_id for r in registry.pools["shop"].faults.rules] == ["f2"]  # type: ignore[union-attr]
    expired = [e.data for e in bus.recent(None) if e.kind == FAULT_REMOVED]
    assert expired[0]["why"] == "expired"
    assert expired[0]["summary"] == "delay 100-200 ms for 25% of pool shop's requests under /api"


@in_a_loop
async def test_an_unknown_pool_or_rule_is_not_found() -> None:
    book, _registry, _ = book_with_pool()
    with pytest.raises(NotFound):
        await book.add("nope", RULE, 60)
    with pytest.raises(NotFound):
        await book.remove("f9")
    assert book.views() == []


@in_a_loop
async def test_the_rules_travel_to_a_worker_in_the_snapshot() -> None:
    book, registry, _ = book_with_pool()
    loop = asyncio.get_running_loop()
    config = build_config({"listeners": [{"address": "127.0.0.1:8080"}], "pools": {"shop": {}}})
    workers = Workers(loop, registry, lambda: config, list, 0)
    world = World(loop, lambda pool, server, reason: None)
    world.apply(copy.deepcopy(workers.snapshot()))
    assert world.pools["shop"].faults is None
    await book.add("shop", FaultRule("", ABORT, 40.0, status=502, header=b"x-lab"), 60)
    world.apply(copy.deepcopy(workers.snapshot()))
    faults = world.pools["shop"].faults
    assert faults is not None
    assert faults.rules == registry.pools["shop"].faults.rules  # type: ignore[union-attr]
    await book.remove("f1")
    world.apply(copy.deepcopy(workers.snapshot()))
    assert world.pools["shop"].faults is None
    assert not world.pools["shop"].per_request
