"""Server-sent events: framing, resume after a reconnect, heartbeats, and slow clients.

`event_stream` turns one `EventBus` subscription into the body of a `text/event-stream`
response. Every frame carries `id:` (the bus's event id), so a browser that reconnects sends
`Last-Event-ID` and resumes with the events it missed, replayed from the bus's history. A
comment line goes out when nothing else was written for `heartbeat` seconds, so proxies and
browsers keep the connection open and a dead client is noticed by the write.

Each client has a bounded queue (the subscription). `publish` never waits for a client: a
client that falls behind (a hidden tab, a slow link, or a connection whose write buffer is
full so the stream stops being pulled) loses its oldest events, and as soon as the stream
sees that it ends the response. The browser reconnects within `retry` milliseconds and
resumes from the last id it received; nothing it missed is lost while the bus still keeps
it. A slow tab therefore costs one bounded queue, never the balancer's time.

Sampled requests for the flow animation: rather than an event per proxied request (which
would put a publish on the data plane's hot path and swamp the browser at thousands of
requests per second), the dashboard animates the `stats.tick` event the balancer already
publishes once a second: for each server whose figures changed, its requests and errors in
the last second. The browser draws dots in proportion to those counts (a server missing
from a tick is unchanged), so the picture is proportional to real traffic at no cost per
request. A `pulse` callback adds state frames that are not bus events (the dashboard's
per-second summary); they carry the id of the last bus event sent, so resuming is unaffected.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any

import orjson

from ..control.events import Event, EventBus, Subscription

HEARTBEAT = 15.0  # seconds without a write before a comment line goes out
RETRY_MS = 1000  # how long a browser waits before reconnecting
QUEUE = 256  # events buffered per client before it is dropped (then it resumes)
PULSE_RETRY = 0.15  # when a pulse has nothing new yet, ask again this much later

CONTENT_TYPE = "text/event-stream; charset=utf-8"
HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Accel-Buffering", "no"),  # nginx in front: pass the frames through at once
)


def frame(
    data: str | bytes, *, event: str | None = None, id: int | None = None, retry: int | None = None
) -> bytes:
    """One SSE message. `data` may hold newlines: each line becomes its own `data:` field
    (the browser joins them with "\\n"). CR and LF are both line ends in SSE, so a lone CR
    is treated as one too; field values never contain one."""
    text = data.decode() if isinstance(data, bytes) else data
    parts: list[str] = []
    if retry is not None:
        parts.append(f"retry: {int(retry)}\n")
    if id is not None:
        parts.append(f"id: {int(id)}\n")
    if event is not None:
        if "\n" in event or "\r" in event:
            raise ValueError(f"an event name cannot contain a line break: {event!r}")
        parts.append(f"event: {event}\n")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    parts.extend(f"data: {line}\n" for line in lines)
    parts.append("\n")
    return "".join(parts).encode()


def comment(text: str = "") -> bytes:
    """A comment line: ignored by the browser, keeps the connection alive."""
    return f": {text.splitlines()[0] if text else ''}\n\n".encode()


def last_event_id(headers: dict[str, str], query: dict[str, list[str]] | None = None) -> int | None:
    """The id to resume after: the `Last-Event-ID` header a reconnecting browser sends, or a
    `last_event_id` query parameter; None when absent or not a plain non-negative integer."""
    value = headers.get("last-event-id")
    if value is None and query and query.get("last_event_id"):
        value = query["last_event_id"][0]
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        return None
    return int(value)


class FrameCache:
    """Bus events encoded once for every client (ten tabs cost one encoding, not ten).

    `transform` may turn an event into the JSON object sent (default: id, kind, at, data)."""

    def __init__(
        self, size: int = 512, transform: Callable[[Event], dict[str, Any]] | None = None
    ) -> None:
        self._frames: OrderedDict[int, bytes] = OrderedDict()
        self._size = size
        self._transform = transform or Event.as_dict

    def __call__(self, event: Event) -> bytes:
        cached = self._frames.get(event.id)
        if cached is not None:
            return cached
        encoded = frame(orjson.dumps(self._transform(event)), event=event.kind, id=event.id)
        self._frames[event.id] = encoded
        if len(self._frames) > self._size:
            self._frames.popitem(last=False)
        return encoded


def open_subscription(
    bus: EventBus, kinds: Iterable[str] | None, after: int | None, maxsize: int = QUEUE
) -> tuple[Subscription, bool]:
    """Subscribe, replaying what came after `after`; the flag says whether the client missed
    events the bus no longer keeps (or the ids are from an earlier run of the balancer), so
    it should reload what it shows rather than trust the replay."""
    gap = False
    if after is not None:
        kept = bus.recent(None, limit=1 << 30)
        newest = kept[-1].id if kept else 0
        oldest = kept[0].id if kept else newest + 1
        gap = after > newest or after + 1 < oldest
    return bus.subscribe(kinds, maxsize=maxsize, after=after), gap


Pulse = Callable[[int], bytes | None]


class EventStream:
    """The frames of one client's stream (`event_stream`). Closing it closes the
    subscription even when iteration never began (a client gone before its stream started),
    which an async generator's `finally` would not."""

    __slots__ = ("_frames", "subscription")

    def __init__(self, subscription: Subscription, frames: AsyncGenerator[bytes, None]) -> None:
        self.subscription = subscription
        self._frames = frames

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> bytes:
        return await anext(self._frames)

    async def aclose(self) -> None:
        self.subscription.close()
        await self._frames.aclose()


def event_stream(
    subscription: Subscription,
    encode: Callable[[Event], bytes],
    *,
    last_id: int = 0,
    heartbeat: float = HEARTBEAT,
    retry_ms: int = RETRY_MS,
    prelude: Iterable[bytes] = (),
    pulse: Pulse | None = None,
    pulse_every: float = 1.0,
    pulse_after: frozenset[str] = frozenset(),
) -> EventStream:
    """The frames of one client's stream, until the client goes away (the server cancels the
    iterator), falls behind (the stream ends: the browser reconnects and resumes), or the
    subscription is closed. The subscription is always closed at the end.

    `pulse(last_id)` is asked for a state frame every `pulse_every` seconds, and at once after
    an event whose kind is in `pulse_after`; it returns None when it has nothing new."""
    frames = _frames(
        subscription, encode, last_id, heartbeat, retry_ms, prelude, pulse, pulse_every,
        pulse_after,
    )  # fmt: skip
    return EventStream(subscription, frames)


async def _frames(
    subscription: Subscription,
    encode: Callable[[Event], bytes],
    last_id: int,
    heartbeat: float,
    retry_ms: int,
    prelude: Iterable[bytes],
    pulse: Pulse | None,
    pulse_every: float,
    pulse_after: frozenset[str],
) -> AsyncGenerator[bytes, None]:
    loop = asyncio.get_running_loop()
    try:
        yield b"retry: %d\n\n" % retry_ms
        for data in prelude:
            yield data
        last_write = loop.time()
        next_pulse = loop.time() if pulse is not None else float("inf")
        while True:
            if subscription.dropped:
                # It fell behind: end here rather than skip events silently. The browser
                # reconnects with the last id it got and the bus replays what followed.
                yield comment("behind: reconnect and resume")
                return
            now = loop.time()
            if pulse is not None and now >= next_pulse:
                state = pulse(last_id)
                if state is None:
                    next_pulse = now + PULSE_RETRY
                    continue
                next_pulse = now + pulse_every
                last_write = now
                yield state
                continue
            event = subscription.get_nowait()
            if event is None:
                wait = min(last_write + heartbeat, next_pulse) - now
                try:
                    async with asyncio.timeout(max(wait, 0.0)):
                        event = await subscription.get()
                except TimeoutError:
                    if loop.time() >= last_write + heartbeat:
                        last_write = loop.time()
                        yield comment()
                    continue
                except StopAsyncIteration:  # closed: an async generator must not re-raise it
                    return
            last_id = event.id
            last_write = loop.time()
            yield encode(event)
            if event.kind in pulse_after:
                next_pulse = loop.time()
    finally:
        subscription.close()
