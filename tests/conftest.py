"""Fixtures: real backend processes and real `bunancer serve` processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REDIS_MISSING, Process, RawClient, RedisServer, require_tool, spawn


@dataclass
class Backend:
    process: Process
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Proxy:
    process: Process
    port: int
    state_dir: Path
    api_port: int = 0
    dashboard_port: int = 0

    @property
    def token(self) -> str:
        return (self.state_dir / "token").read_text().strip()

    def client(self, timeout: float = 10.0) -> RawClient:
        return RawClient(self.port, timeout=timeout)


# A test of what one process shares (one connection pool per server, one count of a
# listener's connections): with --workers each worker has its own, as nginx's do.
single_process_only = pytest.mark.skipif(
    bool(os.environ.get("BUNANCER_TEST_WORKERS")),
    reason="per-worker connection pools and limits: tested in one process",
)


def serve_args(config: Path, state_dir: Path, *args: str) -> list[str]:
    """`python -m bunancer serve` on `config` and `state_dir` (for `spawn`)."""
    return ["-m", "bunancer", "serve", "--config", str(config), "--state-dir", str(state_dir),
            *args, *workers_flag(args)]  # fmt: skip


def workers_flag(args: tuple[str, ...]) -> tuple[str, ...]:
    """`--workers N` from BUNANCER_TEST_WORKERS (`./run test` runs the data plane's tests once
    more so), unless the test chose its own."""
    count = os.environ.get("BUNANCER_TEST_WORKERS")
    return ("--workers", count) if count and "--workers" not in args else ()


def start_backend() -> Backend:
    return start_backend_on(0)


def start_backend_on(port: int) -> Backend:
    process = spawn(["-m", "tests.backend", str(port)])
    match = process.wait_line(r"^PORT (\d+)$")
    return Backend(process, int(match.group(1)))


@pytest.fixture(scope="session")
def backends() -> Iterator[list[Backend]]:
    """Two scripted backends shared by the session (their behaviour is per path)."""
    started = [start_backend(), start_backend()]
    yield started
    for backend in started:
        backend.process.stop()


StartProxy = Callable[..., Proxy]

# Every balancer `start_proxy` started that is still to be stopped, oldest first.
_RUNNING: list[Proxy] = []


def _stop_all(proxies: list[Proxy]) -> None:
    """Stop `proxies` (by PID) and forget them; SIGTERM to all first, so they drain at once."""
    for proxy in proxies:
        proxy.process.signal(signal.SIGTERM)
    for proxy in proxies:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proxy.process.proc.wait(10)
        proxy.process.stop()  # reaps it, or kills one that did not exit
    stopped = {id(proxy) for proxy in proxies}
    _RUNNING[:] = [proxy for proxy in _RUNNING if id(proxy) not in stopped]


@pytest.fixture(autouse=True)
def _stop_proxies_started_by_the_test() -> Iterator[None]:
    """A balancer started while a test runs (in its body or a function-scoped fixture) stops
    when the test ends. Module-scoped fixtures are set up before this one, so theirs are
    already running here and stop with their module (see `start_proxy`)."""
    before = {id(proxy) for proxy in _RUNNING}
    yield
    _stop_all([proxy for proxy in _RUNNING if id(proxy) not in before])


@pytest.fixture(scope="module")
def start_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartProxy]:
    """Start `bunancer serve` with a config built from `servers` and extra TOML text.

    Module-scoped: what a module's fixtures start stops when the module ends, what a test
    starts stops when the test ends, so the balancers health-checking the shared backends
    are only those of the running module."""
    started: list[Proxy] = []

    def start(
        servers: list[str],
        extra: str = "",
        args: tuple[str, ...] = (),
        state_dir: Path | None = None,
        algorithm: str = "round-robin",
        listener: str = "",
    ) -> Proxy:
        """`state_dir` reuses a previous proxy's state (a restart); `listener`, TOML lines
        for the proxy's listener table. The default pool is round-robin here (the product's
        default is p2c) so tests can predict who answers."""
        workdir = tmp_path_factory.mktemp("proxy")
        server_lines = ", ".join(f'{{ address = "{s}" }}' for s in servers)
        extra = textwrap.dedent(extra)
        if "[api]" not in extra:
            extra += '\n[api]\nlisten = "127.0.0.1:0"\n'
        if "[dashboard]" not in extra:
            extra += '\n[dashboard]\nlisten = "127.0.0.1:0"\n'
        toml = (
            extra
            + f'\n[[listeners]]\naddress = "127.0.0.1:0"\n{listener}\n\n'
            + f'[pools.default]\nalgorithm = "{algorithm}"\nservers = [{server_lines}]\n'
        )
        config_path = workdir / "bunancer.toml"
        config_path.write_text(toml)
        state_dir = state_dir or workdir / "state"
        process = spawn(serve_args(config_path, state_dir, *args))
        match = process.wait_line(r"ready: proxy listening on 127\.0\.0\.1:(\d+)")
        api = process.wait_line(r"ready: api listening on 127\.0\.0\.1:(\d+)")
        dashboard = process.wait_line(r"ready: (?:dashboard listening on 127\.0\.0\.1:(\d+)|proxy)")
        proxy = Proxy(
            process,
            int(match.group(1)),
            state_dir,
            int(api.group(1)),
            int(dashboard.group(1) or 0),
        )
        started.append(proxy)
        _RUNNING.append(proxy)
        return proxy

    yield start
    _stop_all(started)


@pytest.fixture(scope="module")
def proxy(start_proxy: StartProxy, backends: list[Backend]) -> Proxy:
    """A proxy with default settings over both backends, shared by a test module."""
    return start_proxy([b.url for b in backends])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free port, stopped by its PID afterwards. Skipped without
    redis-server on PATH, or failed when `CI` is set."""
    require_tool(REDIS_MISSING)
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
