"""Fixtures: real backend processes and real `bunancer serve` processes on 127.0.0.1."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import Process, RawClient, RedisServer, spawn


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


@pytest.fixture(scope="session")
def start_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartProxy]:
    """Start `bunancer serve` with a config built from `servers` and extra TOML text."""
    started: list[Proxy] = []

    def start(
        servers: list[str],
        extra: str = "",
        args: tuple[str, ...] = (),
        state_dir: Path | None = None,
        algorithm: str = "round-robin",
    ) -> Proxy:
        """`state_dir` reuses a previous proxy's state (a restart). The default pool is
        round-robin here (the product's default is p2c) so tests can predict who answers."""
        workdir = tmp_path_factory.mktemp("proxy")
        server_lines = ", ".join(f'{{ address = "{s}" }}' for s in servers)
        extra = textwrap.dedent(extra)
        if "[api]" not in extra:
            extra += '\n[api]\nlisten = "127.0.0.1:0"\n'
        if "[dashboard]" not in extra:
            extra += '\n[dashboard]\nlisten = "127.0.0.1:0"\n'
        toml = (
            extra
            + '\n[[listeners]]\naddress = "127.0.0.1:0"\n\n'
            + f'[pools.default]\nalgorithm = "{algorithm}"\nservers = [{server_lines}]\n'
        )
        config_path = workdir / "bunancer.toml"
        config_path.write_text(toml)
        state_dir = state_dir or workdir / "state"
        process = spawn(
            [
                "-m",
                "bunancer",
                "serve",
                "--config",
                str(config_path),
                "--state-dir",
                str(state_dir),
                *args,
            ]
        )
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
        return proxy

    yield start
    for proxy in started:
        proxy.process.stop()


@pytest.fixture(scope="module")
def proxy(start_proxy: StartProxy, backends: list[Backend]) -> Proxy:
    """A proxy with default settings over both backends, shared by a test module."""
    return start_proxy([b.url for b in backends])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free port, stopped by its PID afterwards."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
