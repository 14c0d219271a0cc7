from __future__ import annotations

import asyncio
import itertools

from bunancer.control.events import (
    FEED_KINDS,
    POOL_UPDATED,
    SERVER_ADDED,
    SERVER_STATE,
    STATS_TICK,
    ActivityLog,
    Event,
    EventBus,
)


def test_publish_reaches_matching_subscribers_in_order() -> None:
    bus = EventBus()
    everything = bus.subscribe()
    states = bus.subscribe([SERVER_STATE])
    bus.publish(SERVER_ADDED, {"id": "a"})
    bus.publish(SERVER_STATE, {"id": "a", "state": "healthy"})
    first, second = everything.get_nowait(), everything.get_nowait()
    assert first is not None
    assert second is not None
    assert (first.kind, second.kind) == (SERVER_ADDED, SERVER_STATE)
    assert first.id < second.id
    only = states.get_nowait()
    assert only is not None
    assert only.data == {"id": "a", "state": "healthy"}
    assert states.get_nowait() is None


def test_slow_subscriber_loses_oldest_and_counts_never_blocks() -> None:
    bus = EventBus()
    slow = bus.subscribe(maxsize=10)
    for n in range(25):
        bus.publish(SERVER_STATE, {"n": n})
    assert slow.dropped == 15
    assert slow.pending() == 10
    event = slow.get_nowait()
    assert event is not None
    assert event.data == {"n": 15}


def test_resume_after_id() -> None:
    bus = EventBus(history=5)
    ids = [bus.publish(SERVER_STATE, {"n": n}).id for n in range(8)]
    resumed = bus.subscribe(after=ids[4])
    got = []
    while (event := resumed.get_nowait()) is not None:
        got.append(event.data["n"])
    assert got == [5, 6, 7]
    # an id older than the kept history replays what is kept
    old = bus.subscribe(after=0)
    assert old.pending() == 5


def test_async_iteration_and_close() -> None:
    async def main() -> list[int]:
        bus = EventBus()
        subscription = bus.subscribe()
        received: list[int] = []

        async def reader() -> None:
            async for event in subscription:
                received.append(event.data["n"])

        task = asyncio.create_task(reader())
        for n in range(3):
            bus.publish(SERVER_STATE, {"n": n})
            await asyncio.sleep(0)
        subscription.close()
        await asyncio.wait_for(task, 2)
        assert bus.subscribers == 0
        return received

    assert asyncio.run(main()) == [0, 1, 2]


def test_the_activity_feed_keeps_changes_however_many_ticks_come_between() -> None:
    bus = EventBus(history=500)
    for n in range(9):
        bus.publish(SERVER_STATE, {"pool": "p", "id": "s2", "old": "a", "new": "b", "n": n})
        for _ in range(300):  # minutes of ticks and summaries
            bus.publish(STATS_TICK, {"servers": []})
    assert [e.data["n"] for e in bus.activity.recent(15)] == list(range(9))
    assert len(bus.recent(FEED_KINDS, limit=15)) == 1  # the replay buffer lost the rest


def test_the_activity_feed_is_bounded_per_server_and_forgets_old_servers() -> None:
    log = ActivityLog(per_server=3, servers=2, pools=2)
    ids = itertools.count(1)

    def state(server: str) -> Event:
        event = Event(next(ids), SERVER_STATE, {"pool": "p", "id": server})
        log.add(event)
        return event

    quiet = state("quiet")
    flapping = [state("flap") for _ in range(10)]
    # The flapping server keeps its last three changes, the quiet one its only change.
    assert log.of_server("p", "flap") == flapping[-3:]
    assert log.of_server("p", "quiet") == [quiet]
    assert log.recent(10) == [quiet, *flapping[-3:]]
    state("third")  # a third server: the least recently changed one is forgotten
    assert log.of_server("p", "quiet") == []
    for n in range(3):
        log.add(Event(next(ids), POOL_UPDATED, {"name": f"pool{n}"}))
    assert [e.data["name"] for e in log.recent(10) if e.kind == POOL_UPDATED] == ["pool1", "pool2"]
