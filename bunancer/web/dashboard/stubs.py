"""The dashboard's bridge to the stubs SDK: which stub answers at a server's address, and a
stub's access log followed live.

The SDK blocks (files, /proc, control sockets), so every call runs in a worker thread; the
listing of stubs is shared by the pages for `STUB_CACHE` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stubs.sdk import Stub

    from ...control.registry import Registry

log = logging.getLogger("bunancer.dashboard")

LOG_FOLLOWERS = 8  # live stub logs open at once (each holds a thread)
STUB_CACHE = 1.5  # seconds the list of stubs is reused between pages
LOG_BUFFER = 2000  # log lines held for a page that reads slowly

# A stub's id, pid, pool and behaviour by the (host, port) it answers at.
StubsByAddress = dict[tuple[str, int], dict[str, Any]]


class StubDirectory:
    """The stubs of the balancer's state dir, matched to servers by address."""

    def __init__(self, state_dir: str) -> None:
        from stubs.sdk import StubManager  # the stubs package ships beside bunancer

        self.manager = StubManager(state_dir)
        self._cache: StubsByAddress = {}
        self._at = -STUB_CACHE
        self._lock = asyncio.Lock()
        self.followers = 0

    def invalidate(self) -> None:
        """Forget the listing: a stub was started, changed or stopped."""
        self._at = -STUB_CACHE

    async def run(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`call` in a worker thread: the SDK blocks."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: call(*args, **kwargs))

    async def by_address(self) -> StubsByAddress:
        async with self._lock:  # one listing at a time; the others reuse it
            if time.monotonic() - self._at < STUB_CACHE:
                return self._cache
            try:
                self._cache = await self.run(self._list)
            except Exception:  # a broken state dir must not break the pages
                log.exception("listing stubs failed")
                self._cache = {}
            self._at = time.monotonic()
            return self._cache

    def _list(self) -> StubsByAddress:
        from stubs.sdk import StubError

        found: StubsByAddress = {}
        for stub in self.manager.list():
            try:
                behaviour = stub.behaviour()
                described, settings = behaviour.describe(), behaviour.to_dict()
            except StubError:
                described, settings = "?", {}
            found[(host_key(stub.host), stub.port)] = {
                "id": stub.id,
                "pid": stub.pid,
                "pool": stub.pool,
                "behaviour": described,
                "settings": settings,
            }
        return found


def host_key(host: str) -> str:
    """The host as addresses are matched: "localhost" and "127.0.0.1" are one."""
    return "127.0.0.1" if host in ("localhost", "127.0.0.1") else host


def recheck_servers_of(registry: Registry, stub: Stub) -> None:
    """Check the stub's servers now, not at their next check (10 s away once dead): what
    the user just changed on it shows at once."""
    address = (host_key(stub.host), stub.port)
    for record in registry.all_records():
        server = record.server
        if (host_key(server.host), server.port) == address:
            registry.recheck(record)


async def follow_log(
    directory: StubDirectory, stub_id: str, lines: int = 50
) -> AsyncIterator[str | None]:
    """Lines of a stub's access log as they are written (`StubManager.follow` runs in a
    thread of its own: it blocks while it waits). None marks lines skipped because the
    reader fell more than `LOG_BUFFER` lines behind: memory stays bounded."""
    loop = asyncio.get_running_loop()
    buffer: deque[str] = deque(maxlen=LOG_BUFFER)  # appended by the thread, drained here
    wake = asyncio.Event()
    stop = threading.Event()
    outcome: list[BaseException | None] = []  # set by the thread when it ends
    skipped = [0]

    def pump() -> None:
        try:
            for line in directory.manager.follow(stub_id, lines, stop=stop.is_set):
                if stop.is_set():
                    return
                if len(buffer) == buffer.maxlen:
                    skipped[0] += 1  # the deque drops the oldest line
                buffer.append(line)
                if len(buffer) == 1:  # it was empty: the reader may be waiting
                    loop.call_soon_threadsafe(wake.set)
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)
        finally:
            if not outcome:
                outcome.append(None)
            loop.call_soon_threadsafe(wake.set)

    thread = threading.Thread(target=pump, name=f"dashboard-log-{stub_id}", daemon=True)
    thread.start()
    reported = 0
    try:
        while True:
            wake.clear()
            while buffer:
                if skipped[0] != reported:
                    reported = skipped[0]
                    yield None
                yield buffer.popleft()
            if outcome:
                if buffer:
                    continue
                if outcome[0] is not None:
                    raise outcome[0]
                return
            await wake.wait()
    finally:
        stop.set()  # the thread sees it within one poll (0.1 s) and ends
