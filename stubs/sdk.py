"""Stub SDK: start, list, inspect, change, follow and stop stub backends of a state dir.

The one way the CLI, the dashboard and the Locust scenarios drive stubs. Stubs run as
detached processes (own session, output in ``<id>.out``) and are found again through their
pid files (stubs/state.py): a record counts only when its process lives and is that very
stub, and stale records are removed as they are met. Behaviour and counters go through
each stub's control socket (stubs/control.py). No process table scanning, no ``ps | grep``.

    manager = StubManager(".bunancer")
    s1, s2 = manager.start(2, register=True, pool="default")
    manager.set("s2", status=503)
    manager.stop_all()
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .behaviour import FIELDS, Behaviour, Latency
from .control import ControlError, call
from .state import (
    ID_PATTERN,
    StubPaths,
    StubRecord,
    default_state_dir,
    ensure_stubs_dir,
    is_live,
    process_running,
    read_record,
    remove_files,
    stubs_dir,
)

START_TIMEOUT = 10.0
STOP_TIMEOUT = 20.0  # a registered stub waits for the balancer to drain it before exiting

# Stubs started by this process, so stopping one also reaps it (no zombie left behind).
_children: dict[int, subprocess.Popen[bytes]] = {}


class StubError(Exception):
    """A problem with stubs, said in one line for the user."""


class UnknownStub(StubError):
    pass


class PortInUse(StubError):
    def __init__(self, port: int) -> None:
        super().__init__(f"port {port} is in use")
        self.port = port


class RegistrationFailed(StubError):
    pass


@dataclass(frozen=True)
class Stub:
    """A handle on one running stub (a snapshot of its pid file, plus live calls)."""

    id: str
    pid: int
    port: int
    host: str
    pool: str | None  # the pool it registered in, None when not registering
    api: str | None
    started_at: float
    state_dir: Path

    @classmethod
    def from_record(cls, record: StubRecord, state_dir: Path) -> Stub:
        return cls(
            record.id,
            record.pid,
            record.port,
            record.host,
            record.pool,
            record.api,
            record.started_at,
            state_dir,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def paths(self) -> StubPaths:
        return StubPaths.of(self.state_dir, self.id)

    @property
    def uptime(self) -> float:
        return max(time.time() - self.started_at, 0.0)

    def _call(self, request: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
        try:
            return call(self.paths.sock, request, timeout)
        except ControlError as error:
            raise StubError(f"stub {self.id}: {error}") from None

    def info(self) -> dict[str, Any]:
        """Everything the stub says about itself: behaviour, stats, registration."""
        return self._call({"op": "get"})

    def behaviour(self) -> Behaviour:
        return Behaviour.from_dict(self.info()["behaviour"])

    def stats(self) -> dict[str, Any]:
        return self._call({"op": "stats"})["stats"]  # type: ignore[no-any-return]

    def registration(self) -> dict[str, str]:
        return self.info()["registration"]  # type: ignore[no-any-return]

    def set(self, **changes: Any) -> Behaviour:
        """Change behaviour live: status, latency, fail_rate, mode, size, health."""
        payload = {k: _jsonable(v) for k, v in changes.items() if v is not None}
        answer = self._call({"op": "set", "behaviour": payload})
        return Behaviour.from_dict(answer["behaviour"])


def _jsonable(value: Any) -> Any:
    return str(value) if isinstance(value, Latency) else value


def behaviour_flags(behaviour: Behaviour | dict[str, Any] | None) -> list[str]:
    """Command-line flags of `stubs.server` for the settings that differ from the default."""
    if behaviour is None:
        return []
    if isinstance(behaviour, dict):
        behaviour = Behaviour().with_changes(behaviour)  # validated here, before any start
    default = Behaviour().to_dict()
    flags: list[str] = []
    for name, value in behaviour.to_dict().items():
        if value != default[name]:
            flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


class StubManager:
    """The stubs of one state dir (default ``./.bunancer``, or BUNANCER_STATE_DIR)."""

    def __init__(self, state_dir: str | Path | None = None) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()

    @property
    def directory(self) -> Path:
        return stubs_dir(self.state_dir)

    # -- finding stubs -----------------------------------------------------------------------

    def list(self) -> builtins.list[Stub]:
        """Running stubs, by id number; stale pid files are removed on the way."""
        _reap()
        if not self.directory.is_dir():
            return []
        stubs = []
        for path in self.directory.glob("*.json"):
            stub_id = path.stem
            record = read_record(path)
            if record is None or record.id != stub_id or not is_live(record):
                remove_files(StubPaths.of(self.state_dir, stub_id))
                continue
            stubs.append(Stub.from_record(record, self.state_dir))
        return sorted(stubs, key=lambda s: _id_order(s.id))

    def get(self, stub_id: str) -> Stub:
        """The running stub `stub_id`, or UnknownStub naming the ones that do run."""
        if ID_PATTERN.match(stub_id):
            record = read_record(StubPaths.of(self.state_dir, stub_id).record)
            if record is not None and record.id == stub_id and is_live(record):
                return Stub.from_record(record, self.state_dir)
        running = ", ".join(s.id for s in self.list()) or "none"
        raise UnknownStub(f"no stub {stub_id!r} runs in {self.directory} (running: {running})")

    # -- starting ----------------------------------------------------------------------------

    def start(
        self,
        count: int = 1,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        behaviour: Behaviour | dict[str, Any] | None = None,
        register: bool = False,
        pool: str = "default",
        api: str | None = None,
        token: str | None = None,
        seed: int | None = None,
        timeout: float = START_TIMEOUT,
    ) -> builtins.list[Stub]:
        """Start `count` detached stubs (ports `port`, `port`+1, ... or free ones).

        Returns once every stub answers on its control socket and, with `register`, made
        its first registration attempt. All or nothing: if one fails (port in use,
        registration refused), the others started here are stopped and StubError raised.
        A balancer that does not answer yet is not an error: the stubs keep retrying
        (see `Stub.registration()`).
        """
        if count < 1:
            raise StubError("count must be at least 1")
        flags = behaviour_flags(behaviour)
        api = api or os.environ.get("BUNANCER_API") or "http://127.0.0.1:8081"
        ensure_stubs_dir(self.state_dir)
        state_dir = self.state_dir.resolve()
        env = _stub_env(token)
        started: builtins.list[tuple[str, int, subprocess.Popen[bytes]]] = []
        with self._lock():
            taken = {s.id for s in self.list()}
            try:
                for index in range(count):
                    stub_id = _next_id(taken)
                    taken.add(stub_id)
                    stub_port = port + index if port else 0
                    argv = _server_argv(stub_id, host, stub_port, state_dir, flags)
                    if seed is not None:
                        argv += ["--seed", str(seed + index)]
                    if register:
                        argv += ["--register", "--pool", pool, "--api", api]
                    started.append((stub_id, stub_port, self._spawn(stub_id, argv, env)))
                stubs = [self._wait_ready(*entry, timeout) for entry in started]
                if register:
                    self._wait_registered(stubs, timeout)
            except BaseException:
                self._abort(started)
                raise
        return stubs

    def _spawn(
        self, stub_id: str, argv: builtins.list[str], env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        """Start one stub detached, its stdout and stderr in ``<id>.out``."""
        paths = StubPaths.of(self.state_dir, stub_id)
        remove_files(paths, logs=True)  # a fresh log for a reused id
        out_fd = os.open(paths.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(out_fd, "wb") as out:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C in the terminal leaves it alone
            )
        _children[process.pid] = process
        return process

    def _wait_ready(
        self, stub_id: str, port: int, process: subprocess.Popen[bytes], timeout: float
    ) -> Stub:
        paths = StubPaths.of(self.state_dir, stub_id)
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                output = paths.out.read_text(errors="replace").strip().splitlines()
                last = output[-1] if output else f"exit code {process.returncode}"
                if "is in use" in last:
                    raise PortInUse(port)
                raise StubError(f"stub {stub_id} did not start: {last}")
            record = read_record(paths.record)
            if record is not None and record.pid == process.pid:
                stub = Stub.from_record(record, self.state_dir)
                with contextlib.suppress(StubError):
                    stub.info()
                    return stub
            if time.monotonic() > deadline:
                raise StubError(f"stub {stub_id} did not answer within {timeout:g}s")
            time.sleep(0.01)

    def _wait_registered(self, stubs: builtins.list[Stub], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for stub in stubs:
            while (registration := stub.registration())["state"] == "pending":
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            if registration["state"] == "failed":
                raise RegistrationFailed(f"stub {stub.id}: {registration['detail']}")

    def _abort(self, started: builtins.list[tuple[str, int, subprocess.Popen[bytes]]]) -> None:
        for _, _, process in started:
            if process.poll() is None:
                process.terminate()
        for stub_id, _, process in started:
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            _children.pop(process.pid, None)
            remove_files(StubPaths.of(self.state_dir, stub_id), logs=True)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise id allocation between processes starting stubs in one state dir."""
        fd = os.open(self.directory / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- behaviour, stats, logs --------------------------------------------------------------

    def info(self, stub_id: str) -> dict[str, Any]:
        return self.get(stub_id).info()

    def behaviour(self, stub_id: str) -> Behaviour:
        return self.get(stub_id).behaviour()

    def set(self, stub_id: str, **changes: Any) -> Behaviour:
        """Change `stub_id`'s behaviour live; returns the new behaviour."""
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise StubError(f"unknown setting {unknown[0]!r} (expected {', '.join(FIELDS)})")
        return self.get(stub_id).set(**changes)

    def stats(self, stub_id: str) -> dict[str, Any]:
        return self.get(stub_id).stats()

    def log_path(self, stub_id: str) -> Path:
        path = StubPaths.of(self.state_dir, stub_id).log
        if not ID_PATTERN.match(stub_id) or not path.exists():
            self.get(stub_id)  # UnknownStub with the list of running ones
            raise StubError(f"stub {stub_id} has no access log yet")
        return path

    def tail(self, stub_id: str, lines: int = 20) -> builtins.list[str]:
        """The last `lines` lines of the access log (also of a stopped stub, until reused)."""
        with self.log_path(stub_id).open("rb") as file:
            return _last_lines(file, lines)

    def follow(
        self,
        stub_id: str,
        lines: int = 10,
        *,
        poll: float = 0.1,
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[str]:
        """The last `lines` lines, then new ones as they come, across rotations.

        Ends when the stub stops (or `stop()` returns True); the caller may also just stop
        iterating.
        """
        path = self.log_path(stub_id)
        record = read_record(StubPaths.of(self.state_dir, stub_id).record)
        file = path.open("rb")
        pending = b""
        last_check = 0.0
        try:
            yield from _last_lines(file, lines)  # leaves the file at its end
            while True:
                data = file.read()
                with contextlib.suppress(OSError):
                    if os.stat(path).st_ino != os.fstat(file.fileno()).st_ino:
                        # Rotated: finish the old file, then go on with the new one.
                        data += file.read()
                        file.close()
                        file = path.open("rb")
                if data:
                    pending += data
                    *complete, pending = pending.split(b"\n")
                    for line in complete:
                        yield line.decode(errors="replace")
                    continue
                if stop is not None and stop():
                    return
                now = time.monotonic()
                if now - last_check > 0.5:
                    last_check = now
                    if record is None or not is_live(record):
                        return
                time.sleep(poll)
        finally:
            file.close()

    # -- stopping ----------------------------------------------------------------------------

    def stop(self, stub_id: str, timeout: float = STOP_TIMEOUT) -> Stub:
        """Stop `stub_id` (SIGTERM: it deregisters, then exits; SIGKILL after `timeout`)."""
        stub = self.get(stub_id)
        self._stop([stub], timeout)
        return stub

    def stop_all(self, timeout: float = STOP_TIMEOUT) -> builtins.list[Stub]:
        """Stop every running stub of the state dir, in parallel; returns the stopped ones."""
        stubs = self.list()
        self._stop(stubs, timeout)
        return stubs

    def _stop(self, stubs: builtins.list[Stub], timeout: float) -> None:
        for stub in stubs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stub.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for stub in stubs:
            if not _wait_gone(stub.pid, deadline - time.monotonic()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stub.pid, signal.SIGKILL)
                _wait_gone(stub.pid, 5.0)
            remove_files(stub.paths)


def _stub_env(token: str | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if token:
        env["BUNANCER_TOKEN"] = token  # not on the command line, where ps shows it
    return env


def _server_argv(
    stub_id: str, host: str, port: int, state_dir: Path, flags: list[str]
) -> list[str]:
    """The command line of one stub; `stubs.server` and ``--id`` are how its pid file is
    recognised (stubs/state.py)."""
    return [
        sys.executable, "-m", "stubs.server", "--id", stub_id, "--host", host,
        "--port", str(port), "--state-dir", str(state_dir), *flags,
    ]  # fmt: skip


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + max(timeout, 0.0)
    while True:
        process = _children.get(pid)
        if process is not None:
            if process.poll() is not None:
                del _children[pid]
                return True
        elif not process_running(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def _reap() -> None:
    """Collect exit statuses of our own stubs that were stopped by someone else."""
    for pid, process in list(_children.items()):
        if process.poll() is not None:
            del _children[pid]


def _id_order(stub_id: str) -> tuple[int, str]:
    number = stub_id[1:]
    return (int(number), "") if stub_id.startswith("s") and number.isdigit() else (1 << 30, stub_id)


def _next_id(taken: set[str]) -> str:
    number = 1
    while f"s{number}" in taken:
        number += 1
    return f"s{number}"


def _last_lines(file: BinaryIO, count: int) -> list[str]:
    """The last `count` lines of `file`, read backwards in growing blocks; the file is left
    positioned at its end."""
    end = file.seek(0, os.SEEK_END)
    if count <= 0:
        return []
    position, block, data = end, 8192, b""
    while position > 0 and data.count(b"\n") <= count:
        step = min(block, position)
        position -= step
        file.seek(position)
        data = file.read(step) + data
        block *= 2
    file.seek(end)
    return data.decode(errors="replace").splitlines()[-count:]
