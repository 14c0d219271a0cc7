"""Active health checks: one HTTP probe per server on its own schedule.

Each check opens a fresh connection (so a refused connect is seen as such), sends one
request, reads the status line and head, and closes. The result goes to a callback (the
registry), which feeds it to the server's state machine; the machine decides the delay
to the next check (interval, fast interval, backoff, dead interval). Probes run as small
tasks on the balancer's loop: a few per second per server, never on the request path.

Passive checks (outlier ejection from real traffic) are counted by the data plane on the
`Server` object and decided by outlier.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import httptools

from ..core.tls import tls_problem
from .states import CheckResult

if TYPE_CHECKING:
    from ..core.server import Server
    from .states import ServerHealth


log = logging.getLogger("bunancer.health")


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """What a check sends and what counts as passing."""

    enabled: bool = True
    kind: str = "http"  # "tcp": a successful connect is the check
    method: str = "GET"
    path: str = "/"
    expect: tuple[tuple[int, int], ...] = ((200, 499),)  # inclusive status ranges
    timeout: float = 1.0
    tls: ssl.SSLContext | None = None  # the server speaks TLS (its pool's context)
    server_name: str | None = None  # the name sent and verified; default: the server's host

    def passes(self, status: int) -> bool:
        return any(low <= status <= high for low, high in self.expect)


class Checked(Protocol):
    """What the checker needs of a server's record (records.ServerRecord)."""

    server: Server
    health: ServerHealth
    check: CheckSpec


class _Probe(asyncio.Protocol):
    """Reads a response head and reports its status through a future."""

    def __init__(self, done: asyncio.Future[int]) -> None:
        self.done = done
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            if not self.done.done():
                self.done.set_exception(ConnectionError(f"invalid response: {error}"))

    def on_headers_complete(self) -> None:
        if not self.done.done():
            self.done.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError("connection closed before a response"))


def _describe_error(error: BaseException, timeout: float) -> str:
    if isinstance(error, ssl.SSLError):
        return tls_problem(error)
    if isinstance(error, TimeoutError):
        return f"timeout after {timeout:g}s"
    if isinstance(error, ConnectionRefusedError):
        return "connect refused"
    if isinstance(error, ConnectionError) and str(error):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return type(error).__name__


async def probe(host: str, port: int, spec: CheckSpec) -> CheckResult:
    """Run one check against host:port; never raises."""
    if spec.kind == "tcp":
        return await probe_connect(host, port, spec.timeout)
    loop = asyncio.get_running_loop()
    # perf_counter, not loop.time(): uvloop's clock is cached per iteration in whole ms.
    started = time.perf_counter()
    transport: asyncio.BaseTransport | None = None
    try:
        async with asyncio.timeout(spec.timeout):
            done: asyncio.Future[int] = loop.create_future()
            name = (spec.server_name or host) if spec.tls is not None else None
            transport, _ = await loop.create_connection(
                lambda: _Probe(done), host, port, ssl=spec.tls, server_hostname=name
            )
            authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            transport.write(  # type: ignore[attr-defined]
                f"{spec.method} {spec.path} HTTP/1.1\r\nHost: {authority}\r\n"
                f"User-Agent: bunancer-health\r\nAccept: */*\r\nConnection: close\r\n\r\n".encode()
            )
            status = await done
    except (OSError, TimeoutError) as error:
        return CheckResult(loop.time(), False, _describe_error(error, spec.timeout), 0.0)
    finally:
        if transport is not None:
            transport.close()
    latency = time.perf_counter() - started
    ok = spec.passes(status)
    detail = f"{status} in {latency * 1000:.1f} ms" if ok else f"status {status}"
    return CheckResult(loop.time(), ok, detail, latency)


async def probe_connect(host: str, port: int, timeout: float) -> CheckResult:
    """A TCP check: the server accepts a connection within `timeout`."""
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(asyncio.Protocol, host, port)
    except (OSError, TimeoutError) as error:
        return CheckResult(loop.time(), False, _describe_error(error, timeout), 0.0)
    transport.close()
    latency = time.perf_counter() - started
    return CheckResult(loop.time(), True, f"connected in {latency * 1000:.1f} ms", latency)


ResultCallback = Callable[["Checked", CheckResult], None]


class HealthChecker:
    """Schedules checks for every watched record; results go to `on_result`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_result: ResultCallback,
        rng: random.Random | None = None,
    ) -> None:
        self.loop = loop
        self.on_result = on_result
        self.rng = rng or random.Random()
        self._timers: dict[Checked, asyncio.TimerHandle] = {}
        self._running: dict[Checked, asyncio.Task[None]] = {}
        self._watched: set[Checked] = set()  # a record leaves it when unwatched (removed)
        self.closed = False

    def watch(self, record: Checked, delay: float = 0.0) -> None:
        """Check the server after `delay` seconds (at once by default), then on its schedule."""
        self.unwatch(record)
        self._watched.add(record)
        self._timers[record] = self.loop.call_later(delay, self._start, record)

    def next_check_at(self, record: Checked) -> float | None:
        """When the record's next check starts (loop time); None while one runs."""
        handle = self._timers.get(record)
        return handle.when() if handle is not None else None

    def check_now(self, record: Checked) -> None:
        if record in self._timers and record not in self._running:
            self.watch(record, 0.0)

    def unwatch(self, record: Checked) -> None:
        self._watched.discard(record)
        handle = self._timers.pop(record, None)
        if handle is not None:
            handle.cancel()
        task = self._running.pop(record, None)
        if task is not None:
            task.cancel()

    def _start(self, record: Checked) -> None:
        self._timers.pop(record, None)
        if self.closed:
            return
        self._running[record] = self.loop.create_task(self._check(record))

    async def _check(self, record: Checked) -> None:
        spec = record.check
        server = record.server
        if spec.enabled:
            result = await probe(server.host, server.port, spec)
        else:
            result = CheckResult(self.loop.time(), True, "checks off", 0.0)
        if self._running.get(record) is not asyncio.current_task():
            return  # unwatched while the probe ran
        del self._running[record]
        try:
            self.on_result(record, result)
        except Exception:
            log.exception("health result handler failed for %s", server.address)
        # The result handler may have removed the server (remove_dead_after): no next check.
        if record in self._watched and not self.closed:
            delay = record.health.next_check_in(self.rng)
            if not spec.enabled:
                # Nothing to probe: wake only when an ejection ends, or now and then.
                delay = max(record.health.ejected_until - self.loop.time(), 0.0) or 5.0
            self._timers[record] = self.loop.call_later(delay, self._start, record)

    async def close(self) -> None:
        self.closed = True
        for handle in self._timers.values():
            handle.cancel()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._timers.clear()
        self._running.clear()
