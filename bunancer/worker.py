"""A data-plane worker: `python -m bunancer.worker`, started by `bunancer serve --workers N`.

It serves the listening sockets it inherits from the control process, as that process's
snapshots say (core/snapshot.py), and reports back over its channel (core/channel.py) once a
second what its counters gained, and at once a server it saw failing on real traffic. It
imports the data plane only: no config, no pydantic, no web, not even argparse or orjson
(a worker's memory is mostly the interpreter's; each module it skips is one per worker).

SIGTERM drains it (exit 0, or 3 when the drain timeout cut connections). When the control
process goes away, it keeps serving the last snapshot for `ORPHAN_GRACE` seconds, then
drains and exits: nothing would update its routes or take its figures any more.
"""

from __future__ import annotations

import asyncio
import getopt
import marshal
import signal
import socket
import sys
from functools import partial
from typing import TYPE_CHECKING, Any

from .core.channel import Channel
from .core.decisions import taken
from .core.downstream import DownstreamProtocol
from .core.listen import ListenGroup, drain, listen
from .core.listener import ListenerContext
from .core.pool import Experiment
from .core.snapshot import World, take_stats
from .core.stats import ServerStats
from .core.tcp import TcpClientEnd

if TYPE_CHECKING:
    from .core.accesslog import AccessLog

ORPHAN_GRACE = 30.0  # seconds a worker serves on after the control process is gone
REPORT_EVERY = 1.0
EXIT_NOT_DRAINED = 3


class WorkerArgs:
    """The command line the control process gives (control/workers.py)."""

    def __init__(self) -> None:
        self.index = 0
        self.channel = -1  # the control channel's descriptor
        self.sockets = -1  # the descriptor new listeners come by
        self.listener: list[tuple[str, list[int]]] = []  # a listener's key and its sockets
        self.access_log = ""
        self.access_log_format = "combined"

    @classmethod
    def parse(cls, argv: list[str]) -> WorkerArgs:
        names = ["index=", "channel=", "sockets=", "listener=", "access-log=", "access-log-format="]
        options, _ = getopt.getopt(argv, "", names)
        args = cls()
        for name, value in options:
            if name == "--listener":  # KEY=FD,FD
                key, _, fds = value.rpartition("=")
                args.listener.append((key, [int(fd) for fd in fds.split(",")]))
            elif name in ("--index", "--channel", "--sockets"):
                setattr(args, name[2:], int(value))
            else:
                setattr(args, name[2:].replace("-", "_"), value)
        return args


class Worker:
    def __init__(self, args: WorkerArgs, loop: asyncio.AbstractEventLoop) -> None:
        self.args = args
        self.loop = loop
        self.world = World(loop, self._outlier)
        self.channel: Channel | None = None
        self.first = loop.create_future()  # the first snapshot applied
        self.stopping = asyncio.Event()
        self.fds: dict[str, list[int]] = dict(args.listener)  # sockets not served yet
        self.servers: dict[str, list[ListenGroup]] = {}
        self.marks: dict[tuple[str, ...], list[int]] = {}
        self.access_log: AccessLog | None = None
        self.tasks: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references

    async def run(self) -> int:
        loop = self.loop
        channel_sock = socket.socket(fileno=self.args.channel)
        _, self.channel = await loop.create_connection(
            lambda: Channel(self._on_message, self._on_channel_closed), sock=channel_sock
        )
        fd_sock = socket.socket(fileno=self.args.sockets)
        fd_sock.setblocking(False)
        loop.add_reader(fd_sock.fileno(), self._on_sockets, fd_sock)
        await self.first
        if self.args.access_log:
            from .core.accesslog import AccessLog  # only when on: it brings orjson

            self.access_log = AccessLog(loop, self.args.access_log, self.args.access_log_format)
        await self._serve()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)  # Ctrl-C is the control's to act on
        self.channel.send({"type": "ready", "version": self.world.version})
        reporter = loop.create_task(self._report())
        await self.stopping.wait()
        reporter.cancel()
        for groups in self.servers.values():
            for group in groups:
                group.close()
        contexts = [*self.world.listeners.values(), *self.world.retired]
        drained = await drain(loop, contexts, self.world.drain)
        self._send_stats()
        if self.access_log is not None:
            self.access_log.close()
        for pool in self.world.pools.values():
            for server in pool.servers.values():
                if server.connections is not None:
                    server.connections.close()
        return 0 if drained else EXIT_NOT_DRAINED

    # -- from the control process --------------------------------------------------------------

    def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("type") == "snapshot":
            self.world.apply(message)
            self._close_gone()  # before saying so: the address may be bound again at once
            if self.world.ended_labs:
                self._send_stats()  # their last counts, before the control process ends them
            if self.channel is not None:
                self.channel.send({"type": "applied", "version": self.world.version})
            if not self.first.done():
                self.first.set_result(None)
            else:
                self._serve_soon()

    def _on_sockets(self, fd_sock: socket.socket) -> None:
        """A listener added by a reload: its sockets, passed with SCM_RIGHTS."""
        try:
            data, fds, _, _ = socket.recv_fds(fd_sock, 4096, 64)
        except BlockingIOError:
            return
        if not data:
            self.loop.remove_reader(fd_sock.fileno())
            return
        self.fds[marshal.loads(data)["key"]] = fds
        if self.first.done():
            self._serve_soon()

    def _serve_soon(self) -> None:
        task = self.loop.create_task(self._serve())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self) -> None:
        """Serve the listeners the snapshot has and whose sockets came."""
        for key, ctx in list(self.world.listeners.items()):
            fds = self.fds.pop(key, None)
            if key in self.servers or fds is None:
                continue
            if isinstance(ctx, ListenerContext):
                ctx.access_log = self.access_log
                factory: Any = partial(DownstreamProtocol, ctx)
            else:
                factory = partial(TcpClientEnd, ctx)
            terminator = self.world.tls.get(key)
            tls = terminator.context if terminator is not None else None
            self.servers[key] = [
                await listen(
                    self.loop, factory, sock=socket.socket(fileno=fd), backlog=4096, tls=tls
                )
                for fd in fds
            ]

    def _close_gone(self) -> None:
        """Stop accepting on listeners the snapshot no longer has (their connections go on)."""
        for key in [key for key in self.servers if key not in self.world.listeners]:
            for group in self.servers.pop(key):
                group.close()

    def _on_channel_closed(self) -> None:
        if not self.first.done():
            self.first.set_exception(ConnectionError("the control process went away"))
            return
        print(
            f"bunancer worker {self.args.index}: the control process is gone; serving the last "
            f"routes for {ORPHAN_GRACE:g} s, then stopping",
            file=sys.stderr,
        )
        self.loop.call_later(ORPHAN_GRACE, self.stopping.set)

    # -- to it ------------------------------------------------------------------------------------

    def _outlier(self, pool: str, server_id: str, reason: str) -> None:
        if self.channel is not None:
            self.channel.send({"type": "outlier", "pool": pool, "id": server_id, "reason": reason})

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY)
            self._send_stats()

    def _send_stats(self) -> None:
        if self.channel is None:
            return
        servers, pools, listeners, experiments, decisions = [], [], [], [], []
        for pool in self.world.pools.values():
            for server in pool.servers.values():
                delta = self._take(("server", pool.name, server.id), server.stats)
                connections = server.connections
                active, idle = (
                    (connections.active, connections.idle_count) if connections else (0, 0)
                )
                servers.append([pool.name, server.id, delta, server.in_flight, active, idle])
            pools.append([pool.name, self._take(("pool", pool.name), pool.rejected)])
            decisions += taken(pool.decisions)
            if pool.lab is not None:
                experiments += self._arm_counts(pool.name, pool.lab)
        for pool_name, ended in self.world.ended_labs:
            experiments += self._arm_counts(pool_name, ended)
            for key in [k for k in self.marks if k[:3] == ("arm", pool_name, ended.name)]:
                del self.marks[key]
        self.world.ended_labs.clear()
        for key, ctx in self.world.listeners.items():
            open_ = len(ctx.connections) if isinstance(ctx, ListenerContext) else 0
            tunnels = list(ctx.tunnels)
            listeners.append([key, self._take(("listener", key), ctx.rejected), open_,
                              len(tunnels), sum(t.bytes_in for t in tunnels),
                              sum(t.bytes_out for t in tunnels)])  # fmt: skip
        self.channel.send(
            {"type": "stats", "servers": servers, "pools": pools, "listeners": listeners,
             "lab": experiments, "decisions": decisions}
        )  # fmt: skip

    def _arm_counts(self, pool_name: str, lab: Experiment) -> list[list[Any]]:
        """What each arm of an experiment counted since the last report, per server."""
        counts: list[list[Any]] = []
        for arm in lab.arms:
            for server_id, stats in arm.outcomes.items():
                delta = self._take(("arm", pool_name, lab.name, arm.label, server_id), stats)
                if delta is not None:
                    counts.append([pool_name, lab.name, arm.label, server_id, delta])
        return counts

    def _take(self, key: tuple[str, ...], stats: ServerStats) -> dict[str, Any] | None:
        return take_stats(stats, self.marks.setdefault(key, []))


def main(argv: list[str] | None = None) -> None:
    args = WorkerArgs.parse(sys.argv[1:] if argv is None else argv)
    from .eventloop import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def run() -> int:
        return await Worker(args, asyncio.get_running_loop()).run()

    sys.exit(asyncio.run(run()))


if __name__ == "__main__":
    main()
