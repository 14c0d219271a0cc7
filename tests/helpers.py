"""Test helpers: processes with recorded PIDs, readiness waits, a raw HTTP/1.1 client."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


# Quick health checks for the pool "default": states change within a second.
FAST_CHECKS = """
[pools.default.health]
interval = 0.2
fast_interval = 0.1
down_interval = 0.2
max_down_interval = 0.4
"""


class FakeClock:
    """A clock for sans-I/O objects: call it for the time, set `now` to move it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Yield to the running loop until `condition` holds; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    *,
    since: float | None = None,
) -> Any:
    """Poll `condition` until it returns something truthy, or fail after `timeout` seconds.

    The deadline counts from `since` (a `time.monotonic()` reading taken when the clock of
    a promise started, e.g. when a change was answered) instead of from this call."""
    deadline = (time.monotonic() if since is None else since) + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        time.sleep(interval)


@dataclass
class Process:
    """A child process started by a test; stopped by its PID only."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start_reader(self) -> None:
        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def wait_line(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            if self.proc.poll() is not None and not self._reader_alive():
                output = "\n".join(self.lines[-30:])
                raise AssertionError(f"process exited ({self.proc.returncode}):\n{output}")
            for line in list(self.lines):
                match = regex.search(line)
                if match:
                    return match
            return None

        return wait_for(found, timeout)

    def _reader_alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signum)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(2)
        return self.proc.returncode


def spawn(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> Process:
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd or ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    process = Process(proc)
    process.start_reader()
    return process


# -- tools the suite needs: a skip on a developer's machine, a failure in CI --------------------


def in_ci() -> bool:
    """True when the `CI` environment variable is set (GitHub Actions, GitLab, ... set it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_tool(missing_reason: str | None) -> None:
    """Skip the calling test (or fixture) when a tool is missing, saying why, or FAIL it when
    `CI` is set: a CI run must not pass by skipping whole areas.

    `missing_reason` is None when the tool is there; otherwise it says what is missing and how
    to install it. Call it at the start of a fixture or test, or from an autouse fixture for
    a whole module."""
    if missing_reason is None:
        return
    if in_ci():
        pytest.fail(f"{missing_reason} [CI is set: a missing tool fails the run]", pytrace=False)
    pytest.skip(missing_reason)


REDIS_SERVER = shutil.which("redis-server")
REDIS_MISSING = (
    None
    if REDIS_SERVER is not None
    else "redis-server is not on PATH "
    "(scripts/install-system-deps.sh installs it: apt-get install redis-server)"
)
LOCUST_MISSING = (
    None
    if importlib.util.find_spec("locust") is not None
    else "Locust is not installed (the bench extra): pip install -e '.[bench]'"
)
WEBSOCKETS_MISSING = (
    None
    if importlib.util.find_spec("websockets") is not None
    else "the websockets package is not installed (the test extra): pip install -e '.[test]'"
)


# -- a real redis-server --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A redis-server child process on a fixed port; stopped by its PID only."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.directory),
                ],
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self.answers, timeout=10)

    def answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited:\n{self.log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64) == b"+PONG\r\n"
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


# -- a raw HTTP/1.1 client -----------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    reason: str = ""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """`python -m bunancer ARGS`, its output captured (it may fail: the caller checks)."""
    return subprocess.run(
        [sys.executable, "-m", "bunancer", *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class RawClient:
    """A blocking socket client that sends exact bytes and reads exact responses."""

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        timeout: float = 10.0,
        source: str = "",
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        """`source`: the local address to connect from (another 127.0.0.x, say); `tls`:
        speak TLS with that context, sending `server_name` as SNI (None: none)."""
        sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock if tls is None else tls.wrap_socket(sock, server_hostname=server_name)
        self.buffer = b""

    def peer_names(self) -> list[str]:
        """The DNS names of the certificate the server presented (over TLS)."""
        assert isinstance(self.sock, ssl.SSLSocket)
        certificate = self.sock.getpeercert()
        return [value for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS"]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        """Read more bytes into the buffer; False at end of stream."""
        try:
            data = self.sock.recv(262144)
        except ConnectionResetError:
            data = b""
        self.buffer += data
        return bool(data)

    def _take_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError("connection closed in the middle of a line")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            if not self._fill():
                raise ConnectionError(
                    f"connection closed after {len(self.buffer)} of {count} body bytes"
                )
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def read_response(self, head_request: bool = False) -> Response:
        """Read exactly one final response (interim 1xx ones are skipped), leaving any
        bytes that follow (a pipelined response) in the buffer.

        A small reader of its own, independent of the proxy's parser: the head up to the
        empty line, then a Content-Length, chunked or close-delimited body. Raises
        ConnectionError if the connection closes before the response is complete.
        """
        while True:
            while b"\r\n\r\n" not in self.buffer:
                if not self._fill():
                    raise ConnectionError("connection closed before a complete response head")
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            version, status_text, *reason = status_line.split(" ", 2)
            assert version.startswith("HTTP/1."), status_line
            status = int(status_text)
            headers = [(n.strip(), v.strip()) for n, _, v in (h.partition(":") for h in lines)]
            if status >= 200 or status == 101:
                break
        response = Response(status, headers, b"", reason[0] if reason else "")
        if head_request or status in (204, 304) or status < 200:
            return response
        te = response.header("Transfer-Encoding")
        length = response.header("Content-Length")
        if te is not None and te.lower().endswith("chunked"):
            pieces = []
            while True:
                size = int(self._take_line().split(b";")[0], 16)
                if size == 0:
                    while self._take_line():  # trailers, then the empty line
                        pass
                    break
                pieces.append(self._take(size))
                if self._take(2) != b"\r\n":
                    raise ConnectionError("chunk not followed by CRLF")
            response.body = b"".join(pieces)
        elif length is not None:
            response.body = self._take(int(length))
        else:
            while self._fill():
                pass
            response.body, self.buffer = self.buffer, b""
        return response

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Response:
        headers = dict(headers or {})
        if not any(name.lower() == "host" for name in headers):
            headers["Host"] = "test"
        head = f"{method} {path} HTTP/1.1\r\n"
        for name, value in headers.items():
            head += f"{name}: {value}\r\n"
        if body or method in ("POST", "PUT"):
            head += f"Content-Length: {len(body)}\r\n"
        self.send(head.encode() + b"\r\n" + body)
        return self.read_response(head_request=method == "HEAD")

    def is_closed(self, timeout: float = 5.0) -> bool:
        """True when the peer has closed (recv returns b"" or the connection resets)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        if data:
            self.buffer += data
            return False
        return True

    def read_all(self) -> bytes:
        chunks = [self.buffer]
        self.buffer = b""
        while True:
            try:
                data = self.sock.recv(262144)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
