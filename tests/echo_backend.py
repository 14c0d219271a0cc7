"""A TCP echo backend for the TCP-mode tests, run as a real process.

``python -m tests.echo_backend [PORT]`` prints ``PORT <n>``. Everything received is sent
back; on EOF from the client the rest is flushed and the connection closed (so a client
that half-closes still reads its whole reply). A connection that starts with a PROXY
protocol header first gets ``HEADER <hex of the header bytes>\\n``, then the echo. With
``--greet`` every connection first gets ``HELLO\\n`` from the server, as SMTP or MySQL
servers speak first.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

from bunancer.core import proxyproto


class Echo(asyncio.Protocol):
    greeting = b""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.start = b""
        self.started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.greeting:
            self.transport.write(self.greeting)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.started:
            self.start += data
            if proxyproto.looks_like_header(self.start):
                try:
                    _, used = proxyproto.parse(self.start)
                except proxyproto.ProxyHeaderError:
                    self.transport.write(b"BAD HEADER\n")
                    self.transport.close()
                    return
                if not used:
                    return
                self.transport.write(b"HEADER %s\n" % self.start[:used].hex().encode())
                data, self.start = self.start[used:], b""
            else:
                data, self.start = self.start, b""
            self.started = True
        if data:
            self.transport.write(data)

    def eof_received(self) -> bool:
        assert self.transport is not None
        if self.start:  # ended inside what could have become a header: it was data
            self.transport.write(self.start)
        self.transport.close()  # flushes what is buffered first
        return True


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", port)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if "--greet" in arguments:
        arguments.remove("--greet")
        Echo.greeting = b"HELLO\n"
    uvloop.run(main(int(arguments[0]) if arguments else 0))
