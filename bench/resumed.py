"""Resumed TLS handshakes, one request each: ``openssl s_time -reuse`` (wrk never resumes).

Each s_time client makes one full handshake, then connects again and again with that
session, fetching ``/`` (HTTP/1.0, so the front closes) on every connection; it prints
``r`` for a resumed connection and ``*`` for one that was not. Several clients run at
once, since each waits for its answer before the next connection. s_time reports no
latency and no status codes, so the same request is sent once first and its answer must
be a 2xx; a connection that was not resumed, or a client that failed, is an error too.

s_time asks for ``GET <page> HTTP/1.0`` and nothing else. Without a Host, nginx as a front
sends its backend an empty one and gets a 400, so the page carries a Host line of its own:
``GET / HTTP/1.0`` + ``Host: 127.0.0.1`` + ``X-Page: HTTP/1.0``.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass

HOST = "127.0.0.1"
PAGE = f"/ HTTP/1.0\r\nHost: {HOST}\r\nX-Page:"  # s_time appends " HTTP/1.0\r\n\r\n"
REQUEST = f"GET {PAGE} HTTP/1.0\r\n\r\n".encode()


@dataclass(frozen=True)
class SessionTimes:
    """What one s_time client printed, read back."""

    connections: int
    not_resumed: int


def parse_s_time(output: str) -> SessionTimes:
    """Connections made, and how many of them were full handshakes instead of resumed."""
    counted = re.search(r"^(\d+) connections in [\d.]+ real seconds", output, re.MULTILINE)
    if counted is None:
        raise ValueError(f"s_time output lacks its connection count:\n{output}")
    marks = output.split("Now timing with session id reuse.", 1)[-1]
    first = marks.find("starting")
    progress = marks[first + len("starting") :] if first >= 0 else marks
    # The progress line is one mark per connection, before the summary lines.
    line = progress.strip().splitlines()[0] if progress.strip() else ""
    return SessionTimes(connections=int(counted.group(1)), not_resumed=line.count("*"))


@dataclass
class ResumedResult:
    """The same shape as bench.throughput's WrkResult, without latency (s_time has none)."""

    requests: int
    rps: float
    socket_errors: dict[str, int]
    non_2xx: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values())


def status_of(port: int) -> bytes:
    """The status line a front answers s_time's request with."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the bench's own throwaway certificate
    with (
        socket.create_connection((HOST, port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(REQUEST)
        return tls.recv(4096).split(b"\r\n", 1)[0]


def run_s_time(
    port: int, seconds: float, clients: int, cpus: set[int] | None = None
) -> ResumedResult:
    argv = [
        "openssl", "s_time", "-connect", f"{HOST}:{port}",
        "-reuse", "-www", PAGE, "-time", str(max(1, round(seconds))),
    ]  # fmt: skip
    answered = status_of(port).split(b" ")
    started = time.monotonic()
    children = [
        subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
        )
        for _ in range(clients)
    ]
    times, failed = [], 0
    for child in children:
        output, _ = child.communicate(timeout=seconds + 30)
        if child.returncode != 0 or "real seconds" not in output:
            failed += 1  # e.g. "Unable to get connection": its count is not used
        else:
            times.append(parse_s_time(output))
    elapsed = time.monotonic() - started
    connections = sum(t.connections for t in times)
    return ResumedResult(
        requests=connections,
        rps=connections / elapsed,
        socket_errors={
            "failed_clients": failed,
            "not_resumed": sum(t.not_resumed for t in times),
            "probe_not_2xx": 0 if answered[1:2] and answered[1].startswith(b"2") else 1,
        },
    )
