"""RedisStore against a real redis-server started by the test: revision checks, change
notices between two instances, and a watch that survives a Redis restart."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bunancer.control.store import (
    RedisStore,
    SavedPool,
    SavedServer,
    SavedState,
    StoreConflict,
    StoreCorrupt,
    StoreUnavailable,
    open_store,
)
from bunancer.control.store import redis_store as store_module
from tests.helpers import RedisServer, free_port

# Without redis-server on PATH the `redis_server` fixture skips (or, with `CI` set, fails)
# the tests that need one.


def prefix() -> str:
    return f"test-{secrets.token_hex(4)}"


def state_with(marker: str, revision: int = 0) -> SavedState:
    return SavedState(
        pools={
            "web": SavedPool(
                "web",
                health={"path": "/" + marker.replace(" ", "-")},
                servers=[SavedServer("a", "127.0.0.1", 9001, weight=2, source="config")],
            )
        },
        revision=revision,
    )


@asynccontextmanager
async def watching(store: RedisStore) -> AsyncIterator[asyncio.Queue[SavedState]]:
    """Follow `store.watch()` in a task; the queue receives every state it yields."""
    queue: asyncio.Queue[SavedState] = asyncio.Queue()

    async def follow() -> None:
        async for state in store.watch():
            queue.put_nowait(state)

    task = asyncio.create_task(follow())
    try:
        yield queue
    finally:
        await store.close()
        async with asyncio.timeout(5):  # watch() ends when its store closes
            await task


async def next_state(queue: asyncio.Queue[SavedState], within: float) -> SavedState:
    async with asyncio.timeout(within):
        return await queue.get()


def test_nothing_saved_then_round_trip(redis_server: RedisServer) -> None:
    async def main() -> None:
        key = prefix()
        a, b = RedisStore(redis_server.url, key), RedisStore(redis_server.url, key)
        assert await a.load() is None
        state = state_with("one")
        await a.save(state)
        assert state.revision == 1
        assert await b.load() == state
        assert a.description == f"redis {redis_server.url} (key {key}:state)"
        await a.close()
        await b.close()

    asyncio.run(main())


def test_open_store_with_a_redis_url(redis_server: RedisServer, tmp_path: Path) -> None:
    store = open_store(redis_server.url, tmp_path)
    assert isinstance(store, RedisStore)
    assert store.state_key == "bunancer:state"
    asyncio.run(store.close())


def test_a_save_reaches_the_other_instance_within_a_second(redis_server: RedisServer) -> None:
    async def main() -> None:
        key = prefix()
        a, b = RedisStore(redis_server.url, key), RedisStore(redis_server.url, key)
        state = state_with("start")
        await a.save(state)
        async with watching(a) as seen_by_a, watching(b) as seen_by_b:
            assert await b.load() == state  # known to b: not yielded again
            for n in range(5):
                state.pools["web"].health["path"] = f"/change-{n}"
                await a.save(state)
                got = await next_state(seen_by_b, within=1.0)
                assert got == state
            # b's own change reaches a; a's own saves never came back to a (the channel is
            # ordered, so they would have been first).
            mine = state_with("from b", revision=state.revision)
            await b.save(mine)
            assert await next_state(seen_by_a, within=1.0) == mine
            assert seen_by_a.empty()
            assert seen_by_b.empty()

    asyncio.run(main())


def test_stale_revision_is_a_conflict(redis_server: RedisServer) -> None:
    async def main() -> None:
        key = prefix()
        a, b = RedisStore(redis_server.url, key), RedisStore(redis_server.url, key)
        await a.save(state_with("base"))
        mine, theirs = await a.load(), await b.load()
        assert mine is not None
        assert theirs is not None
        mine.pools["web"].health["path"] = "/a-change"
        await a.save(mine)
        theirs.pools["web"].servers[0].weight = 5
        with pytest.raises(StoreConflict, match="stored revision is 2, this change was made"):
            await b.save(theirs)
        assert theirs.revision == 1  # not saved
        # The caller's part: reload, apply the change again, save again.
        fresh = await b.load()
        assert fresh is not None
        fresh.pools["web"].servers[0].weight = 5
        await b.save(fresh)
        final = await a.load()
        assert final is not None
        assert final.revision == 3
        assert final.pools["web"].health["path"] == "/a-change"
        assert final.pools["web"].servers[0].weight == 5
        await a.close()
        await b.close()

    asyncio.run(main())


def test_a_missing_key_takes_any_revision(redis_server: RedisServer) -> None:
    async def main() -> None:
        key = prefix()
        a, b = RedisStore(redis_server.url, key), RedisStore(redis_server.url, key)
        state = state_with("old", revision=41)  # e.g. from before Redis lost its data
        await a.save(state)
        assert state.revision == 42
        stale = state_with("stale", revision=41)
        with pytest.raises(StoreConflict, match="stored revision is 42"):
            await b.save(stale)
        await a.close()
        await b.close()

    asyncio.run(main())


def test_a_corrupt_value_is_named(redis_server: RedisServer) -> None:
    async def main() -> None:
        key = prefix()
        store = RedisStore(redis_server.url, key)
        await store._client.set(f"{key}:state", b'{"format": 1, "revision": 1, "pools": [')
        with pytest.raises(StoreCorrupt, match=rf"key {key}:state\): not valid JSON"):
            await store.load()
        with pytest.raises(StoreCorrupt, match="no valid revision"):
            await store.save(state_with("x"))
        await store.close()

    asyncio.run(main())


def test_a_redis_that_does_not_answer_is_named() -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"

    async def main() -> None:
        store = RedisStore(url)
        with pytest.raises(StoreUnavailable) as info:
            await store.load()
        assert f"Redis at redis://:***@127.0.0.1:{url.rsplit(':', 1)[1]} does not answer" in str(
            info.value
        )
        assert "s3cret" not in str(info.value)
        await store.close()

    asyncio.run(main())


async def until(condition: Callable[[], object], timeout: float) -> None:
    """Poll `condition` on the loop until it holds; fail after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def pings_seen(server: RedisServer) -> int:
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
        sock.sendall(b"INFO commandstats\r\n")
        data = b""
        while not data.endswith(b"\r\n\r\n") or data.count(b"\r\n") < 2:
            chunk = sock.recv(65536)
            assert chunk, "redis closed the connection"
            data += chunk
    match = re.search(rb"cmdstat_ping:calls=(\d+)", data)
    return int(match.group(1)) if match else 0


def test_a_quiet_watch_pings_and_stays_connected(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(store_module, "WATCH_PING_INTERVAL", 0.1)

    async def main() -> None:
        key = prefix()
        a, b = RedisStore(redis_server.url, key), RedisStore(redis_server.url, key)
        before = pings_seen(redis_server)
        async with watching(b) as seen:
            await until(lambda: pings_seen(redis_server) >= before + 3, timeout=5)
            state = state_with("after a quiet while")
            await a.save(state)
            assert await next_state(seen, within=1.0) == state
        await a.close()

    with caplog.at_level(logging.WARNING, logger="bunancer.store"):
        asyncio.run(main())
    assert not caplog.records  # every PING was answered: no reconnect


def test_a_redis_that_stops_answering_is_left_and_found_again(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(store_module, "WATCH_PING_INTERVAL", 0.1)

    def logged(text: str) -> bool:
        return any(text in record.getMessage() for record in caplog.records)

    async def main() -> None:
        key = prefix()
        a, b = RedisStore(redis_server.url, key), RedisStore(redis_server.url, key)
        assert redis_server.proc is not None
        pid = redis_server.proc.pid
        async with watching(b) as seen:
            first = state_with("subscribed")
            await a.save(first)
            assert await next_state(seen, within=1.0) == first  # b's watch is subscribed
            before = pings_seen(redis_server)
            await until(lambda: pings_seen(redis_server) > before, timeout=5)  # and PINGing
            os.kill(pid, signal.SIGSTOP)  # connections stay open, nothing answers
            try:
                await until(lambda: logged("no answer to PING"), timeout=5)
            finally:
                os.kill(pid, signal.SIGCONT)
            state = state_with("answering again", revision=first.revision)
            await a.save(state)
            assert await next_state(seen, within=10.0) == state
        await a.close()

    with caplog.at_level(logging.WARNING, logger="bunancer.store"):
        asyncio.run(main())
    assert logged("watch reconnected")


def test_watch_resumes_after_a_redis_restart(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        key = prefix()
        a, b = RedisStore(redis_server.url, key), RedisStore(redis_server.url, key)
        async with watching(b) as seen:
            state = state_with("before")
            await a.save(state)
            assert await next_state(seen, within=1.0) == state

            redis_server.stop()
            with pytest.raises(StoreUnavailable, match="does not answer"):
                await a.save(state)
            redis_server.start()  # same port, empty: it keeps nothing on disk

            # Nothing stored: any revision is taken, and revisions keep growing.
            assert await a.load() is None
            state.pools["web"].health["path"] = "/after"
            await a.save(state)
            assert state.revision == 2
            assert await next_state(seen, within=5.0) == state  # reconnect back-off: < 1 s

            state.pools["web"].health["path"] = "/settled"
            await a.save(state)
            assert await next_state(seen, within=1.0) == state
        await a.close()

    with caplog.at_level(logging.WARNING, logger="bunancer.store"):
        asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("watch lost" in m for m in messages), messages
    assert any("watch reconnected" in m for m in messages), messages
