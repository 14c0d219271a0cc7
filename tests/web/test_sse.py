"""SSE: framing, Last-Event-ID resume, heartbeats, dropping a client that falls behind, and
the dashboard's /events over a real `bunancer serve`."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from bunancer.control.events import STATS_TICK, Event, EventBus
from bunancer.web import sse
from tests.conftest import Backend, Proxy, StartProxy
from tests.helpers import wait_until

DEADLINE = 10.0


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        async with asyncio.timeout(DEADLINE):
            await scenario()

    uvloop.run(main())


def parse(frames: list[bytes]) -> list[dict[str, str]]:
    """Frames as the browser reads them: fields of each message; comments as {"": text}."""
    messages = []
    for raw in frames:
        message: dict[str, str] = {}
        for line in raw.decode().split("\n"):
            if not line:
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            message[name] = message[name] + "\n" + value if name in message else value
        messages.append(message)
    return messages


# -- framing -------------------------------------------------------------------------------------


def test_frame_has_id_event_and_one_data_line_per_line() -> None:
    assert sse.frame("hello", event="greeting", id=7) == b"id: 7\nevent: greeting\ndata: hello\n\n"
    assert sse.frame(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert sse.frame("one\ntwo\r\nthree\rfour", id=1) == (
        b"id: 1\ndata: one\ndata: two\ndata: three\ndata: four\n\n"
    )
    assert sse.frame("", event="end") == b"event: end\ndata: \n\n"
    assert sse.frame("x", retry=1500).startswith(b"retry: 1500\n")
    with pytest.raises(ValueError, match="line break"):
        sse.frame("x", event="a\nb")


def test_comment_is_one_line() -> None:
    assert sse.comment() == b": \n\n"
    assert sse.comment("hi\nthere") == b": hi\n\n"


def test_last_event_id_from_header_or_query() -> None:
    assert sse.last_event_id({"last-event-id": "42"}) == 42
    assert sse.last_event_id({"last-event-id": " 42 "}) == 42
    assert sse.last_event_id({}, {"last_event_id": ["9"]}) == 9
    assert sse.last_event_id({"last-event-id": "3"}, {"last_event_id": ["9"]}) == 3
    for bad in ("", "-1", "abc", "1e3", "٣", "9" * 30):
        assert sse.last_event_id({"last-event-id": bad}) is None
    assert sse.last_event_id({}) is None


def test_frame_cache_encodes_each_event_once() -> None:
    bus = EventBus()
    cache = sse.FrameCache(size=2)
    first = bus.publish("server.state", {"id": "s1", "new": "dead"})
    encoded = cache(first)
    assert cache(first) is encoded
    message = parse([encoded])[0]
    assert message["id"] == str(first.id)
    assert message["event"] == "server.state"
    assert json.loads(message["data"])["data"] == {"id": "s1", "new": "dead"}
    for _ in range(3):
        cache(bus.publish("x", {}))
    assert cache(first) is not encoded  # evicted, encoded again
    shaped = sse.FrameCache(transform=lambda e: {"only": e.kind})
    assert json.loads(parse([shaped(first)])[0]["data"]) == {"only": "server.state"}


# -- the stream ------------------------------------------------------------------------------------


async def take(stream: AsyncIterator[bytes], count: int) -> list[bytes]:
    return [await anext(stream) for _ in range(count)]


def test_stream_sends_retry_then_events_with_ids() -> None:
    async def scenario() -> None:
        bus = EventBus()
        subscription = bus.subscribe(None)
        stream = sse.event_stream(subscription, sse.FrameCache())
        assert await anext(stream) == b"retry: 1000\n\n"
        events = [bus.publish("server.added", {"n": n}) for n in range(3)]
        messages = parse(await take(stream, 3))
        assert [m["id"] for m in messages] == [str(e.id) for e in events]
        assert [json.loads(m["data"])["data"]["n"] for m in messages] == [0, 1, 2]
        await stream.aclose()
        assert subscription.closed
        assert bus.subscribers == 0

    run(scenario)


def test_resume_after_last_event_id_replays_what_was_missed() -> None:
    async def scenario() -> None:
        bus = EventBus()
        seen = [bus.publish("server.state", {"n": n}) for n in range(5)]
        subscription, gap = sse.open_subscription(bus, None, after=seen[1].id)
        assert not gap
        stream = sse.event_stream(subscription, sse.FrameCache(), last_id=seen[1].id)
        await anext(stream)  # retry
        messages = parse(await take(stream, 3))
        assert [int(m["id"]) for m in messages] == [e.id for e in seen[2:]]
        await stream.aclose()

    run(scenario)


def test_resume_reports_a_gap_the_history_no_longer_covers() -> None:
    bus = EventBus(history=3)
    events = [bus.publish("x", {}) for _ in range(10)]
    assert sse.open_subscription(bus, None, after=events[-4].id)[1] is False
    assert sse.open_subscription(bus, None, after=events[2].id)[1] is True  # older than kept
    assert sse.open_subscription(bus, None, after=events[-1].id + 50)[1] is True  # restarted
    assert sse.open_subscription(bus, None, after=None)[1] is False


def test_heartbeat_comment_when_nothing_happens() -> None:
    async def scenario() -> None:
        bus = EventBus()
        stream = sse.event_stream(bus.subscribe(None), sse.FrameCache(), heartbeat=0.05)
        await anext(stream)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(1.0):  # it comes (a deadline, not a measured figure)...
            assert await anext(stream) == b": \n\n"
        assert loop.time() - started >= 0.04  # ...after the quiet interval, not at once
        event = bus.publish("x", {})
        assert parse([await anext(stream)])[0]["id"] == str(event.id)
        await stream.aclose()

    run(scenario)


def test_a_client_that_falls_behind_is_dropped_and_resumes() -> None:
    async def scenario() -> None:
        bus = EventBus()
        subscription = bus.subscribe(None, maxsize=4)
        stream = sse.event_stream(subscription, sse.FrameCache())
        await anext(stream)
        first = bus.publish("x", {"n": 0})
        assert parse([await anext(stream)])[0]["id"] == str(first.id)
        # The client stops reading (its socket is full): publishing never waits for it (it
        # is synchronous: it cannot), and what does not fit the queue is dropped.
        for n in range(1, 50):
            bus.publish("x", {"n": n})
        assert subscription.dropped == 45
        rest = [frame async for frame in stream]  # it ends instead of skipping silently
        assert rest == [sse.comment("behind: reconnect and resume")]
        assert subscription.closed
        assert bus.subscribers == 0
        # The browser reconnects with the last id it got and misses nothing.
        again, gap = sse.open_subscription(bus, None, after=first.id)
        assert not gap
        resumed = sse.event_stream(again, sse.FrameCache(), last_id=first.id)
        await anext(resumed)
        ids = [int(m["id"]) for m in parse(await take(resumed, 49))]
        assert ids == list(range(first.id + 1, first.id + 50))
        await resumed.aclose()

    run(scenario)


def test_pulse_frames_come_each_interval_and_after_a_tick() -> None:
    async def scenario() -> None:
        bus = EventBus()
        calls: list[int] = []
        pending = {"fresh": True}

        def pulse(last_id: int) -> bytes | None:
            calls.append(last_id)
            if not pending["fresh"]:
                return None  # nothing new yet: asked again shortly
            pending["fresh"] = False
            return sse.frame("{}", event="summary", id=last_id)

        stream = sse.event_stream(
            bus.subscribe(None),
            sse.FrameCache(),
            last_id=5,
            pulse=pulse,
            pulse_every=30.0,
            pulse_after=frozenset({STATS_TICK}),
        )
        await anext(stream)
        assert parse([await anext(stream)])[0] == {"id": "5", "event": "summary", "data": "{}"}
        tick = bus.publish(STATS_TICK, {"servers": []})
        assert parse([await anext(stream)])[0]["event"] == STATS_TICK
        pending["fresh"] = True
        assert parse([await anext(stream)])[0]["id"] == str(tick.id)  # at once after the tick
        pending["fresh"] = False
        second = bus.publish(STATS_TICK, {"servers": []})
        await anext(stream)
        waiting = asyncio.ensure_future(anext(stream))
        # The pulse keeps asking while it has nothing new.
        await wait_until(lambda: calls.count(second.id) >= 2)
        assert not waiting.done()
        pending["fresh"] = True
        assert parse([await waiting])[0]["event"] == "summary"
        await stream.aclose()

    run(scenario)


def test_closing_the_subscription_ends_the_stream() -> None:
    async def scenario() -> None:
        bus = EventBus()
        subscription = bus.subscribe(None)
        stream = sse.event_stream(subscription, sse.FrameCache())
        await anext(stream)
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)  # let the stream start waiting on the subscription
        subscription.close()
        with pytest.raises(StopAsyncIteration):
            await waiting

    run(scenario)


def test_event_as_dict_is_what_the_browser_gets() -> None:
    event = Event(3, "server.removed", {"pool": "p", "id": "s"}, at=12.5)
    data = json.loads(parse([sse.FrameCache()(event)])[0]["data"])
    assert data == {"id": 3, "kind": "server.removed", "at": 12.5, "data": {"pool": "p", "id": "s"}}


# -- /events on a real balancer --------------------------------------------------------------------


class EventReader:
    """Reads an event stream from the dashboard message by message."""

    def __init__(self, port: int, headers: dict[str, str] | None = None, path: str = "/events"):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.conn.request("GET", path, headers=headers or {})
        self.response = self.conn.getresponse()

    def message(self) -> dict[str, str]:
        lines: list[bytes] = []
        while True:
            line = self.response.readline()
            if not line:
                raise ConnectionError("stream ended")
            if line == b"\n":
                if lines:
                    return parse([b"".join(lines)])[0]
                continue
            lines.append(line)

    def until(self, event: str, timeout: float = 10.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.message()
            if message.get("event") == event:
                return message
        raise AssertionError(f"no {event} within {timeout}s")

    def close(self) -> None:
        self.conn.close()


FAST = """
[pools.default.health]
interval = 0.2
fast_interval = 0.1
down_interval = 0.2
fall = 1
dead_after = 2
"""


def test_events_endpoint_streams_summaries_and_events_with_ids_and_resumes(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    proxy: Proxy = start_proxy([backends[0].url], FAST)
    reader = EventReader(proxy.dashboard_port)
    try:
        assert reader.response.status == 200
        assert reader.response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert reader.response.headers["Cache-Control"] == "no-store"
        assert reader.message() == {"retry": "1000"}
        summary = reader.until("summary")
        assert "id" in summary
        data = json.loads(summary["data"])
        assert data["counts"]["healthy"] == 1
        assert data["total"] == 1
        # A change through the API arrives as an event with a greater id.
        conn = http.client.HTTPConnection("127.0.0.1", proxy.api_port, timeout=5)
        body = json.dumps({"host": "127.0.0.1", "port": backends[1].port, "id": "b2"})
        conn.request(
            "POST",
            "/api/pools/default/servers",
            body=body,
            headers={"Authorization": f"Bearer {proxy.token}", "Content-Type": "application/json"},
        )
        assert conn.getresponse().status == 201
        conn.close()
        added = reader.until("server.added")
        assert json.loads(added["data"])["data"]["id"] == "b2"
        state = reader.until("server.state")
        assert int(state["id"]) > int(added["id"])
        tick = reader.until("stats.tick")  # the flow animation's feed
        assert "servers" in json.loads(tick["data"])["data"]
        after = reader.until("summary")
        assert int(after["id"]) >= int(tick["id"])  # summaries carry the last id sent
    finally:
        reader.close()

    # A browser reconnecting with Last-Event-ID gets what followed, in order.
    resumed = EventReader(proxy.dashboard_port, {"Last-Event-ID": str(int(added["id"]) - 1)})
    try:
        resumed.message()  # retry
        assert resumed.until("server.added")["id"] == added["id"]
        assert resumed.until("server.state")["id"] == state["id"]
    finally:
        resumed.close()

    # An id from before the kept history (or another run): told to reload, not replayed.
    stale = EventReader(proxy.dashboard_port, {"Last-Event-ID": "999999"})
    try:
        stale.message()
        assert stale.message()["event"] == "resync"
    finally:
        stale.close()
