"""The stub process around the HTTP server: its flags, start-up and shut-down.

``python -m stubs.server`` runs `main` here. Start-up refuses a second live stub with the
same id, listens, then (with ``--state-dir``) opens the access log, the control socket and
the pid file, prints ``PORT <n>`` and, with ``--register``, starts joining the pool. On
SIGTERM or SIGINT the stub deregisters first (serving while the balancer drains it), then
stops listening, closes its connections and removes its files; a second signal exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any

import uvloop

from . import server as http_server  # its docstring's summary is the --help description
from .behaviour import FIELDS, Behaviour, BehaviourError
from .control import ControlError, serve_control
from .log import StubLog, flush_periodically
from .registrar import Registrar
from .server import StubProtocol, StubServer
from .state import (
    ID_PATTERN,
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


class StartError(Exception):
    """The stub cannot start (port in use, id taken); one line for the user."""


async def serve(args: argparse.Namespace, behaviour: Behaviour) -> None:
    """Run one stub until SIGTERM or SIGINT, then shut it down in order."""
    stub = StubServer(args.id, behaviour, args.seed)
    paths = StubPaths.of(args.state_dir, args.id) if args.state_dir else None
    if paths is not None:
        ensure_stubs_dir(args.state_dir)
        _refuse_a_second_stub(paths, args.id)
    listener = await _listen(stub, args.host, args.port)
    stub.access_log = _open_access_log(args, paths, stub)
    # Before the control socket opens, so the SDK never sees a registering stub as "off".
    registrar = _registrar(args, stub) if args.register else None
    control = None
    if paths is not None:
        control = await _open_control(paths, stub, registrar)
        write_record(paths.record, _record(args, stub))
    print(f"PORT {stub.port}", flush=True)

    if registrar is not None:
        registrar.start()
    await _wait_for_signal(paths)
    await _shut_down(stub, listener, control, registrar, paths)


def _refuse_a_second_stub(paths: StubPaths, stub_id: str) -> None:
    existing = read_record(paths.record)
    if existing is not None and existing.pid != os.getpid() and is_live(existing):
        raise StartError(f"stub {stub_id} already runs (pid {existing.pid})")


async def _listen(stub: StubServer, host: str, port: int) -> asyncio.Server:
    """Listen for HTTP; sets `stub.port` (the one picked when `port` is 0)."""
    loop = asyncio.get_running_loop()
    try:
        listener = await loop.create_server(
            lambda: StubProtocol(stub), host, port, reuse_address=True, backlog=4096
        )
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise StartError(f"port {port} is in use") from None
        raise StartError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    stub.port = listener.sockets[0].getsockname()[1]
    return listener


def _open_access_log(
    args: argparse.Namespace, paths: StubPaths | None, stub: StubServer
) -> StubLog | None:
    """The access log at --log, else in the state dir; none without either."""
    log_path = Path(args.log) if args.log else (paths.log if paths else None)
    if log_path is None:
        return None
    log = StubLog(log_path)
    flush_periodically(asyncio.get_running_loop(), log)
    log.event(
        f"started {args.id} on {args.host}:{stub.port} (pid {os.getpid()}): "
        f"{stub.behaviour.describe()}"
    )
    return log


def _registrar(args: argparse.Namespace, stub: StubServer) -> Registrar:
    return Registrar(
        stub.id,
        stub.port,
        # A wildcard address is no address to send traffic to: register the loopback one.
        host=args.host if args.host not in ("0.0.0.0", "::", "") else "127.0.0.1",
        pool=args.pool,
        api=args.api,
        token=args.token,
        state_dir=args.state_dir,
        log=stub.access_log,
    )


async def _open_control(
    paths: StubPaths, stub: StubServer, registrar: Registrar | None
) -> asyncio.AbstractServer:
    try:
        return await serve_control(paths.sock, partial(_answer_control, stub, registrar))
    except (ControlError, OSError) as error:
        raise StartError(str(error)) from None


def _answer_control(
    stub: StubServer, registrar: Registrar | None, request: dict[str, Any]
) -> dict[str, Any]:
    """One control request (stubs/control.py): get, stats or set."""
    op = request.get("op")
    if op == "get":
        registration = (
            {"state": "off", "detail": ""}
            if registrar is None
            else {"state": registrar.state, "detail": registrar.detail}
        )
        return {
            "ok": True,
            "id": stub.id,
            "pid": os.getpid(),
            "port": stub.port,
            "behaviour": stub.behaviour.to_dict(),
            "stats": stub.stats(),
            "registration": registration,
        }
    if op == "stats":
        return {"ok": True, "stats": stub.stats()}
    if op == "set":
        changes = request.get("behaviour")
        if not isinstance(changes, dict):
            raise ValueError('"set" needs a "behaviour" object')
        behaviour = stub.behaviour.with_changes(changes)
        if behaviour != stub.behaviour:
            stub.set_behaviour(behaviour)
            if stub.access_log is not None:
                stub.access_log.event(f"behaviour: {behaviour.describe()}")
        return {"ok": True, "behaviour": behaviour.to_dict()}
    raise ValueError(f"unknown op {op!r} (expected get, set or stats)")


def _record(args: argparse.Namespace, stub: StubServer) -> StubRecord:
    """The pid file's content; the start ticks and command line prove it is this process."""
    return StubRecord(
        id=args.id,
        pid=os.getpid(),
        port=stub.port,
        host=args.host,
        pool=args.pool if args.register else None,
        api=args.api if args.register else None,
        started_at=stub.started_at,
        start_ticks=process_start_ticks(os.getpid()) or 0,
        argv=process_argv(os.getpid()),
    )


async def _wait_for_signal(paths: StubPaths | None) -> None:
    """Return on the first SIGINT or SIGTERM; a second one exits at once."""
    stopping = asyncio.Event()

    def on_signal() -> None:
        if stopping.is_set():
            # A second Ctrl-C: do not wait for the balancer any longer.
            _cleanup(paths)
            os._exit(0)
        stopping.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    await stopping.wait()


async def _shut_down(
    stub: StubServer,
    listener: asyncio.Server,
    control: asyncio.AbstractServer | None,
    registrar: Registrar | None,
    paths: StubPaths | None,
) -> None:
    # Keep serving while the balancer drains us; only then stop listening.
    if registrar is not None:
        await registrar.stop()
    listener.close()
    if control is not None:
        control.close()
    for connection in list(stub.connections):
        connection.shutdown()
    if stub.access_log is not None:
        stub.access_log.event("stopped")
        stub.access_log.close()
    _cleanup(paths)


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
        prog="python -m stubs.server", description=(http_server.__doc__ or "").split("\n\n")[0]
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
