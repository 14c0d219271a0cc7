"""Stub backend server on uvloop + httptools: answers any path with a small body naming its
id, fast enough never to be the bottleneck of a benchmark, and fails on demand.

The `Behaviour` (stubs/behaviour.py) decides what each request gets; this module only
carries the action out. With a plain behaviour (a status, no latency, no failures) a
response is pre-built bytes and one write. Every response carries ``X-Stub-Id``, and a
response after which the stub closes the connection carries ``Connection: close``.

``python -m stubs.server --port 9001 --id s1`` prints ``PORT <n>`` once listening. With
``--state-dir D`` it also writes its pid file, control socket and access log under
``D/stubs/`` (see stubs/state.py); with ``--register`` it joins a balancer's pool, retrying
while the balancer is not up, and leaves it on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import random
import signal
import socket
import struct
import sys
import time
from collections import deque
from http import HTTPStatus
from pathlib import Path
from typing import Any, BinaryIO

import httptools
import uvloop

from .behaviour import (
    FIELDS,
    HEALTH_PATH,
    Action,
    Behaviour,
    BehaviourError,
    CloseMidBody,
    Hang,
    Reset,
    Respond,
    SlowBody,
)
from .control import ControlError, serve_control
from .state import (
    ID_PATTERN,
    LOG_CAP,
    StubPaths,
    StubRecord,
    ensure_stubs_dir,
    is_live,
    process_argv,
    process_start_ticks,
    read_record,
    write_record,
)

EXIT_USAGE = 2
KEEP, CLOSE, KEEP10 = 0, 1, 2  # connection handling of a response: its header variant
NO_BODY = (204, 304)
MAX_QUEUED = 32  # pipelined requests waiting behind a slow one before reading pauses
LOG_FLUSH_INTERVAL = 0.25
HEALTH_PREFIX = HEALTH_PATH.encode()  # the fast path leaves anything like it to decide()

BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\nX-Stub-Id: %s\r\n\r\n"
)


def build_body(stub_id: str, size: int) -> bytes:
    """The id line, padded with x to `size` bytes when asked."""
    body = f"{stub_id}\n".encode()
    if size > len(body):
        body += b"x" * (size - len(body) - 1) + b"\n"
    return body


def build_head(stub_id: bytes, status: int, length: int | None, connection: int) -> bytes:
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b"Unknown"
    head = b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nX-Stub-Id: %s\r\n" % (
        status,
        reason,
        stub_id,
    )
    if length is not None:
        head += b"Content-Length: %d\r\n" % length
    if connection == CLOSE:
        head += b"Connection: close\r\n"
    elif connection == KEEP10:
        head += b"Connection: keep-alive\r\n"  # an HTTP/1.0 client closes without it
    return head + b"\r\n"


class AccessLog:
    """One line per request (time, method, path, status, latency), written in batches.

    Requests only append a tuple; formatting and writing happen every
    `LOG_FLUSH_INTERVAL` seconds. The file is rotated to ``.1`` at `cap` bytes.
    """

    def __init__(self, path: Path, cap: int = LOG_CAP) -> None:
        self.path = path
        self.cap = cap
        self.entries: list[tuple[float, bytes, bytes, int | str, float]] = []
        self.file = self._open()
        self._second = -1
        self._stamp = ""

    def _open(self) -> BinaryIO:
        return os.fdopen(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")

    def add(self, method: bytes, url: bytes, status: int | str, latency: float) -> None:
        self.entries.append((time.time(), method, url, status, latency))

    def event(self, text: str) -> None:
        """A stub event (registration, behaviour change) among the request lines."""
        self.flush()
        self._write(f"{self._time(time.time())} [stub] {text}\n".encode())

    def _time(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}"

    def flush(self) -> None:
        if not self.entries:
            return
        entries, self.entries = self.entries, []
        lines = [
            f"{self._time(at)} {method.decode('latin-1')} {url[:200].decode('latin-1')} "
            f"{status} {latency * 1000:.1f}ms\n"
            for at, method, url, status, latency in entries
        ]
        self._write("".join(lines).encode())

    def _write(self, data: bytes) -> None:
        try:
            if self.file.tell() and self.file.tell() + len(data) > self.cap:
                self.file.close()
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                self.file = self._open()
            self.file.write(data)
            self.file.flush()
        except OSError as error:
            print(f"stub: access log {self.path}: {error.strerror}", file=sys.stderr)

    def close(self) -> None:
        self.flush()
        self.file.close()


class Stub:
    """State shared by a stub's connections: behaviour, pre-built responses, counters."""

    def __init__(self, stub_id: str, behaviour: Behaviour, seed: int | None = None) -> None:
        self.id = stub_id
        self.id_bytes = stub_id.encode()
        self.rng = random.Random(seed)
        self.started_at = time.time()
        self.port = 0
        self.requests = 0
        self.statuses: dict[int, int] = {}
        self.failures: dict[str, int] = {}
        self.connections_total = 0
        self.connections: set[StubProtocol] = set()
        self.access_log: AccessLog | None = None
        self.registrar: Registrar | None = None
        self._heads: dict[tuple[int, int | None, int], bytes] = {}
        self.behaviour = behaviour
        self.body = b""
        self.plain: tuple[bytes, bytes, bytes] | None = None
        self.plain_status = 200
        self.set_behaviour(behaviour)

    def set_behaviour(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.body = build_body(self.id, behaviour.size)
        self.plain_status = behaviour.status
        if behaviour.is_plain:
            self.plain = (
                self.response(behaviour.status, self.body, KEEP),
                self.response(behaviour.status, self.body, CLOSE),
                self.response(behaviour.status, self.body, KEEP10),
            )
        else:
            self.plain = None

    def head(self, status: int, length: int | None, connection: int) -> bytes:
        key = (status, length, connection)
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) > 256:
                self._heads.clear()
            head = self._heads[key] = build_head(self.id_bytes, status, length, connection)
        return head

    def response(self, status: int, body: bytes, connection: int) -> bytes:
        if status in NO_BODY:
            return self.head(status, None, connection)
        return self.head(status, len(body), connection) + body

    def body_of(self, action: Respond | SlowBody | CloseMidBody) -> bytes:
        if isinstance(action, Respond) and action.health:
            # Under health "auto" any status can come here, not only 200 and 503.
            return b"ok\n" if action.status < 400 else b"fail\n"
        if action.size == self.behaviour.size:
            return self.body
        return build_body(self.id, action.size)

    def count(self, status: int | str, failure: str | None = None) -> None:
        self.requests += 1
        if isinstance(status, int):
            self.statuses[status] = self.statuses.get(status, 0) + 1
        if failure is not None:
            self.failures[failure] = self.failures.get(failure, 0) + 1

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "failures": dict(sorted(self.failures.items())),
            "connections_total": self.connections_total,
            "connections_open": len(self.connections),
            "uptime": round(time.time() - self.started_at, 3),
        }

    # -- control channel ---------------------------------------------------------------------

    def handle_control(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "get":
            registration = (
                {"state": "off", "detail": ""}
                if self.registrar is None
                else {"state": self.registrar.state, "detail": self.registrar.detail}
            )
            return {
                "ok": True,
                "id": self.id,
                "pid": os.getpid(),
                "port": self.port,
                "behaviour": self.behaviour.to_dict(),
                "stats": self.stats(),
                "registration": registration,
            }
        if op == "stats":
            return {"ok": True, "stats": self.stats()}
        if op == "set":
            changes = request.get("behaviour")
            if not isinstance(changes, dict):
                raise ValueError('"set" needs a "behaviour" object')
            behaviour = self.behaviour.with_changes(changes)
            if behaviour != self.behaviour:
                self.set_behaviour(behaviour)
                if self.access_log is not None:
                    self.access_log.event(f"behaviour: {behaviour.describe()}")
            return {"ok": True, "behaviour": behaviour.to_dict()}
        raise ValueError(f"unknown op {op!r} (expected get, set or stats)")


class StubProtocol(asyncio.Protocol):
    """One client connection.

    Plain behaviour: the pre-built response is written from `on_message_complete` (one
    write, no task). Anything that waits (latency, slow bodies) runs in one worker task per
    connection that answers queued pipelined requests in order.
    """

    __slots__ = (
        "hung",
        "loop",
        "parser",
        "queue",
        "stub",
        "transport",
        "url",
        "worker",
    )

    def __init__(self, stub: Stub) -> None:
        self.stub = stub
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url: bytes | None = None
        self.queue: deque[tuple[bytes, bytes, int, Action | None]] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.hung = False

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.stub.connections_total += 1
        self.stub.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stub.connections.discard(self)
        if self.worker is not None:
            self.worker.cancel()

    def pause_writing(self) -> None:
        # Stop taking requests while the client does not read its answers.
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        if len(self.queue) < MAX_QUEUED:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.hung:
            return  # a hung connection ignores everything until the client leaves
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(BAD_REQUEST % self.stub.id_bytes)
            self.transport.close()

    # -- httptools callbacks -----------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.url = url if self.url is None else self.url + url

    def on_message_complete(self) -> None:
        url, self.url = self.url or b"/", None
        if self.hung:
            return  # pipelined after a request that closes or hangs the connection
        parser = self.parser
        if not parser.should_keep_alive():
            connection = CLOSE
        elif parser.get_http_version() == "1.0":
            connection = KEEP10
        else:
            connection = KEEP
        method = parser.get_method()
        stub = self.stub
        plain = stub.plain
        if (
            plain is not None
            and self.worker is None
            and method != b"HEAD"
            and not url.startswith(HEALTH_PREFIX)
        ):
            # The fast path: pre-built bytes, one write.
            transport = self.transport
            assert transport is not None
            transport.write(plain[connection])
            stub.requests += 1
            status = stub.plain_status
            stub.statuses[status] = stub.statuses.get(status, 0) + 1
            if stub.access_log is not None:
                stub.access_log.add(method, url, status, 0.0)
            if connection == CLOSE:
                self._close_after_response()
            return
        self._general(method, url, connection)

    # -- everything else ---------------------------------------------------------------------

    def _close_after_response(self) -> None:
        assert self.transport is not None
        self.hung = True  # ignore anything pipelined after a request that closes
        self.transport.close()

    def _general(self, method: bytes, url: bytes, connection: int) -> None:
        if self.worker is not None:
            self.queue.append((method, url, connection, None))
            if len(self.queue) >= MAX_QUEUED:
                assert self.transport is not None
                self.transport.pause_reading()
            return
        action = self.stub.behaviour.decide(self.stub.rng, _path(url))
        if isinstance(action, Respond) and action.delay == 0:
            self._respond(method, url, connection, action, 0.0)
            return
        self.queue.append((method, url, connection, action))
        self.worker = self.loop.create_task(self._work())

    async def _work(self) -> None:
        try:
            while self.queue and not self.hung:
                method, url, connection, action = self.queue.popleft()
                if len(self.queue) < MAX_QUEUED and self.transport is not None:
                    self.transport.resume_reading()
                if action is None:
                    action = self.stub.behaviour.decide(self.stub.rng, _path(url))
                await self._carry_out(method, url, connection, action)
        finally:
            self.worker = None

    async def _carry_out(self, method: bytes, url: bytes, connection: int, action: Action) -> None:
        stub = self.stub
        transport = self.transport
        assert transport is not None
        started = self.loop.time()
        if isinstance(action, Hang):
            stub.count("hang", "hang")
            self._log(method, url, "hang", 0.0)
            self.hung = True
            self.queue.clear()
            return
        delay = action.delay
        if delay:
            await asyncio.sleep(delay)
        if transport.is_closing():
            self._log(method, url, 499, self.loop.time() - started)  # the client left
            return
        if isinstance(action, Respond):
            self._respond(method, url, connection, action, self.loop.time() - started)
        elif isinstance(action, Reset):
            stub.count("reset", "reset")
            self._log(method, url, "reset", self.loop.time() - started)
            _reset(transport)
            self.hung = True
        elif isinstance(action, CloseMidBody):
            body = b"" if method == b"HEAD" or action.status in NO_BODY else stub.body_of(action)
            transport.write(stub.head(action.status, len(body), KEEP) + body[: len(body) // 2])
            stub.count(action.status, "close")
            self._log(method, url, "close", self.loop.time() - started)
            self._close_after_response()
        else:
            await self._slow_body(method, url, connection, action, started)

    async def _slow_body(
        self, method: bytes, url: bytes, connection: int, action: SlowBody, started: float
    ) -> None:
        stub = self.stub
        transport = self.transport
        assert transport is not None
        body = b"" if method == b"HEAD" or action.status in NO_BODY else stub.body_of(action)
        length = None if action.status in NO_BODY else len(body)
        transport.write(stub.head(action.status, length, connection))
        pieces = max(min(action.pieces, len(body)), 1)
        step = -(-len(body) // pieces)  # ceiling division
        for offset in range(0, len(body), step):
            await asyncio.sleep(action.interval)
            if transport.is_closing():
                self._log(method, url, 499, self.loop.time() - started)
                return
            transport.write(body[offset : offset + step])
        stub.count(action.status, "slow")
        self._log(method, url, action.status, self.loop.time() - started)
        if connection == CLOSE:
            self._close_after_response()

    def _respond(
        self, method: bytes, url: bytes, connection: int, action: Respond, latency: float
    ) -> None:
        stub = self.stub
        assert self.transport is not None
        body = stub.body_of(action)
        if method == b"HEAD" and action.status not in NO_BODY:
            self.transport.write(stub.head(action.status, len(body), connection))
        else:
            self.transport.write(stub.response(action.status, body, connection))
        stub.count(action.status, "5xx" if action.failed else None)
        self._log(method, url, action.status, latency)
        if connection == CLOSE:
            self._close_after_response()

    def _log(self, method: bytes, url: bytes, status: int | str, latency: float) -> None:
        if self.stub.access_log is not None:
            self.stub.access_log.add(method, url, status, latency)

    def shutdown(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _path(url: bytes) -> str:
    return url.partition(b"?")[0].decode("latin-1")


def _reset(transport: asyncio.Transport) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# -- self-registration ----------------------------------------------------------------------------


class Registrar:
    """Registers the stub in a balancer pool (retrying with backoff) and deregisters it.

    States: ``pending`` (first attempt under way), ``retrying`` (the balancer does not answer
    yet), ``registered``, ``failed`` (refused for good: bad token, unknown pool, a conflict).
    """

    BACKOFF_START = 0.2
    BACKOFF_MAX = 5.0

    def __init__(
        self,
        stub: Stub,
        *,
        host: str,
        pool: str,
        api: str,
        token: str | None,
        state_dir: str | None,
    ) -> None:
        self.stub = stub
        self.host = host
        self.pool = pool
        self.api = api
        self.token = token
        self.state_dir = state_dir
        self.state = "pending"
        self.detail = ""
        self.stopping = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _event(self, text: str) -> None:
        print(f"stub {self.stub.id}: {text}", file=sys.stderr, flush=True)
        if self.stub.access_log is not None:
            self.stub.access_log.event(text)

    def _client(self, timeout: float) -> Any:
        from bunancer.client import ApiClient, find_token

        # Read the token at every attempt: a balancer started after us writes it first.
        return ApiClient(self.api, find_token(self.token, state_dir=self.state_dir), timeout)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self.BACKOFF_START
        while not self.stopping:
            outcome, detail = await loop.run_in_executor(None, self._attempt)
            self.detail = detail
            if outcome != "retry":
                self.state = outcome
                self._event(detail)
                return
            if self.state == "pending":
                self._event(f"{detail}; retrying with backoff up to {self.BACKOFF_MAX:g}s")
            self.state = "retrying"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            delay = min(delay * 2, self.BACKOFF_MAX)

    def _attempt(self) -> tuple[str, str]:
        from bunancer.client import ApiError, BalancerUnreachable

        stub = self.stub
        where = f"{self.pool} at {self.api}"
        try:
            client = self._client(3.0)
            client.register(
                self.pool,
                self.host,
                stub.port,
                server_id=stub.id,
                health={"path": HEALTH_PATH},
            )
        except ValueError as error:
            return "failed", f"registration failed: {error}"
        except BalancerUnreachable as error:
            return "retry", str(error)
        except ApiError as error:
            if error.status == 409:
                return self._resolve_conflict(client)
            if error.status >= 500:
                return "retry", f"balancer answered {error}"
            hint = " (pass --token or the balancer's --state-dir)" if error.status == 401 else ""
            return "failed", f"registration in pool {where} refused: {error}{hint}"
        return "registered", f"registered as {stub.id} ({self.host}:{stub.port}) in pool {where}"

    def _resolve_conflict(self, client: Any) -> tuple[str, str]:
        """A 409: our id or address is taken. Our own entry being removed (retry), a stale
        entry of an earlier stub with this id (replaced), or someone else (give up)."""
        from bunancer.client import ApiError, BalancerUnreachable

        address = f"{self.host}:{self.stub.port}"
        try:
            servers = client.pool(self.pool)["servers"]
            for server in servers:
                if server["id"] == self.stub.id and server["address"] == address:
                    # Registering the same id and address again is a 200; a 409 means our
                    # old entry is being drained away: register once it is gone.
                    return "retry", f"the old entry of {self.stub.id} is being removed"
            for server in servers:
                if server["address"] == address:
                    return "failed", (
                        f"registration refused: {address} is already registered "
                        f"as {server['id']} in pool {self.pool}"
                    )
            client.deregister(self.pool, self.stub.id)  # stale: an earlier stub's entry
            client.register(
                self.pool, self.host, self.stub.port, server_id=self.stub.id,
                health={"path": HEALTH_PATH},
            )  # fmt: skip
        except BalancerUnreachable as error:
            return "retry", str(error)
        except ApiError as error:
            return "failed", f"registration in pool {self.pool} refused: {error}"
        return "registered", f"registered as {self.stub.id} ({address}), replacing a stale entry"

    async def stop(self) -> None:
        """Stop retrying; leave the pool if registered (returns once the balancer drained us)."""
        self.stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task  # an attempt under way finishes first (bounded by its timeout)
        if self.state != "registered":
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self._deregister)
        except Exception as error:
            self._event(f"deregistration failed: {error}")
            return
        self.state = "deregistered"
        self._event(f"deregistered from pool {self.pool}")

    def _deregister(self) -> None:
        from bunancer.client import ApiError

        try:
            # The balancer answers once it drained us (timeouts.drain, 10 s by default).
            self._client(15.0).deregister(self.pool, self.stub.id)
        except ApiError as error:
            if error.status != 404:  # already gone is fine
                raise


# -- process ------------------------------------------------------------------------------------


class StartError(Exception):
    """The stub cannot start (port in use, id taken); one line for the user."""


async def serve(args: argparse.Namespace, behaviour: Behaviour) -> None:
    loop = asyncio.get_running_loop()
    stub = Stub(args.id, behaviour, args.seed)
    paths = StubPaths.of(args.state_dir, args.id) if args.state_dir else None
    if paths is not None:
        ensure_stubs_dir(args.state_dir)
        existing = read_record(paths.record)
        if existing is not None and existing.pid != os.getpid() and is_live(existing):
            raise StartError(f"stub {args.id} already runs (pid {existing.pid})")
    try:
        server = await loop.create_server(
            lambda: StubProtocol(stub), args.host, args.port, reuse_address=True, backlog=4096
        )
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise StartError(f"port {args.port} is in use") from None
        raise StartError(f"cannot listen on {args.host}:{args.port}: {error.strerror}") from None
    stub.port = server.sockets[0].getsockname()[1]

    if args.register:
        # Before the control socket opens, so the SDK never sees a registering stub as "off".
        stub.registrar = Registrar(
            stub,
            host=args.host if args.host not in ("0.0.0.0", "::", "") else "127.0.0.1",
            pool=args.pool,
            api=args.api,
            token=args.token,
            state_dir=args.state_dir,
        )
    control = None
    log_path = Path(args.log) if args.log else (paths.log if paths else None)
    if log_path is not None:
        stub.access_log = AccessLog(log_path)
        _flush_periodically(loop, stub.access_log)
        stub.access_log.event(
            f"started {args.id} on {args.host}:{stub.port} (pid {os.getpid()}): "
            f"{behaviour.describe()}"
        )
    if paths is not None:
        try:
            control = await serve_control(paths.sock, stub.handle_control)
        except (ControlError, OSError) as error:
            raise StartError(str(error)) from None
        ticks = process_start_ticks(os.getpid()) or 0
        record = StubRecord(
            id=args.id,
            pid=os.getpid(),
            port=stub.port,
            host=args.host,
            pool=args.pool if args.register else None,
            api=args.api if args.register else None,
            started_at=stub.started_at,
            start_ticks=ticks,
            argv=process_argv(os.getpid()),
        )
        write_record(paths.record, record)
    print(f"PORT {stub.port}", flush=True)

    if stub.registrar is not None:
        stub.registrar.start()

    stopping = asyncio.Event()

    def on_signal() -> None:
        if stopping.is_set():
            # A second Ctrl-C: do not wait for the balancer any longer.
            _cleanup(paths)
            os._exit(0)
        stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    await stopping.wait()

    # Keep serving while the balancer drains us; only then stop listening.
    if stub.registrar is not None:
        await stub.registrar.stop()
    server.close()
    if control is not None:
        control.close()
    for connection in list(stub.connections):
        connection.shutdown()
    if stub.access_log is not None:
        stub.access_log.event("stopped")
        stub.access_log.close()
    _cleanup(paths)


def _flush_periodically(loop: asyncio.AbstractEventLoop, log: AccessLog) -> None:
    def tick() -> None:
        log.flush()
        loop.call_later(LOG_FLUSH_INTERVAL, tick)

    loop.call_later(LOG_FLUSH_INTERVAL, tick)


def _cleanup(paths: StubPaths | None) -> None:
    """Remove our pid file and socket, unless a newer stub with our id took them over."""
    if paths is None:
        return
    record = read_record(paths.record)
    if record is None or record.pid == os.getpid():
        for path in (paths.record, paths.sock):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Behaviour]:
    parser = argparse.ArgumentParser(
        prog="python -m stubs.server", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--id", default="s1")
    parser.add_argument("--state-dir", help="pid file, control socket and log under DIR/stubs")
    parser.add_argument("--log", help="access log path (default: DIR/stubs/<id>.log)")
    parser.add_argument("--seed", type=int, help="seed of the behaviour's random choices")
    behaviour = parser.add_argument_group("behaviour (changeable live over the control socket)")
    behaviour.add_argument("--status", help="response status (default 200)")
    behaviour.add_argument("--latency", help="0, 50ms, 20-80ms or longtail:20ms")
    behaviour.add_argument("--fail-rate", help="share of failing requests, 0..1 or 10%%")
    behaviour.add_argument("--mode", help="what a failure does: 5xx, reset, hang, slow, close")
    behaviour.add_argument("--size", help="response body size in bytes")
    behaviour.add_argument(
        "--health",
        help="what /health answers: auto (default; the --status), ok (200) or fail (503)",
    )
    registration = parser.add_argument_group("self-registration")
    registration.add_argument("--register", action="store_true", help="join a balancer's pool")
    registration.add_argument("--pool", default="default")
    registration.add_argument(
        "--api", default=os.environ.get("BUNANCER_API", "http://127.0.0.1:8081")
    )
    registration.add_argument(
        "--token", help="API token (default: BUNANCER_TOKEN, else <state-dir>/token)"
    )
    args = parser.parse_args(argv)
    if not ID_PATTERN.match(args.id):
        parser.error(f"--id: {args.id!r} is not a valid id (letters, digits, . _ -)")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port: {args.port} is outside 0-65535")
    changes = {name: getattr(args, name) for name in FIELDS}
    try:
        return args, Behaviour().with_changes(changes)
    except BehaviourError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> None:
    args, behaviour = parse_args(argv)
    try:
        uvloop.run(serve(args, behaviour))
    except StartError as error:
        print(f"stub {args.id}: {error}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
