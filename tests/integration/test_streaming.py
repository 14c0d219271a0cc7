"""Large bodies stream through with backpressure: intact by sha256, proxy memory bounded."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.backend import stream_pattern
from tests.conftest import Proxy
from tests.helpers import RawClient, wait_for

MiB = 1024 * 1024


class RssWatcher:
    """Samples the proxy's RSS from another thread while a transfer runs."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(self.proxy.process.rss_kib())

    def __enter__(self) -> RssWatcher:
        self.baseline = self.proxy.process.rss_kib()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mib(self) -> float:
        return (max(self.samples, default=self.baseline) - self.baseline) / 1024


def pattern_chunks(size: int) -> Iterator[bytes]:
    yield from stream_pattern(size)


def expected_digest(size: int) -> str:
    digest = hashlib.sha256()
    for piece in stream_pattern(size):
        digest.update(piece)
    return digest.hexdigest()


def download_digest(client: RawClient, path: str) -> tuple[str, int]:
    """GET `path` and hash a Content-Length body as it arrives (never held whole)."""
    client.send(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        data = client.sock.recv(65536)
        assert data, "closed before the head"
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    digest = hashlib.sha256(rest)
    received = len(rest)
    while received < length:
        data = client.sock.recv(min(1 << 20, length - received))
        assert data, f"closed after {received} of {length} bytes"
        digest.update(data)
        received += len(data)
    return digest.hexdigest(), received


def upload_digest(client: RawClient, size: int, chunked: bool = False) -> tuple[str, int]:
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % size
    client.send(b"POST /sha256 HTTP/1.1\r\nHost: t\r\n%s\r\n\r\n" % framing)
    for piece in pattern_chunks(size):
        client.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
    if chunked:
        client.send(b"0\r\n\r\n")
    response = client.read_response()
    assert response.status == 200, (response.status, response.headers, response.body[:200])
    digest, length = response.body.decode().split()
    return digest, int(length)


@pytest.mark.parametrize("size", [0, 1, MiB, 64 * MiB])
def test_download_intact(proxy: Proxy, size: int) -> None:
    with proxy.client(timeout=60) as client:
        if size == 0:
            assert client.request("GET", "/size/0").body == b""
            return
        assert download_digest(client, f"/size/{size}") == (expected_digest(size), size)


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("size", [0, 1, MiB, 64 * MiB])
def test_upload_intact(proxy: Proxy, size: int, chunked: bool) -> None:
    with proxy.client(timeout=60) as client:
        assert upload_digest(client, size, chunked) == (expected_digest(size), size)


def test_chunked_download_intact(proxy: Proxy) -> None:
    size = 8 * MiB
    with proxy.client(timeout=60) as client:
        response = client.request("GET", f"/chunked/{size}")
    assert hashlib.sha256(response.body).hexdigest() == expected_digest(size)


def test_memory_bounded_while_streaming_64mib_both_ways(proxy: Proxy) -> None:
    with RssWatcher(proxy) as watcher, proxy.client(timeout=60) as client:
        assert upload_digest(client, 64 * MiB) == (expected_digest(64 * MiB), 64 * MiB)
        assert download_digest(client, f"/size/{64 * MiB}")[1] == 64 * MiB
    assert watcher.samples, "no RSS samples taken"
    assert watcher.growth_mib < 16, f"proxy RSS grew {watcher.growth_mib:.1f} MiB"


def test_slow_reader_backpressure_keeps_memory_bounded(proxy: Proxy) -> None:
    """A client that stops reading: the proxy stops reading the backend, not buffering."""
    size = 256 * MiB
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    try:
        with RssWatcher(proxy) as watcher:
            sock.sendall(b"GET /size/%d HTTP/1.1\r\nHost: t\r\n\r\n" % size)
            sock.recv(65536)
            # Not reading any more: watch the proxy's memory over 20 samples (about 1 s).
            wait_for(lambda: len(watcher.samples) >= 20, timeout=10)
        assert watcher.growth_mib < 16, f"proxy RSS grew {watcher.growth_mib:.1f} MiB"
    finally:
        sock.close()


@pytest.mark.slow
def test_one_gib_upload_rss_flat(proxy: Proxy) -> None:
    size = 1024 * MiB
    with RssWatcher(proxy) as watcher, proxy.client(timeout=300) as client:
        digest, length = upload_digest(client, size)
    assert length == size
    assert digest == expected_digest(size)
    print(f"1 GiB: proxy RSS grew {watcher.growth_mib:.1f} MiB from {watcher.baseline} KiB")
    assert watcher.growth_mib < 16, f"proxy RSS grew {watcher.growth_mib:.1f} MiB"


@pytest.mark.slow
def test_one_gib_download_rss_flat(proxy: Proxy) -> None:
    size = 1024 * MiB
    with RssWatcher(proxy) as watcher, proxy.client(timeout=300) as client:
        digest, length = download_digest(client, f"/size/{size}")
    assert length == size
    assert digest == expected_digest(size)
    print(f"1 GiB: proxy RSS grew {watcher.growth_mib:.1f} MiB from {watcher.baseline} KiB")
    assert watcher.growth_mib < 16, f"proxy RSS grew {watcher.growth_mib:.1f} MiB"
