"""Stub backend server on uvloop + httptools: answers any path with a small body naming
its id, fast enough never to be the bottleneck of a benchmark.

``python -m stubs.server --port 9001 --id s1`` prints ``PORT <n>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio

import httptools
import uvloop


class StubProtocol(asyncio.Protocol):
    """One client connection; responses are pre-built bytes, one write per request."""

    __slots__ = ("keep_alive", "parser", "response", "transport")

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            self.transport.close()

    def on_message_complete(self) -> None:
        assert self.transport is not None
        self.transport.write(self.response)
        if not self.parser.should_keep_alive():
            self.transport.close()


def build_response(stub_id: str, size: int) -> bytes:
    body = f"{stub_id}\n".encode()
    if size > len(body):
        body += b"x" * (size - len(body) - 1) + b"\n"
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
        b"X-Stub-Id: %s\r\n\r\n%s" % (len(body), stub_id.encode(), body)
    )


async def serve(host: str, port: int, stub_id: str, size: int) -> None:
    loop = asyncio.get_running_loop()
    response = build_response(stub_id, size)
    server = await loop.create_server(
        lambda: StubProtocol(response), host, port, reuse_address=True, backlog=4096
    )
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--id", default="s1")
    parser.add_argument("--size", type=int, default=0, help="response body size in bytes")
    args = parser.parse_args()
    try:
        uvloop.run(serve(args.host, args.port, args.id, args.size))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
