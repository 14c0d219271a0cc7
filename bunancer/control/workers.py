"""The control process's side of `bunancer serve --workers N`.

The control process binds every listener's socket (so a port in use is one clear error, and
port 0 is resolved once) and never accepts on it: N worker processes (bunancer/worker.py)
inherit the sockets and share them, the kernel handing each new connection to one of them.
Passing the sockets down rather than binding with SO_REUSEPORT in each worker keeps one
owner of the address, and a worker that is replaced takes the very same sockets.

Each worker gets the data plane as a snapshot (core/snapshot.py) at start, at once after
any change the registry publishes (a registration, a state change, a pool's settings), and
once a second besides (slow start moves weights without an event). Back from each worker
come its counters' gains once a second, added to the control process's own counters of the
same servers (so the API, /metrics and the dashboard show the whole balancer), and servers
it saw failing on real traffic, which outlier ejection decides on once, for every worker.

A worker that exits is started again at once with the same sockets and the current
snapshot; the others serve meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import marshal
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .. import native
from ..config import Config
from ..core.channel import Channel
from ..core.listen import ListenGroup
from ..core.pool import DEBUG_TOKEN, Experiment
from ..core.snapshot import (
    VERSION,
    add_stats,
    fault_entries,
    lab_entry,
    plain,
    server_entry,
    tls_entry,
)
from ..core.stats import ServerStats
from ..core.tls import TlsSettings
from .decisions import DecisionLog
from .events import (
    POOL_ADDED,
    POOL_REMOVED,
    POOL_UPDATED,
    SERVER_ADDED,
    SERVER_REMOVED,
    SERVER_STATE,
    SERVER_UPDATED,
    Subscription,
)
from .exposition import Exposition
from .registry import Registry

log = logging.getLogger("bunancer.workers")

PUSH_EVERY = 1.0  # a snapshot at least this often
READY_TIMEOUT = 30.0  # a worker's first start (imports, the compiled modules)
STOP_GRACE = 5.0  # beyond the drain timeout, before a worker that does not stop is killed
RESPAWN_PAUSE = 0.25  # a worker that lived less than this is started again after this long
# Events after which the workers get a snapshot at once.
ROUTING_EVENTS = (SERVER_ADDED, SERVER_REMOVED, SERVER_STATE, SERVER_UPDATED, POOL_ADDED,
                  POOL_REMOVED, POOL_UPDATED)  # fmt: skip


@dataclass
class ListenerSockets:
    """What a worker needs of one listener: its sockets, and where its figures go."""

    key: str  # its mode and configured address: a worker knows the listener by it
    mode: str
    default_pool: str
    settings: Any  # the control's ListenerSettings or TcpSettings, current after reloads
    server: ListenGroup
    rejected: ServerStats
    tls: TlsSettings | None = None
    sni_routes: list[tuple[str, str]] = field(default_factory=list)  # TCP: (host, pool)


@dataclass
class Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    sockets: socket.socket | None = None  # new listeners' descriptors go this way
    ready: asyncio.Future[None] | None = None
    applied: int = 0  # the newest snapshot version it applied
    restarts: int = 0
    # By server, from its last report: requests answered (in all), in flight, upstream
    # connections active and idle.
    servers: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    # By listener: client connections, tunnels, and the bytes in and out of those tunnels.
    open: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)


class Workers:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        registry: Registry,
        config: Callable[[], Config],
        listeners: Callable[[], list[ListenerSockets]],
        count: int,
    ) -> None:
        self.loop = loop
        self.registry = registry
        self.config = config
        self.listeners = listeners
        self.workers = [Worker(index) for index in range(count)]
        self.version = 0
        self.stopping = False
        self._push_soon = False
        self._contents_sent: dict[str, Any] | None = None  # what the newest version holds
        self._tasks: set[asyncio.Task[Any]] = set()
        self._events: Subscription | None = None
        # The lab's experiments by id, until their end: the arms the workers' counts go to.
        self.experiments: dict[str, Experiment] = {}
        self.decisions: DecisionLog | None = None  # where the workers' recorded selections go

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn(worker) for worker in self.workers))
        self._events = self.registry.bus.subscribe(ROUTING_EVENTS, maxsize=1)
        self._spawn_task(self._follow_events())
        self._spawn_task(self._push_periodically())

    async def stop(self) -> bool:
        """SIGTERM every worker (each drains) and wait; whether all drained in time."""
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        if self._events is not None:
            self._events.close()
        running = [w.process for w in self.workers if w.process is not None]
        for process in running:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        limit = self.config().timeouts.drain + STOP_GRACE
        codes = await asyncio.gather(*(_wait(process, limit) for process in running))
        return all(code == 0 for code in codes)

    def add_listener(self, listener: ListenerSockets) -> None:
        """Hand a listener a reload opened to every worker (the next snapshot has it)."""
        message = marshal.dumps({"key": listener.key})
        fds = [sock.fileno() for sock in listener.server.sockets]
        for worker in self.workers:
            if worker.sockets is not None:
                socket.send_fds(worker.sockets, [message], fds)

    async def _spawn(self, worker: Worker) -> None:
        parent, child = socket.socketpair()
        worker.sockets, theirs = socket.socketpair()
        argv = [sys.executable, "-m", "bunancer.worker", "--index", str(worker.index),
                "--channel", str(child.fileno()), "--sockets", str(theirs.fileno())]  # fmt: skip
        fds = [child.fileno(), theirs.fileno()]
        for listener in self.listeners():
            numbers = [sock.fileno() for sock in listener.server.sockets]
            fds += numbers
            argv += ["--listener", f"{listener.key}=" + ",".join(str(n) for n in numbers)]
        access_log = self.config().access_log
        if access_log.path is not None:
            argv += ["--access-log", access_log.path, "--access-log-format", access_log.format]
        worker.process = await asyncio.create_subprocess_exec(
            *argv, pass_fds=fds, stdin=subprocess.DEVNULL, env=native.child_environment()
        )
        child.close()
        theirs.close()
        worker.ready = self.loop.create_future()
        _, worker.channel = await self.loop.create_connection(
            lambda: Channel(partial(self._on_message, worker), lambda: None), sock=parent
        )
        worker.channel.send(self.snapshot())
        self._spawn_task(self._watch(worker, worker.process))
        try:
            await asyncio.wait_for(asyncio.shield(worker.ready), READY_TIMEOUT)
        except TimeoutError:
            log.error("worker %d did not start within %.0f s", worker.index, READY_TIMEOUT)
            return
        if worker.restarts:
            log.info("worker %d serving again (pid %d)", worker.index, worker.process.pid)

    async def _watch(self, worker: Worker, process: asyncio.subprocess.Process) -> None:
        started = self.loop.time()
        code = await process.wait()
        if self.stopping or worker.process is not process:
            return
        log.warning("worker %d exited (code %s): starting another", worker.index, code)
        worker.servers.clear()
        worker.open.clear()
        worker.restarts += 1
        if self.loop.time() - started < RESPAWN_PAUSE:
            await asyncio.sleep(RESPAWN_PAUSE)  # one that dies at start: not in a tight loop
        await self._spawn(worker)

    def _spawn_task(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- snapshots --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The current snapshot: a new version when anything in it changed since the last."""
        contents = self._contents()
        if contents != self._contents_sent:
            self.version += 1
            self._contents_sent = contents
        return {"type": "snapshot", "format": VERSION, "version": self.version, **contents}

    def _contents(self) -> dict[str, Any]:
        registry, config = self.registry, self.config()
        pools = [
            {
                "name": name,
                "balancing": plain(pool.balancing),
                "upstream": plain(registry.upstream_for(registry.settings[name])),
                "servers": [server_entry(server) for server in pool.servers.values()],
                "faults": fault_entries(pool.faults),
                "lab": lab_entry(pool.lab),
            }
            for name, pool in registry.pools.items()
        ]
        routes = [
            {"pool": r.pool, "host": r.host, "path_prefix": r.path_prefix} for r in config.routes
        ]
        listeners = [
            {"key": x.key, "mode": x.mode, "default_pool": x.default_pool,
             "settings": plain(x.settings), "tls": tls_entry(x.tls),
             "sni_routes": x.sni_routes}
            for x in self.listeners()
        ]  # fmt: skip
        return {"drain": config.timeouts.drain, "pools": pools, "routes": routes,
                "listeners": listeners, "debug_token": DEBUG_TOKEN[0]}  # fmt: skip

    def push(self) -> None:
        """Send every worker the current snapshot (several changes in one loop turn: one)."""
        if self._push_soon:
            return
        self._push_soon = True
        self.loop.call_soon(self._push_now)

    def _push_now(self) -> None:
        """Send the snapshot if it changed: the once-a-second push mostly finds nothing new,
        and with hundreds of servers a snapshot costs a worker's loop a millisecond."""
        self._push_soon = False
        sent = self.version
        message = self.snapshot()
        if message["version"] == sent:
            return
        for worker in self.workers:
            if worker.channel is not None:
                worker.channel.send(message)

    async def settle(self, timeout: float = 2.0) -> bool:
        """Push the current snapshot now and wait until every running worker applied it
        (a reload answers once its change is in effect); whether they all did in time."""
        self._push_now()
        version, deadline = self.version, self.loop.time() + timeout
        while any(w.ready is not None and w.ready.done() and w.applied < version
                  for w in self.workers):  # fmt: skip
            if self.loop.time() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def _follow_events(self) -> None:
        assert self._events is not None
        async for _ in self._events:
            self.push()

    async def _push_periodically(self) -> None:
        while True:
            await asyncio.sleep(PUSH_EVERY)
            self.push()

    # -- from the workers -------------------------------------------------------------------------

    def _on_message(self, worker: Worker, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "stats":
            self._add_stats(worker, message)
        elif kind == "outlier":
            server = self._server(message["pool"], message["id"])
            if server is not None:
                self.registry.outliers.report(server, message["reason"])
        elif kind == "applied":
            worker.applied = max(worker.applied, message["version"])
        elif kind == "ready" and worker.ready is not None and not worker.ready.done():
            worker.ready.set_result(None)

    def _server(self, pool: str, server_id: str) -> Any:
        found = self.registry.pools.get(pool)
        return None if found is None else found.servers.get(server_id)

    def _add_stats(self, worker: Worker, message: dict[str, Any]) -> None:
        pools = self.registry.pools
        touched = set()
        for pool_name, server_id, delta, in_flight, active, idle in message["servers"]:
            server = self._server(pool_name, server_id)
            if server is None:
                continue
            key = (pool_name, server_id)
            figures = worker.servers.setdefault(key, [0, 0, 0, 0])
            if delta is not None:
                add_stats(server.stats, delta)
                figures[0] += sum(delta["counts"][: len(server.stats.by_class)])
            figures[1:] = [in_flight, active, idle]
            touched.add(key)
        for key in touched:
            server = self._server(*key)
            total = sum(w.servers[key][1] for w in self.workers if key in w.servers)
            server.in_flight = total
            server.max_in_flight = max(server.max_in_flight, total)
        for pool_name, delta in message["pools"]:
            if delta is not None and pool_name in pools:
                add_stats(pools[pool_name].rejected, delta)
        if self.decisions is not None:
            for decision in message["decisions"]:
                self.decisions.add(decision)
        for _, name, label, server_id, delta in message["lab"]:
            lab = self.experiments.get(name)
            arm = next((a for a in lab.arms if a.label == label), None) if lab else None
            if arm is not None:
                add_stats(arm.outcomes.setdefault(server_id, ServerStats()), delta)
        listeners = {x.key: x for x in self.listeners()}
        for key, delta, *open_ in message["listeners"]:
            if key in listeners:
                if delta is not None:
                    add_stats(listeners[key].rejected, delta)
                worker.open[key] = tuple(open_)  # type: ignore[assignment]

    def connections(self, pool: str, server_id: str) -> tuple[int, int]:
        """A server's upstream connections, active and idle, over every worker."""
        key = (pool, server_id)
        figures = [w.servers[key] for w in self.workers if key in w.servers]
        return sum(f[2] for f in figures), sum(f[3] for f in figures)

    def metrics(self, out: Exposition) -> None:
        """Each worker's own figures, labelled `worker` (its index), for /metrics."""
        out.family("bunancer_worker_up", "gauge", "1 while the worker process runs.")
        out.family("bunancer_worker_restarts_total", "counter", "Times the worker was replaced.")
        out.family("bunancer_worker_requests_total", "counter", "Requests the worker answered.")
        out.family("bunancer_worker_in_flight", "gauge", "The worker's requests in flight.")
        for worker in self.workers:
            labels = {"worker": str(worker.index)}
            running = worker.process is not None and worker.process.returncode is None
            out.sample("bunancer_worker_up", labels, int(running))
            out.sample("bunancer_worker_restarts_total", labels, worker.restarts)
            for (pool, server_id), figures in worker.servers.items():
                at = {**labels, "pool": pool, "server": server_id}
                out.sample("bunancer_worker_requests_total", at, figures[0])
                out.sample("bunancer_worker_in_flight", at, figures[1])

    def open_connections(self, key: str) -> tuple[int, int, int, int]:
        """A listener's client connections, tunnels and their bytes in and out, over every
        worker (their last reports)."""
        counts = [w.open.get(key, (0, 0, 0, 0)) for w in self.workers]
        return tuple(sum(column) for column in zip(*counts, strict=True))  # type: ignore[return-value]


async def _wait(process: asyncio.subprocess.Process, limit: float) -> int:
    try:
        return await asyncio.wait_for(process.wait(), limit)
    except TimeoutError:
        process.kill()
        return await process.wait()
