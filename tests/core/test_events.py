from __future__ import annotations

import asyncio

from bunancer.core.events import SERVER_ADDED, SERVER_STATE, EventBus


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
