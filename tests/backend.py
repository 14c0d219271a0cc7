"""A backend with scripted behaviours for the integration tests, run as a real process.

``python -m tests.backend [PORT [CERT KEY]]`` prints ``PORT <n>`` once listening (over TLS
with the CERT and KEY files when given). Paths choose behaviour:

  /size/N            N bytes (pattern from `pattern_bytes`) with Content-Length,
                     streamed with backpressure when large
  /chunked/N         N bytes chunked, in pieces of at most 64 KiB
  /close/N           N bytes delimited by closing the connection (no length, no chunking)
  /sha256            reads the whole request body, answers "<hex> <length>"
  /echo-headers      the request line and headers it received, as JSON
  /status/N          an empty response with status N
  /fail-on/P/N       status N if this backend listens on port P, else 200 "<sha> <len> <port>"
  /sleep/MS          answers after MS milliseconds
  /hang              never answers
  /die               announces 100 bytes, sends 10, closes
  /bad-framing       answers with a malformed chunked body
  /continue          sends "100 Continue" before reading the body, then like /sha256
  /early-hints       "103 Early Hints" and then "ok", both heads in one write
  /log               every request line seen so far and the connection counts, as JSON
  /hang-on/P         never answers if this backend listens on port P, else "ok <port>"
  /stale-next        "ok <port>"; the next request on this connection is met with a close,
                     unanswered (a kept-alive connection the backend closed as it was reused)
  /upgrade           to an Upgrade request: "101 Switching Protocols", then echoes whatever
                     the connection carries (a tunnel)
  /slow-sha256/MS    like /sha256, but reading the body slowly: each piece read is followed
                     by a pause of MS milliseconds before the next read
  anything else      "ok <port>"
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import sys
from collections.abc import Iterator

import httptools
import uvloop

PATTERN = bytes(range(256)) * 256  # 64 KiB


def pattern_bytes(n: int) -> bytes:
    whole, rest = divmod(n, len(PATTERN))
    return PATTERN * whole + PATTERN[:rest]


def stream_pattern(n: int) -> Iterator[bytes]:
    """The same bytes as `pattern_bytes(n)`, in 64 KiB pieces."""
    whole, rest = divmod(n, len(PATTERN))
    for _ in range(whole):
        yield PATTERN
    if rest:
        yield PATTERN[:rest]


class State:
    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.proxied_connections = 0
        self.requests: list[str] = []


STATE = State()


class BackendProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.digest = hashlib.sha256()
        self.length = 0
        self.method = b""
        self.pending: Iterator[bytes] | None = None
        self.paused = False
        self.proxied = False
        self.stale = False  # /stale-next: close at the next request, unanswered
        self.echo = False  # /upgrade: switched protocols, now an echo
        self.read_pause = 0.0  # /slow-sha256/MS: seconds to pause after each body piece

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop transports are not asyncio.Transport subclasses
        STATE.connections += 1

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()

    def pump(self) -> None:
        """Write a streamed body while the transport accepts it (backpressure)."""
        assert self.transport is not None
        while self.pending is not None and not self.paused and not self.transport.is_closing():
            piece = next(self.pending, None)
            if piece is None:
                self.pending = None
                return
            self.transport.write(piece)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.echo:
            self.transport.write(data)
            return
        if self.stale:
            self.transport.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if not self.echo:
                raise
            self.transport.write(data[upgrade.args[0] :])
        except httptools.HttpParserError:
            self.send(400, b"bad request\n", close=True)

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.digest = hashlib.sha256()
        self.length = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.method = self.parser.get_method()
        if not self.proxied and any(n.lower() == b"x-forwarded-for" for n, _ in self.headers):
            self.proxied = True  # health checks do not count: they carry no X-Forwarded-For
            STATE.proxied_connections += 1
        STATE.requests.append(f"{self.method.decode()} {self.url.decode()}")
        if self.url.startswith(b"/slow-sha256/"):
            self.read_pause = int(self.url.split(b"/")[2].split(b"?")[0]) / 1000
        if self.url == b"/continue":
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.digest.update(body)
        self.length += len(body)
        if self.read_pause and self.transport is not None:
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(self.read_pause, self.resume_reading)

    def on_message_complete(self) -> None:
        self.respond(self.url.decode())

    def send(
        self,
        status: int,
        body: bytes,
        *,
        close: bool = False,
        extra: bytes = b"",
        length: int | None = None,
    ) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        head = b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%s" % (
            status,
            len(body) if length is None else length,
            extra,
        )
        if close:
            head += b"Connection: close\r\n"
        self.transport.write(head + b"\r\n" + (b"" if self.method == b"HEAD" else body))
        if close:
            self.transport.close()

    def respond(self, path: str) -> None:
        assert self.transport is not None
        parts = path.split("?")[0].strip("/").split("/")
        kind, arg = parts[0], parts[1] if len(parts) > 1 else ""
        if kind == "size" and int(arg) > 4 * len(PATTERN):
            size = int(arg)
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            self.pending = stream_pattern(size)
            self.pump()
        elif kind == "size":
            self.send(200, pattern_bytes(int(arg)))
        elif kind == "chunked":
            self.send_chunked(pattern_bytes(int(arg)))
        elif kind == "close":
            self.transport.write(b"HTTP/1.1 200 OK\r\nX-Close: 1\r\n\r\n")
            body = pattern_bytes(int(arg))
            for start in range(0, len(body), 65536):
                self.transport.write(body[start : start + 65536])
            self.transport.close()
        elif kind in ("sha256", "continue", "slow-sha256"):
            self.read_pause = 0.0
            self.send(200, f"{self.digest.hexdigest()} {self.length}".encode())
        elif kind == "echo-headers":
            payload = {
                "request_line": f"{self.method.decode()} {self.url.decode()}",
                "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in self.headers],
            }
            self.send(
                200, json.dumps(payload).encode(), extra=b"Content-Type: application/json\r\n"
            )
        elif kind == "early-hints":
            self.transport.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
            self.send(200, b"ok")
        elif kind == "status":
            self.send(int(arg), b"")
        elif kind == "fail-on":
            # /fail-on/PORT/STATUS: this backend fails if it listens on PORT, else answers.
            failing, status = int(parts[1]), int(parts[2])
            if STATE.port == failing:
                self.send(status, b"failed\n")
            else:
                self.send(200, f"{self.digest.hexdigest()} {self.length} {STATE.port}".encode())
        elif kind == "sleep":
            loop = asyncio.get_running_loop()
            loop.call_later(int(arg) / 1000, self.send, 200, b"slept\n")
        elif kind == "hang":
            return
        elif kind == "hang-on":
            if STATE.port != int(arg):
                self.send(200, b"ok %d\n" % STATE.port)
        elif kind == "stale-next":
            self.send(200, b"ok %d\n" % STATE.port)
            self.stale = True
        elif kind == "upgrade":
            upgrade = next((v for n, v in self.headers if n.lower() == b"upgrade"), None)
            if upgrade is None:
                self.send(426, b"upgrade required\n")
                return
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                b"Upgrade: %s\r\n\r\n" % upgrade
            )
            self.echo = True
        elif kind == "die":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            self.transport.close()
        elif kind == "bad-framing":
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
            )
        elif kind == "log":
            payload = {
                "requests": STATE.requests,
                "connections": STATE.connections,
                "proxied_connections": STATE.proxied_connections,
            }
            self.send(200, json.dumps(payload).encode())
        else:
            self.send(200, b"ok %d\n" % STATE.port)

    def send_chunked(self, body: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for start in range(0, len(body), 65536):
            piece = body[start : start + 65536]
            self.transport.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.transport.write(b"0\r\n\r\n")


async def main(port: int, tls: ssl.SSLContext | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(BackendProtocol, "127.0.0.1", port, ssl=tls)
    STATE.port = server.sockets[0].getsockname()[1]
    print(f"PORT {STATE.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    context = None
    if len(sys.argv) > 3:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[2], sys.argv[3])
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0, context))
