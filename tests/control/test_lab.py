"""The lab's experiments in the control process (control/lab.py), and how a worker follows
them (core/snapshot.py): with a real event loop, no sockets."""

from __future__ import annotations

import asyncio
import copy

import pytest

from bunancer.configfile import build_config
from bunancer.control.events import LAB_ENDED, LAB_STARTED, SERVER_STATE, EventBus
from bunancer.control.lab import Lab
from bunancer.control.records import Conflict
from bunancer.control.registry import PoolSettings, Registry
from bunancer.control.workers import Workers
from bunancer.core.settings import UpstreamSettings
from bunancer.core.snapshot import World
from tests.control.test_faults import in_a_loop
from tests.helpers import wait_until


def lab_with_pool() -> tuple[Lab, Registry, EventBus]:
    loop = asyncio.get_running_loop()
    bus = EventBus()
    registry = Registry(loop, UpstreamSettings(), bus)
    registry.add_pool("shop", PoolSettings())
    registry.register("shop", "127.0.0.1", 9001)
    return Lab(registry, bus, loop), registry, bus


@in_a_loop
async def test_an_experiment_ends_by_itself_with_its_timeline_and_markers() -> None:
    lab, registry, bus = lab_with_pool()
    run = await lab.start("shop", ["p2c", "p2c", "random"], "random", 1.5)
    assert [arm.label for arm in run.arms] == ["p2c", "p2c #2", "random"]
    assert registry.pools["shop"].lab is not None
    with pytest.raises(Conflict):
        await lab.start("shop", ["p2c", "random"], "random", 5)
    lab.note("stub s1: 200 20ms")
    bus.publish(SERVER_STATE, {"pool": "shop", "id": "a", "old": "healthy", "new": "dead"})
    bus.publish(SERVER_STATE, {"pool": "other", "id": "b", "old": "healthy", "new": "dead"})
    await wait_until(lambda: lab.running is None, timeout=5)
    assert registry.pools["shop"].lab is None
    result = lab.results[0]
    assert result["why"] == "finished"
    assert len(result["timeline"]) in (1, 2)
    said = [m["text"] for m in result["markers"]]
    assert "stub s1: 200 20ms" in said
    assert "a: healthy → dead" in said
    assert not any(text.startswith("b:") for text in said)  # another pool's
    kinds = [e.kind for e in bus.recent((LAB_STARTED, LAB_ENDED))]
    assert kinds == [LAB_STARTED, LAB_ENDED]
    assert lab.result(result["id"]) is result


@in_a_loop
async def test_a_bad_experiment_names_what_is_wrong() -> None:
    lab, _, _ = lab_with_pool()
    for algorithms, split, said in (
        (["p2c"], "random", "algorithms: two to four"),
        (["p2c", "psychic"], "random", "algorithms: unknown .psychic."),
        (["p2c", "hash:cookie:"], "random", "algorithms: hash:cookie:: use client_ip"),
        (["p2c", "random"], "hash", "split: random or client"),
    ):
        with pytest.raises(ValueError, match=said):
            await lab.start("shop", algorithms, split, 5)
    with pytest.raises(Conflict):
        await lab.stop()
    assert lab.running is None


@in_a_loop
async def test_a_worker_starts_and_ends_an_experiment_as_the_snapshot_says() -> None:
    lab, registry, _ = lab_with_pool()
    loop = asyncio.get_running_loop()
    config = build_config({"listeners": [{"address": "127.0.0.1:8080"}], "pools": {"shop": {}}})
    workers = Workers(loop, registry, lambda: config, list, 0)
    world = World(loop, lambda pool, server, reason: None)
    await lab.start("shop", ["round-robin", "least-connections"], "client", 60)
    world.apply(copy.deepcopy(workers.snapshot()))
    experiment = world.pools["shop"].lab
    assert experiment is not None
    assert (experiment.name, experiment.by_client) == ("e1", True)
    assert [(a.label, a.balancing.algorithm) for a in experiment.arms] == [
        ("round-robin", "round-robin"),
        ("least-connections", "least-connections"),
    ]
    world.apply(copy.deepcopy(workers.snapshot()))
    assert world.pools["shop"].lab is experiment  # the same experiment goes on
    await lab.stop()
    world.apply(copy.deepcopy(workers.snapshot()))
    assert world.pools["shop"].lab is None
    assert world.ended_labs == [("shop", experiment)]  # its last counts: to be reported
