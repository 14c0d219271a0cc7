"""A lazily re-armed timer: one timer handle per connection, not one per request.

Moving the deadline later is an attribute write; the handle fires at the old time, sees
the new deadline and re-arms itself once. Only moving it earlier than the armed handle
costs a cancel. This is how the data plane keeps `asyncio.wait_for` and per-request
`call_later` off the hot path (aiohttp's keep-alive timer does the same).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def _nothing() -> None:
    pass


class Deadline:
    __slots__ = ("_armed_at", "_callback", "_handle", "_loop", "at")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        self.at = 0.0  # 0.0 means no deadline (the hot path writes 0.0 here to clear)

    def set(self, seconds: float) -> None:
        # call_later, not call_at: uvloop's call_at is call_later after one more clock read.
        at = self._loop.time() + seconds
        self.at = at
        handle = self._handle
        if handle is None:
            self._handle = self._loop.call_later(seconds, self._fire)
            self._armed_at = at
        elif at < self._armed_at:
            handle.cancel()
            self._handle = self._loop.call_later(seconds, self._fire)
            self._armed_at = at

    def clear(self) -> None:
        """No deadline; an armed handle stays and fires into nothing (cheaper than cancel)."""
        self.at = 0.0

    def cancel(self) -> None:
        self.at = 0.0
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def close(self) -> None:
        """Cancel for good and drop the callback.

        The callback is usually a bound method of the object holding this deadline: a
        reference cycle that only the cyclic GC could free. Dropping it lets refcounting
        free the owner the moment its connection ends.
        """
        self.cancel()
        self._callback = _nothing

    def _fire(self) -> None:
        self._handle = None
        at = self.at
        if not at:
            return
        now = self._loop.time()
        if now < at:
            self._handle = self._loop.call_later(at - now, self._fire)
            self._armed_at = at
            return
        self.at = 0.0
        self._callback()
