"""RedisStore: the registry as one JSON value in Redis, written with a revision check (a
save whose revision is not the stored one is a `StoreConflict`: another instance saved
first), changes announced on a pub/sub channel so several instances share one registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import orjson

from .errors import StoreConflict, StoreCorrupt, StoreError, StoreUnavailable
from .saved import SavedState

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub
    from redis.commands.core import AsyncScript

log = logging.getLogger("bunancer.store")


_SAVE_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, doc = pcall(cjson.decode, current)
  if not ok or type(doc) ~= 'table' or type(doc['revision']) ~= 'number' then
    return {-1, 0}
  end
  if doc['revision'] ~= tonumber(ARGV[1]) then
    return {0, doc['revision']}
  end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return {1, 0}
"""

WATCH_PING_INTERVAL = 5.0  # an idle watch connection is PINGed; no answer in 2 intervals: lost
RECONNECT_DELAY_MAX = 1.0


def redact_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def check_redis_url(url: str) -> None:
    """Raise `StoreError` unless `url` is redis://[[user]:password@]host[:port][/db] (or
    rediss://, or unix:///path/to/socket)."""
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when not a number in range
    except ValueError as error:
        raise StoreError(f"bad Redis URL {redact_url(url)!r}: {error}") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise StoreError(f"bad Redis URL {redact_url(url)!r}: use redis://host:port/db")
    if parts.scheme == "unix":
        if not parts.path:
            raise StoreError(f"bad Redis URL {redact_url(url)!r}: no socket path")
        return
    if not parts.hostname:
        raise StoreError(f"bad Redis URL {redact_url(url)!r}: no host")
    if port == 0:
        raise StoreError(f"bad Redis URL {redact_url(url)!r}: port 0")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise StoreError(f"bad Redis URL {redact_url(url)!r}: database {db!r} is not a number")


class RedisStore:
    """The state as one JSON value at `{prefix}:state`; saves announced on `{prefix}:events`.

    A save runs one Lua script that checks the stored revision, writes and publishes
    `{"instance": ..., "revision": ...}`. `watch()` has its own connections (pub/sub, GET), fetches
    the state when another instance announces a save (and after every (re)subscribe, so
    nothing said while it was disconnected is missed) and yields it when it differs from what
    this instance last loaded, saved or yielded.
    """

    def __init__(self, url: str, key_prefix: str = "bunancer") -> None:
        check_redis_url(url)
        if not key_prefix:
            raise StoreError("the Redis key prefix must not be empty")
        try:
            import redis.asyncio
            import redis.exceptions
        except ImportError:
            raise StoreError("the Redis store needs redis-py: pip install 'redis>=5.0.1'") from None
        self.url = url
        self.state_key = f"{key_prefix}:state"
        self.channel = f"{key_prefix}:events"
        self.instance_id = secrets.token_hex(8)
        self.description = f"redis {redact_url(url)} (key {self.state_key})"
        self._errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            OSError,
        )
        # watch() starts over on anything Redis-related: it must outlive restarts and failovers.
        self._watch_errors = (*self._errors, redis.exceptions.RedisError, StoreUnavailable)
        self._response_error = redis.exceptions.ResponseError
        # One quick retry: a pooled connection the server closed is replaced at once; an
        # answer lost in that window shows as a StoreConflict on the retry (reload, retry).
        self._client: Redis = self._connect(retries=1)
        self._script: AsyncScript = self._client.register_script(_SAVE_SCRIPT)
        self._closed = asyncio.Event()
        self._known: bytes | None = None  # digest of the state last loaded, saved or yielded
        # Digest of the state a save in flight is writing: a fetch the watch makes meanwhile
        # (for another instance's earlier message) may already read it, and must not yield it.
        self._saving: bytes | None = None

    def __repr__(self) -> str:
        return f"<RedisStore {self.description} instance={self.instance_id}>"

    def _connect(self, retries: int) -> Redis:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff

        return Redis.from_url(
            self.url,
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            socket_keepalive=True,
            retry=Retry(ExponentialBackoff(cap=0.25, base=0.025), retries),
            client_name=f"bunancer-{self.instance_id}",
        )

    def _unavailable(self, error: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"Redis at {redact_url(self.url)} does not answer: {error}")

    async def _fetch(self, client: Redis) -> tuple[SavedState | None, bytes | None]:
        try:
            raw = await client.get(self.state_key)
        except self._errors as error:
            raise self._unavailable(error) from error
        if raw is None:
            return None, None
        if isinstance(raw, str):  # only with decode_responses, which this store never sets
            raw = raw.encode()
        try:
            state = SavedState.from_json(raw)
        except StoreCorrupt as error:
            raise StoreCorrupt(f"{self.description}: {error}") from None
        return state, hashlib.blake2b(raw, digest_size=16).digest()

    async def load(self) -> SavedState | None:
        state, digest = await self._fetch(self._client)
        self._known = digest
        return state

    async def save(self, state: SavedState) -> None:
        revision = state.revision + 1
        data = dataclasses.replace(state, revision=revision).to_json()
        message = orjson.dumps({"instance": self.instance_id, "revision": revision})
        digest = hashlib.blake2b(data, digest_size=16).digest()
        self._saving = digest
        try:
            status, stored = await self._script(
                keys=[self.state_key], args=[state.revision, data, self.channel, message]
            )
        except self._errors as error:
            raise self._unavailable(error) from error
        except self._response_error as error:
            raise StoreError(f"{self.description}: save failed: {error}") from error
        finally:
            self._saving = None
        if status == -1:
            raise StoreCorrupt(f"{self.description}: the stored value has no valid revision")
        if status == 0:
            raise StoreConflict(
                f"{self.description}: stored revision is {stored}, this change was made "
                f"on revision {state.revision}: reload and retry"
            )
        state.revision = revision
        self._known = digest

    async def watch(self) -> AsyncIterator[SavedState]:
        client = self._connect(retries=0)  # errors reach the loop below at once
        failures = 0
        try:
            while not self._closed.is_set():
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.subscribe(self.channel)
                    if failures:
                        log.warning("%s: watch reconnected", self.description)
                    failures = 0
                    # Subscribed first, then fetched: a save in between is seen by one or both.
                    changed = await self._changed(client)
                    if changed is not None:
                        yield changed
                    async for state in self._follow(pubsub, client):
                        yield state
                except self._watch_errors as error:
                    if self._closed.is_set():
                        break
                    failures += 1
                    if failures == 1:
                        log.warning("%s: watch lost (%s); reconnecting", self.description, error)
                    delay = min(RECONNECT_DELAY_MAX, 0.05 * 2 ** (failures - 1))
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._closed.wait()
                finally:
                    with contextlib.suppress(*self._errors):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
        finally:
            with contextlib.suppress(*self._errors):
                await client.aclose()

    async def _changed(self, client: Redis) -> SavedState | None:
        """The stored state if it differs from the one this instance knows (None once
        closed: nothing is yielded after `close()`)."""
        try:
            state, digest = await self._fetch(client)
        except StoreCorrupt as error:
            log.error("%s", error)  # keep watching: the next valid save is still wanted
            return None
        if state is None or digest in (self._known, self._saving) or self._closed.is_set():
            return None
        self._known = digest
        return state

    async def _follow(self, pubsub: PubSub, client: Redis) -> AsyncIterator[SavedState]:
        """Yield states announced by other instances until closed; raise when the
        connection is lost (including a PING left unanswered)."""
        closed = asyncio.ensure_future(self._closed.wait())
        ping_pending = False
        try:
            while True:
                receive = asyncio.ensure_future(
                    pubsub.get_message(ignore_subscribe_messages=True, timeout=WATCH_PING_INTERVAL)
                )
                try:
                    await asyncio.wait({receive, closed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not receive.done():
                        receive.cancel()
                        with contextlib.suppress(asyncio.CancelledError, *self._errors):
                            await receive
                if closed.done():
                    return
                message = receive.result()
                if message is None:  # quiet for a whole interval
                    if ping_pending:
                        raise TimeoutError(f"no answer to PING within {WATCH_PING_INTERVAL}s")
                    await pubsub.ping()
                    ping_pending = True
                    continue
                ping_pending = False
                if message["type"] != "message" or self._own(message["data"]):
                    continue
                state = await self._changed(client)
                if state is not None:
                    yield state
        finally:
            closed.cancel()

    def _own(self, data: bytes) -> bool:
        try:
            announced = orjson.loads(data)
            return bool(announced["instance"] == self.instance_id)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("%s: ignoring a malformed message on %s", self.description, self.channel)
            return True

    async def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(*self._errors):
            await self._client.aclose()
