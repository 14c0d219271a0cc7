"""Store: where the control plane's pools and servers persist between runs.

It owns the saved shape (`State`, `PoolRecord`, `ServerRecord`, JSON with a format number,
validated on load), the `Store` interface the registry uses (`load`, `save`, `watch`,
`close`), `FileStore` (one `state.json` replaced atomically, the previous good copy kept as
`state.json.bak`) and `RedisStore` (one JSON value written with a revision check, changes
announced on a pub/sub channel so several instances share one registry).

Revisions: `save` writes `state.revision + 1` and sets `state.revision` to it once the write
is durable. RedisStore refuses a save whose `state.revision` is not the stored revision
(`StoreConflict`: another instance saved first; reload and retry); with nothing stored, any
revision is taken. FileStore has one writer and never conflicts; the last save wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import secrets
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import orjson

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub
    from redis.commands.core import AsyncScript

log = logging.getLogger("bunancer.store")

FORMAT = 1  # bumped when the saved shape changes incompatibly
ADMIN_STATES = ("enabled", "disabled", "draining")
SOURCES = ("config", "api")


class StoreError(Exception):
    """Base of every store error; the message is meant for an operator."""


class StoreCorrupt(StoreError):
    """The saved state is not valid (bad JSON, wrong shape); the message says where."""


class StoreConflict(StoreError):
    """Another instance saved first: reload, apply the change again, save again."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or written (Redis down, disk error)."""


# -- the saved shape ----------------------------------------------------------------------------


@dataclass
class ServerRecord:
    id: str
    host: str
    port: int
    weight: int = 1
    admin: str = "enabled"  # "enabled" | "disabled" | "draining"
    source: str = "api"  # "config" | "api"
    health: dict[str, Any] = field(default_factory=dict)  # per-server overrides, opaque here


@dataclass
class PoolRecord:
    name: str
    algorithm: str = "round-robin"
    health: dict[str, Any] = field(default_factory=dict)  # pool health settings, opaque here
    servers: list[ServerRecord] = field(default_factory=list)
    outlier: dict[str, Any] = field(default_factory=dict)  # passive ejection, opaque here
    balancing: dict[str, Any] = field(default_factory=dict)  # algorithm options, opaque here


@dataclass
class State:
    pools: dict[str, PoolRecord] = field(default_factory=dict)
    revision: int = 0  # bumped on every save

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT,
            "revision": self.revision,
            "pools": [
                {
                    "name": pool.name,
                    "algorithm": pool.algorithm,
                    "health": pool.health,
                    "outlier": pool.outlier,
                    "balancing": pool.balancing,
                    "servers": [dataclasses.asdict(server) for server in pool.servers],
                }
                for pool in self.pools.values()
            ],
        }
        # Indented: state.json is small, rarely written and read by people.
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)

    @classmethod
    def from_json(cls, data: bytes) -> State:
        """Parse and validate; raise `StoreCorrupt` naming the first bad key."""
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as error:
            raise StoreCorrupt(f"not valid JSON ({error})") from None
        return _parse_state(doc)


def _fail(where: str, problem: str) -> StoreCorrupt:
    return StoreCorrupt(f"{where}: {problem}" if where else problem)


def _object(value: Any, where: str, required: set[str], optional: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"expected an object, got {type(value).__name__}")
    for key in value:
        if key not in required and key not in optional:
            raise _fail(where, f"unknown key {key!r}")
    for key in sorted(required):
        if key not in value:
            raise _fail(where, f"missing key {key!r}")
    return value


def _integer(value: Any, where: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise _fail(where, f"expected an integer {bound}, got {value}")
    return value


def _text(value: Any, where: str, choices: tuple[str, ...] = ()) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(where, f"expected a non-empty string, got {value!r}")
    if choices and value not in choices:
        raise _fail(where, f"expected one of {', '.join(choices)}, got {value!r}")
    return value


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"expected an object, got {type(value).__name__}")
    return value


def _parse_state(doc: Any) -> State:
    _object(doc, "", {"format", "revision", "pools"}, set())
    if doc["format"] != FORMAT:
        raise _fail("format", f"expected {FORMAT}, got {doc['format']!r} (another version?)")
    revision = _integer(doc["revision"], "revision", 0)
    if not isinstance(doc["pools"], list):
        raise _fail("pools", "expected a list")
    pools: dict[str, PoolRecord] = {}
    for index, item in enumerate(doc["pools"]):
        where = f"pools[{index}]"
        _object(item, where, {"name"}, {"algorithm", "health", "outlier", "balancing", "servers"})
        name = _text(item["name"], f"{where}.name")
        if name in pools:
            raise _fail(f"{where}.name", f"duplicate pool {name!r}")
        servers_doc = item.get("servers", [])
        if not isinstance(servers_doc, list):
            raise _fail(f"{where}.servers", "expected a list")
        servers = [_parse_server(s, f"{where}.servers[{i}]") for i, s in enumerate(servers_doc)]
        seen: set[str] = set()
        for i, server in enumerate(servers):
            if server.id in seen:
                raise _fail(f"{where}.servers[{i}].id", f"duplicate server {server.id!r}")
            seen.add(server.id)
        pools[name] = PoolRecord(
            name=name,
            algorithm=_text(item.get("algorithm", "round-robin"), f"{where}.algorithm"),
            health=_mapping(item.get("health", {}), f"{where}.health"),
            servers=servers,
            outlier=_mapping(item.get("outlier", {}), f"{where}.outlier"),
            balancing=_mapping(item.get("balancing", {}), f"{where}.balancing"),
        )
    return State(pools=pools, revision=revision)


def _parse_server(item: Any, where: str) -> ServerRecord:
    _object(item, where, {"id", "host", "port"}, {"weight", "admin", "source", "health"})
    return ServerRecord(
        id=_text(item["id"], f"{where}.id"),
        host=_text(item["host"], f"{where}.host"),
        port=_integer(item["port"], f"{where}.port", 1, 65535),
        weight=_integer(item.get("weight", 1), f"{where}.weight", 0),
        admin=_text(item.get("admin", "enabled"), f"{where}.admin", ADMIN_STATES),
        source=_text(item.get("source", "api"), f"{where}.source", SOURCES),
        health=_mapping(item.get("health", {}), f"{where}.health"),
    )


# -- the interface ------------------------------------------------------------------------------


class Store(Protocol):
    description: str  # for banners and logs, e.g. "file .bunancer/state.json"

    async def load(self) -> State | None:
        """The saved state, or None when nothing was ever saved."""
        ...

    async def save(self, state: State) -> None:
        """Write `state` durably and bump `state.revision`."""
        ...

    def watch(self) -> AsyncIterator[State]:
        """States saved by other instances, as they are saved; ends at `close()`."""
        ...

    async def close(self) -> None: ...


def open_store(spec: str, state_dir: str | os.PathLike[str]) -> Store:
    """The store named by the config's `store` value: "file" or a redis:// URL."""
    if spec == "file":
        return FileStore(Path(state_dir) / "state.json")
    return RedisStore(spec)


# -- file ---------------------------------------------------------------------------------------


class FileStore:
    """One JSON file replaced atomically; the previous good copy is kept as `<name>.bak`.

    A save writes a temporary file in the same directory, fsyncs it, hard-links the current
    file to `.bak`, renames the temporary file over the current one and fsyncs the directory:
    after a crash at any point both names hold complete files. Writes run in a thread so the
    loop never waits on fsync.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.backup = self.path.with_name(self.path.name + ".bak")
        self.description = f"file {self.path}"
        self._lock = asyncio.Lock()  # saves in call order; the last one wins
        self._write_lock = threading.Lock()  # a cancelled save's thread may still be writing
        self._closed = asyncio.Event()
        self._revision = 0  # highest revision loaded or handed out
        self._written = 0  # highest revision on disk (under _write_lock)
        self._current_good: bool | None = None  # is `path` worth keeping as .bak? None: unknown
        self._swept = False

    def __repr__(self) -> str:
        return f"<FileStore {self.path} revision={self._revision}>"

    async def load(self) -> State | None:
        async with self._lock:
            state = await asyncio.to_thread(self._load)
            if state is not None:
                self._revision = max(self._revision, state.revision)
            return state

    async def save(self, state: State) -> None:
        async with self._lock:
            revision = max(self._revision, state.revision) + 1
            self._revision = revision  # reserved even if the write fails: revisions only grow
            data = dataclasses.replace(state, revision=revision).to_json()
            try:
                await asyncio.to_thread(self._write, data, revision)
            except OSError as error:
                raise StoreUnavailable(f"cannot write {self.path}: {error}") from error
            state.revision = revision

    async def watch(self) -> AsyncIterator[State]:
        # One process owns the file: nothing else changes it. Wait until closed, yield nothing.
        await self._closed.wait()
        return
        yield  # makes this an async generator

    async def close(self) -> None:
        self._closed.set()
        async with self._lock:  # a save in progress finishes first
            pass

    # -- in a thread ---------------------------------------------------------------------------

    def _read(self, path: Path) -> tuple[State | None, str | None]:
        """(state, None), (None, problem), or (None, None) when the file does not exist."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, None
        except OSError as error:
            return None, f"cannot read ({error.strerror})"
        if not data:
            return None, "empty file"
        try:
            return State.from_json(data), None
        except StoreCorrupt as error:
            return None, str(error)

    def _load(self) -> State | None:
        state, problem = self._read(self.path)
        if state is not None:
            self._current_good = True
            return state
        self._current_good = None if problem is None else False
        backup, backup_problem = self._read(self.backup)
        if backup is not None:
            why = "is missing" if problem is None else f"is corrupt ({problem})"
            log.warning(
                "%s %s; using %s (revision %d)", self.path, why, self.backup, backup.revision
            )
            return backup
        if problem is None and backup_problem is None:
            return None  # never saved
        raise StoreCorrupt(
            f"no usable saved state: {self.path}: {problem or 'missing'}; "
            f"{self.backup}: {backup_problem or 'missing'}"
        )

    def _write(self, data: bytes, revision: int) -> None:
        with self._write_lock:
            if revision <= self._written:
                return  # a newer save already landed (this one's task was cancelled)
            directory = self.path.parent
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self._swept:
                self._remove_stale_temporaries()
                self._swept = True
            temporary = self._temporary(self.path)
            try:
                self._write_file(temporary, data)
                if self.path.exists():
                    self._keep_backup()
                os.replace(temporary, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
            self._current_good = True
            _fsync_directory(directory)
            self._written = revision

    def _temporary(self, target: Path) -> Path:
        # Same directory (rename is atomic only within a filesystem); the pid lets a later
        # process remove what a crashed one left.
        return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")

    @staticmethod
    def _write_file(path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def _keep_backup(self) -> None:
        """Make `.bak` the current file, unless the current file is corrupt."""
        if self._current_good is None:
            self._current_good = self._read(self.path)[0] is not None
        if not self._current_good:
            log.warning("%s is corrupt: keeping the older %s", self.path, self.backup)
            return
        with contextlib.suppress(FileNotFoundError):
            if self.path.samefile(self.backup):
                # A crash between the two renames left both names on one file; renaming a
                # link onto its own file does nothing and would leave the temporary behind.
                return
        temporary = self._temporary(self.backup)
        try:
            os.link(self.path, temporary)  # same inode, already fsynced when it was written
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
                raise
            self._write_file(temporary, self.path.read_bytes())  # no hard links here
        try:
            os.replace(temporary, self.backup)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def _remove_stale_temporaries(self) -> None:
        for name in (self.path.name, self.backup.name):
            for leftover in self.path.parent.glob(f".{name}.*.tmp"):
                pid = leftover.name[len(name) + 2 :].split(".", 1)[0]
                if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
                    with contextlib.suppress(OSError):
                        leftover.unlink()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- redis --------------------------------------------------------------------------------------

# KEYS[1] state key; ARGV: expected revision, new state JSON, channel, message.
# Returns {status, stored revision}: 1 written, 0 revision mismatch, -1 stored value corrupt.
# The check, the write and the announcement happen in one atomic step. A missing key (never
# saved, or a Redis that lost its data) takes any revision: there is nothing to overwrite,
# and revisions keep growing from the writer's instead of starting again at 1.
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

    async def _fetch(self, client: Redis) -> tuple[State | None, bytes | None]:
        try:
            raw = await client.get(self.state_key)
        except self._errors as error:
            raise self._unavailable(error) from error
        if raw is None:
            return None, None
        if isinstance(raw, str):  # only with decode_responses, which this store never sets
            raw = raw.encode()
        try:
            state = State.from_json(raw)
        except StoreCorrupt as error:
            raise StoreCorrupt(f"{self.description}: {error}") from None
        return state, hashlib.blake2b(raw, digest_size=16).digest()

    async def load(self) -> State | None:
        state, digest = await self._fetch(self._client)
        self._known = digest
        return state

    async def save(self, state: State) -> None:
        revision = state.revision + 1
        data = dataclasses.replace(state, revision=revision).to_json()
        message = orjson.dumps({"instance": self.instance_id, "revision": revision})
        try:
            status, stored = await self._script(
                keys=[self.state_key], args=[state.revision, data, self.channel, message]
            )
        except self._errors as error:
            raise self._unavailable(error) from error
        except self._response_error as error:
            raise StoreError(f"{self.description}: save failed: {error}") from error
        if status == -1:
            raise StoreCorrupt(f"{self.description}: the stored value has no valid revision")
        if status == 0:
            raise StoreConflict(
                f"{self.description}: stored revision is {stored}, this change was made "
                f"on revision {state.revision}: reload and retry"
            )
        state.revision = revision
        self._known = hashlib.blake2b(data, digest_size=16).digest()

    async def watch(self) -> AsyncIterator[State]:
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

    async def _changed(self, client: Redis) -> State | None:
        """The stored state if it differs from the one this instance knows (None once
        closed: nothing is yielded after `close()`)."""
        try:
            state, digest = await self._fetch(client)
        except StoreCorrupt as error:
            log.error("%s", error)  # keep watching: the next valid save is still wanted
            return None
        if state is None or digest == self._known or self._closed.is_set():
            return None
        self._known = digest
        return state

    async def _follow(self, pubsub: PubSub, client: Redis) -> AsyncIterator[State]:
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
