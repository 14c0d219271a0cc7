"""TCP mode and HTTP upgrades through one tunnel relay, with real processes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import socket
import struct
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bunancer.core import proxyproto
from tests.conftest import StartProxy, serve_args
from tests.helpers import WEBSOCKETS_MISSING, Process, free_port, require_tool, spawn, wait_for

MiB = 1024 * 1024


@dataclass
class TcpProxy:
    process: Process
    port: int


@pytest.fixture(scope="module")
def echoes() -> Iterator[list[int]]:
    started = [spawn(["-m", "tests.echo_backend"]) for _ in range(2)]
    ports = [int(p.wait_line(r"^PORT (\d+)$").group(1)) for p in started]
    yield ports
    for process in started:
        process.stop()


@pytest.fixture(scope="module")
def start_tcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    running: list[TcpProxy] = []

    def start(backends: list[int], listener: str = "", extra: str = "") -> TcpProxy:
        workdir = tmp_path_factory.mktemp("tcp")
        servers = ", ".join(f'{{ address = "tcp://127.0.0.1:{p}" }}' for p in backends)
        config = workdir / "bunancer.toml"
        config.write_text(
            textwrap.dedent(extra)
            + '[api]\nlisten = "127.0.0.1:0"\n[dashboard]\nlisten = "127.0.0.1:0"\n'
            + '[[listeners]]\naddress = "127.0.0.1:0"\nmode = "tcp"\n'
            + textwrap.dedent(listener)
            + f"\n[pools.default]\nservers = [{servers}]\n"
        )
        process = spawn(serve_args(config, workdir / "s"))
        port = int(process.wait_line(r"ready: proxy listening on 127\.0\.0\.1:(\d+)").group(1))
        proxy = TcpProxy(process, port)
        running.append(proxy)
        return proxy

    yield start
    for proxy in running:
        proxy.process.stop()


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_100_mib_both_ways_intact(start_tcp, echoes: list[int]) -> None:  # type: ignore[no-untyped-def]
    proxy = start_tcp(echoes)
    sent = hashlib.sha256()
    received = hashlib.sha256()
    total = 100 * MiB
    block = bytes(range(256)) * 256
    counted = [0]

    def reader(sock: socket.socket) -> None:
        while True:
            data = sock.recv(1 << 20)
            if not data:
                return
            received.update(data)
            counted[0] += len(data)

    with connect(proxy.port, timeout=60) as sock:
        thread = threading.Thread(target=reader, args=(sock,))
        thread.start()
        for _ in range(total // len(block)):
            sock.sendall(block)
            sent.update(block)
        sock.shutdown(socket.SHUT_WR)
        thread.join(60)
    assert counted[0] == total
    assert received.hexdigest() == sent.hexdigest()


def test_half_close_still_reads_the_whole_reply(start_tcp, echoes: list[int]) -> None:  # type: ignore[no-untyped-def]
    proxy = start_tcp(echoes)
    with connect(proxy.port) as sock:
        sock.sendall(b"a" * 300_000)
        sock.shutdown(socket.SHUT_WR)  # we are done talking, not listening
        assert read_until_closed(sock) == b"a" * 300_000


def test_500_concurrent_connections(start_tcp, echoes: list[int]) -> None:  # type: ignore[no-untyped-def]
    proxy = start_tcp(echoes)

    async def one(n: int) -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        message = b"hello %d\n" % n
        writer.write(message)
        answer = await asyncio.wait_for(reader.readexactly(len(message)), 20)
        writer.close()
        return answer == message

    async def main() -> list[bool]:
        return await asyncio.gather(*(one(n) for n in range(500)))

    assert all(asyncio.run(main()))


def test_refused_backend_is_retried_then_closed(start_tcp, echoes: list[int]) -> None:  # type: ignore[no-untyped-def]
    dead = free_port()
    proxy = start_tcp(
        [dead, echoes[0]],
        extra="[pools.default.health]\nenabled = false\n[pools.default.outlier]\nenabled = false\n",
    )
    for _ in range(6):  # round-robin: every other connection meets the dead one first
        with connect(proxy.port) as sock:
            sock.sendall(b"ping")
            sock.shutdown(socket.SHUT_WR)
            assert read_until_closed(sock) == b"ping"
    only_dead = start_tcp([free_port()], extra="[pools.default.health]\nenabled = false\n")
    with connect(only_dead.port) as sock:
        sock.sendall(b"ping")
        try:
            assert read_until_closed(sock) == b""
        except ConnectionResetError:
            pass  # closed by a reset: also a close


def test_idle_tunnel_is_closed(start_tcp, echoes: list[int]) -> None:  # type: ignore[no-untyped-def]
    proxy = start_tcp(echoes, listener="idle_timeout = 0.5\n")
    with connect(proxy.port, timeout=5) as sock:
        sock.sendall(b"x")
        assert sock.recv(10) == b"x"
        # Nothing more either way: the tunnel ends after 0.5 s (recv returns at the close).
        assert read_until_closed(sock) == b""


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_protocol_header_sent_to_backend(start_tcp, echoes: list[int], version: str) -> None:  # type: ignore[no-untyped-def]
    proxy = start_tcp(echoes[:1], listener=f'send_proxy_protocol = "{version}"\n')
    with connect(proxy.port) as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(b"after")
        sock.shutdown(socket.SHUT_WR)
        reply = read_until_closed(sock)
    line, _, rest = reply.partition(b"\n")
    header = bytes.fromhex(line.removeprefix(b"HEADER ").decode())
    addresses = proxyproto.Addresses("127.0.0.1", client_port, "127.0.0.1", proxy.port)
    expected = (proxyproto.encode_v2 if version == "v2" else proxyproto.encode_v1)(addresses)
    assert header == expected
    assert rest == b"after"


def test_proxy_protocol_accepted_from_trusted_only(start_tcp, echoes: list[int]) -> None:  # type: ignore[no-untyped-def]
    trusted = start_tcp(
        echoes[:1],
        listener='accept_proxy_protocol = true\nsend_proxy_protocol = "v1"\n'
        'trusted_proxies = ["127.0.0.1/32"]\n',
    )
    incoming = proxyproto.encode_v1(proxyproto.Addresses("203.0.113.7", 4242, "10.0.0.1", 80))
    with connect(trusted.port) as sock:
        sock.sendall(incoming + b"data")
        sock.shutdown(socket.SHUT_WR)
        reply = read_until_closed(sock)
    line, _, rest = reply.partition(b"\n")
    forwarded = proxyproto.parse(bytes.fromhex(line.removeprefix(b"HEADER ").decode()))[0]
    assert forwarded == proxyproto.Addresses("203.0.113.7", 4242, "10.0.0.1", 80)
    assert rest == b"data"
    # a malformed header from a trusted source closes the connection
    with connect(trusted.port) as sock:
        sock.sendall(b"PROXY TCP4 nonsense\r\n")
        assert read_until_closed(sock) == b""
    untrusted = start_tcp(
        echoes[:1], listener='accept_proxy_protocol = true\ntrusted_proxies = ["10.0.0.0/8"]\n'
    )
    with connect(untrusted.port) as sock:
        sock.sendall(incoming + b"data")
        try:
            assert read_until_closed(sock) == b""  # closed, the header never passed on
        except ConnectionResetError:
            pass


@pytest.fixture(scope="module")
def greeting_echo() -> Iterator[int]:
    process = spawn(["-m", "tests.echo_backend", "--greet"])
    yield int(process.wait_line(r"^PORT (\d+)$").group(1))
    process.stop()


def test_untrusted_proxy_header_refused_after_the_server_is_linked(  # type: ignore[no-untyped-def]
    start_tcp, greeting_echo: int
) -> None:
    """The server's greeting proves the tunnel is linked before the client's first byte:
    a forged header must be refused then too, not relayed as data."""
    proxy = start_tcp(
        [greeting_echo], listener='accept_proxy_protocol = true\ntrusted_proxies = ["10.0.0.0/8"]\n'
    )
    forged = proxyproto.encode_v1(proxyproto.Addresses("203.0.113.7", 4242, "10.0.0.1", 80))
    for pieces in ([forged], [forged[:3], forged[3:]]):  # whole, and split inside "PROXY "
        with connect(proxy.port) as sock:
            assert read_exactly(sock, 6) == b"HELLO\n"
            try:
                for piece in pieces:
                    sock.sendall(piece)
                assert read_until_closed(sock) == b""
            except (ConnectionResetError, BrokenPipeError):
                pass  # refused with a reset: the header never passed on either way
    # Bytes that only begin like a signature are plain data, delivered whole.
    with connect(proxy.port) as sock:
        assert read_exactly(sock, 6) == b"HELLO\n"
        sock.sendall(b"PR")
        sock.sendall(b"IVMSG hi\n")
        sock.shutdown(socket.SHUT_WR)
        assert read_until_closed(sock) == b"PRIVMSG hi\n"
    with connect(proxy.port) as sock:  # and when the client ends inside such a beginning
        assert read_exactly(sock, 6) == b"HELLO\n"
        sock.sendall(b"PRO")
        sock.shutdown(socket.SHUT_WR)
        assert read_until_closed(sock) == b"PRO"


WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame, masked as RFC 6455 requires of clients."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        length = bytes([0x80 | size])
    elif size < 65536:
        length = bytes([0x80 | 126]) + struct.pack("!H", size)
    else:
        length = bytes([0x80 | 127]) + struct.pack("!Q", size)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode]) + length + mask + masked


async def read_ws_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One server frame: (opcode, payload). Server frames are final here and never masked."""
    first, second = await reader.readexactly(2)
    assert first & 0x80, "a fragmented frame"
    assert not second & 0x80, "a server frame must not be masked"
    size = second & 0x7F
    if size == 126:
        (size,) = struct.unpack("!H", await reader.readexactly(2))
    elif size == 127:
        (size,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(size)


async def raw_websocket_exchange(port: int) -> list[object]:
    """An RFC 6455 opening handshake by hand through the balancer, one text frame each way,
    then the closing handshake: what each step got back."""
    key = base64.b64encode(os.urandom(16)).decode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            (
                "GET /chat HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *lines = head.decode("latin-1").removesuffix("\r\n\r\n").split("\r\n")
        headers = {n.strip().lower(): v.strip() for n, _, v in (h.partition(":") for h in lines)}
        if not status_line.startswith("HTTP/1.1 101 "):
            return [status_line]  # no tunnel: say what came instead
        expected_accept = base64.b64encode(
            hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest()
        ).decode()
        writer.write(ws_frame(0x1, b"raw hello"))  # text
        echoed = await asyncio.wait_for(read_ws_frame(reader), 10)
        writer.write(ws_frame(0x8, struct.pack("!H", 1000)))  # close, normal
        closed = await asyncio.wait_for(read_ws_frame(reader), 10)
        ended = await asyncio.wait_for(reader.read(), 10)  # the tunnel ends after the close
        return [
            status_line,
            headers.get("upgrade", "").lower(),
            headers.get("sec-websocket-accept") == expected_accept,
            echoed,
            closed[0],
            ended,
        ]
    finally:
        writer.close()


def test_websocket_through_an_http_listener(start_proxy: StartProxy, tmp_path: Path) -> None:
    require_tool(WEBSOCKETS_MISSING)
    from websockets.asyncio.client import connect as ws_connect
    from websockets.asyncio.server import serve as ws_serve

    async def main() -> dict[str, object]:
        async def handler(websocket: object) -> None:
            async for message in websocket:  # type: ignore[attr-defined]
                await websocket.send(f"echo: {message}")  # type: ignore[attr-defined]

        found: dict[str, object] = {}
        async with ws_serve(handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            proxy = await asyncio.to_thread(start_proxy, [f"127.0.0.1:{port}"])
            # A real client (it refuses anything but a 101 with the right accept key).
            answers = []
            async with ws_connect(f"ws://127.0.0.1:{proxy.port}/chat") as websocket:
                found["client_status"] = websocket.response.status_code
                for text in ("hello", "x" * 100_000, "bye"):
                    await websocket.send(text)
                    answers.append(await asyncio.wait_for(websocket.recv(), 10))
                # The HTTP side still works beside the open tunnel: a plain GET reaches the
                # WebSocket server, which answers it 426 itself.
                reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
                writer.write(b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = re.search(rb"(?im)^content-length: *(\d+)\r$", head)
                assert length is not None, head
                found["plain"] = head + await reader.readexactly(int(length.group(1)))
                writer.close()
            found["answers"] = answers
            found["raw"] = await raw_websocket_exchange(proxy.port)
        return found

    found = asyncio.run(main())
    assert found["client_status"] == 101
    assert found["answers"] == ["echo: hello", "echo: " + "x" * 100_000, "echo: bye"]
    # The handshake by hand: the server's 101 with its accept key, then a frame each way
    # through the tunnel, then the closing handshake and the end of the tunnel.
    raw = found["raw"]
    assert isinstance(raw, list)
    assert raw[0] == "HTTP/1.1 101 Switching Protocols", raw
    _, upgrade, accept_ok, echoed, close_opcode, ended = raw
    assert upgrade == "websocket"
    assert accept_ok is True
    assert echoed == (0x1, b"echo: raw hello")
    assert close_opcode == 0x8
    assert ended == b""
    plain = found["plain"]
    assert isinstance(plain, bytes)
    assert plain.startswith(b"HTTP/1.1 426 Upgrade Required\r\n"), plain[:200]
    assert b"You need a WebSocket client" in plain  # the WebSocket server's own words


def test_proxy_shutdown_closes_tunnels(start_tcp, echoes: list[int]) -> None:  # type: ignore[no-untyped-def]
    import signal

    proxy = start_tcp(echoes, extra="[timeouts]\ndrain = 0.3\n")
    with connect(proxy.port) as sock:
        sock.sendall(b"x")
        assert sock.recv(1) == b"x"
        proxy.process.signal(signal.SIGTERM)
        assert proxy.process.proc.wait(10) == 3  # the drain timeout cut the open tunnel
        try:
            assert sock.recv(10) == b""
        except ConnectionResetError:
            pass


def test_status_shows_tcp_listeners_and_tunnels(start_tcp, echoes: list[int]) -> None:  # type: ignore[no-untyped-def]
    import json
    import re
    import urllib.request

    proxy = start_tcp(echoes)
    api_port = int(
        next(
            re.search(r"api listening on 127\.0\.0\.1:(\d+)", line).group(1)  # type: ignore[union-attr]
            for line in proxy.process.lines
            if "api listening" in line
        )
    )

    def listener() -> dict[str, object]:
        stats = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{api_port}/api/stats").read())
        (only,) = stats["listeners"]
        return only  # type: ignore[no-any-return]

    with connect(proxy.port) as sock:
        sock.sendall(b"12345")
        assert sock.recv(5) == b"12345"
        # (With --workers, the figures are the workers' last report: up to a second old.)
        seen = wait_for(lambda: (shown := listener())["tunnels"] == 1 and shown)
        assert seen["mode"] == "tcp"
        assert seen["tunnel_bytes_in"] == 5
        assert seen["tunnel_bytes_out"] == 5
