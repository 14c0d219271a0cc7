"""Snapshots from the control process to the workers: a new version only for a change, and
a worker leaves alone what did not change (no processes: the two sides' objects)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from typing import Any

import pytest

from bunancer.configfile import build_config
from bunancer.control.events import EventBus
from bunancer.control.registry import PoolSettings, Registry
from bunancer.control.workers import Workers
from bunancer.core.server import State
from bunancer.core.settings import UpstreamSettings
from bunancer.core.snapshot import World


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def registry(loop: asyncio.AbstractEventLoop) -> Registry:
    """Two pools: `default` with one server, `big` with 100."""
    registry = Registry(loop, UpstreamSettings(), EventBus())
    registry.add_pool("default", PoolSettings())
    registry.add_pool("big", PoolSettings())
    registry.register("default", "127.0.0.1", 9001)
    for port in range(20000, 20100):
        registry.register("big", "127.0.0.1", port)
    return registry


@pytest.fixture
def workers(loop: asyncio.AbstractEventLoop, registry: Registry) -> Workers:
    config = build_config({"listeners": [{"address": "127.0.0.1:8080"}]})
    return Workers(loop, registry, lambda: config, list, 0)


@pytest.fixture
def world(loop: asyncio.AbstractEventLoop, workers: Workers) -> World:
    """A worker's world, the first snapshot applied."""
    world = World(loop, lambda pool, server, reason: None)
    apply(world, workers.snapshot())
    return world


def apply(world: World, snapshot: dict[str, Any]) -> None:
    """As a worker gets it (new objects each time), every server healthy (routable)."""
    snapshot = copy.deepcopy(snapshot)
    for pool in snapshot["pools"]:
        pool["servers"] = [(*s[:5], "healthy", *s[6:]) for s in pool["servers"]]
    world.apply(snapshot)


def test_a_new_version_only_when_something_changed(registry: Registry, workers: Workers) -> None:
    first = workers.snapshot()
    assert workers.snapshot()["version"] == first["version"]
    registry.set_weight("default", "127.0.0.1:9001", 5)
    changed = workers.snapshot()
    assert changed["version"] == first["version"] + 1
    assert changed["pools"][0]["servers"][0][3] == 5  # the weight


def test_a_worker_leaves_an_unchanged_pool_alone(
    registry: Registry, workers: Workers, world: World
) -> None:
    big, default = world.pools["big"], world.pools["default"]
    routable = big.routable
    assert len(routable) == 100
    registry.set_weight("default", "127.0.0.1:9001", 5)
    apply(world, workers.snapshot())
    assert world.pools["big"].routable is routable  # not rebuilt
    assert default.servers["127.0.0.1:9001"].weight == 5


def test_a_removed_pool_retires_its_servers_and_can_come_back(
    workers: Workers, world: World
) -> None:
    snapshot = workers.snapshot()
    old = world.pools["big"].servers["127.0.0.1:20000"]
    without = {**snapshot, "pools": [p for p in snapshot["pools"] if p["name"] != "big"]}
    apply(world, without)
    assert "big" not in world.pools
    assert old.state is State.DRAINING
    apply(world, snapshot)
    assert world.pools["big"].servers["127.0.0.1:20000"] is not old


def test_a_changed_server_is_updated_and_a_moved_one_replaced(
    workers: Workers, world: World
) -> None:
    snapshot = workers.snapshot()
    big = world.pools["big"]
    kept, moved = big.servers["127.0.0.1:20001"], big.servers["127.0.0.1:20002"]
    servers = {s[0]: list(s) for s in snapshot["pools"][1]["servers"]}
    servers["127.0.0.1:20001"][3] = 7  # the weight
    servers["127.0.0.1:20002"][2] = 30002  # the port
    entries = [tuple(s) for s in servers.values()]
    big_entry = {**snapshot["pools"][1], "servers": entries}
    apply(world, {**snapshot, "pools": [snapshot["pools"][0], big_entry]})
    assert big.servers["127.0.0.1:20001"] is kept
    assert kept.weight == 7
    replacement = big.servers["127.0.0.1:20002"]
    assert replacement is not moved
    assert replacement.port == 30002
    assert moved.state is State.DRAINING
    assert len(big.routable) == 100
    assert moved not in big.routable
