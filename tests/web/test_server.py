"""The web server over real sockets: each test runs `serve()` on its own uvloop loop and talks
to it with raw HTTP/1.1 over `asyncio.open_connection`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
import pytest
import uvloop
from pydantic import BaseModel

from bunancer.web.app import (
    App,
    CallNext,
    HTTPError,
    Request,
    Response,
    StreamResponse,
    error_response,
    html_response,
    json_response,
    text_response,
)
from bunancer.web.server import serve

FRAMING = ("content-length", "transfer-encoding", "connection", "content-type")
DEADLINE = 10.0  # no scenario should come near this; it only turns a hang into a failure


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        try:
            async with asyncio.timeout(DEADLINE):
                await scenario()
        finally:
            await Client.close_all()

    uvloop.run(main())


async def eventually(condition: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll `condition` on the loop until it is truthy, or fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if result:
            return result
        if loop.time() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def serving(app: App, **settings: Any) -> AsyncIterator[int]:
    server = await serve(app, "127.0.0.1", 0, **settings)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        app.close_connections()
        await server.wait_closed()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json"
        return orjson.loads(self.body)


class Client:
    """A raw HTTP/1.1 client: write any bytes, read responses one at a time."""

    opened: ClassVar[list[Client]] = []  # closed at the end of each scenario

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        Client.opened.append(self)

    @classmethod
    async def close_all(cls) -> None:
        for client in cls.opened:
            client.close()
            with contextlib.suppress(OSError):
                await client.writer.wait_closed()
        cls.opened.clear()

    @classmethod
    async def connect(cls, port: int, rcvbuf: int = 0) -> Client:
        if not rcvbuf:
            return cls(*await asyncio.open_connection("127.0.0.1", port))
        sock = socket.socket()
        # A fixed receive buffer (no autotuning) bounds what the kernel takes off the server.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return cls(*await asyncio.open_connection(sock=sock))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def request(
        self, method: str, path: str, body: bytes | None = None, headers: str = ""
    ) -> Reply:
        length = f"Content-Length: {len(body)}\r\n" if body is not None else ""
        head = f"{method} {path} HTTP/1.1\r\nHost: test\r\n{length}{headers}\r\n"
        await self.send(head.encode() + (body or b""))
        return await self.reply(head_request=method == "HEAD")

    async def head(self) -> tuple[int, dict[str, str]]:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.1"
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            name, value = name.lower(), value.strip()
            if name in headers:
                assert name not in FRAMING, f"repeated header {name}"
                value = f"{headers[name]}, {value}"
            headers[name] = value
        return int(status), headers

    async def reply(self, head_request: bool = False) -> Reply:
        status, headers = await self.head()
        if head_request or status in (204, 304):
            return Reply(status, headers, b"")
        if headers.get("transfer-encoding") == "chunked":
            chunks = []
            while chunk := await self.chunk():
                chunks.append(chunk)
            return Reply(status, headers, b"".join(chunks))
        if "content-length" in headers:
            return Reply(
                status, headers, await self.reader.readexactly(int(headers["content-length"]))
            )
        return Reply(status, headers, await self.reader.read())  # close-delimited

    async def chunk(self) -> bytes:
        """One chunk of a chunked body; b"" for the last one (its trailer is consumed)."""
        size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
        data = await self.reader.readexactly(size)
        assert await self.reader.readexactly(2) == b"\r\n"
        return data

    async def closed_by_server(self) -> bool:
        """Whether the server closes the connection (EOF with nothing more to read)."""
        return await asyncio.wait_for(self.reader.read(1), 5.0) == b""

    def close(self) -> None:
        self.writer.close()


class Item(BaseModel):
    name: str
    port: int


class Pool(BaseModel):
    name: str
    servers: list[Item] = []


@dataclass
class Probe:
    """What handlers saw, for tests to assert on."""

    stream: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    stream_ended: asyncio.Event = field(default_factory=asyncio.Event)
    produced: int = 0
    seen_routes: list[str | None] = field(default_factory=list)


def make_app(probe: Probe) -> App:
    app = App()
    router = app.router

    @router.post("/items", body=Item)
    async def create_item(request: Request) -> Response:
        return json_response({"created": request.data}, status=201)

    @router.get("/items/{id:int}")
    async def get_item(request: Request) -> Response:
        return json_response({"id": request.params["id"], "name": "x"})

    @router.post("/pools", body=Pool)
    async def create_pool(request: Request) -> Response:
        return json_response(request.data, status=201)

    @router.post("/echo")
    async def echo(request: Request) -> Response:
        return json_response({"echo": request.json()})

    @router.get("/info")
    async def info(request: Request) -> Response:
        return json_response(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "cookies": request.cookies,
                "client_ip": request.client_ip,
                "user_agent": request.headers.get("user-agent"),
                "version": request.http_version,
            }
        )

    @router.get("/delay/{ms:int}")
    async def delay(request: Request) -> Response:
        ms = request.params["ms"]
        assert isinstance(ms, int)
        await asyncio.sleep(ms / 1000)
        return text_response(f"slept {ms}")

    @router.get("/page")
    async def page(request: Request) -> Response:
        return html_response("<p>hi</p>", headers=[("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])

    @router.get("/boom")
    async def boom(request: Request) -> Response:
        raise RuntimeError("handler bug")

    @router.get("/teapot")
    async def teapot(request: Request) -> Response:
        raise HTTPError(418, "short and stout", spout=True)

    @router.get("/bad-header")
    async def bad_header(request: Request) -> Response:
        return Response(200, "x", headers={"X-Evil": "a\r\nInjected: yes"})

    @router.get("/empty")
    async def empty(request: Request) -> Response:
        return Response(204)

    @router.get("/private")
    async def private(request: Request) -> Response:
        return text_response("secret")

    @router.get("/stream")
    async def stream(request: Request) -> StreamResponse:
        async def events() -> AsyncIterator[bytes]:
            try:
                while (item := await probe.stream.get()) is not None:
                    yield item
            finally:
                probe.stream_ended.set()

        return StreamResponse(events(), content_type="text/event-stream")

    @router.get("/firehose/{chunks:int}")
    async def firehose(request: Request) -> StreamResponse:
        count = request.params["chunks"]
        assert isinstance(count, int)

        async def chunks() -> AsyncIterator[bytes]:
            block = b"x" * 65536
            for _ in range(count):
                probe.produced += 1
                yield block

        return StreamResponse(chunks(), content_type="application/octet-stream")

    @app.middleware
    async def record(request: Request, call_next: CallNext) -> Response | StreamResponse:
        probe.seen_routes.append(request.route)
        response = await call_next(request)
        response.headers.append(("X-Seen", "1"))
        return response

    @app.middleware
    async def auth(request: Request, call_next: CallNext) -> Response | StreamResponse:
        if request.path.startswith("/private") and (
            request.headers.get("authorization") != "Bearer letmein"
        ):
            return error_response(401, "token required")
        return await call_next(request)

    return app


Scenario = Callable[[int, Probe], Awaitable[None]]


def scenario(body: Scenario, **settings: Any) -> None:
    """Run `body(port, probe)` against a fresh app served on a fresh uvloop loop."""

    async def main() -> None:
        probe = Probe()
        async with serving(make_app(probe), **settings) as port:
            await body(port, probe)

    run(main)


# -- routing, JSON and validation --------------------------------------------------------------


def test_json_round_trip() -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        reply = await client.request("POST", "/items", b'{"name": "web", "port": 8080}')
        assert reply.status == 201
        assert reply.json() == {"created": {"name": "web", "port": 8080}}
        reply = await client.request("GET", "/items/7")
        assert reply.status == 200
        assert reply.json() == {"id": 7, "name": "x"}
        reply = await client.request("POST", "/echo", orjson.dumps({"a": [1, 2.5, None]}))
        assert reply.json() == {"echo": {"a": [1, 2.5, None]}}
        client.close()

    scenario(body)


def test_not_found_and_method_not_allowed_are_json() -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        reply = await client.request("GET", "/nope")
        assert reply.status == 404
        assert reply.json() == {"error": "not found"}
        reply = await client.request("GET", "/items/not-a-number")
        assert reply.status == 404
        reply = await client.request("DELETE", "/items/1")
        assert reply.status == 405
        assert reply.headers["allow"] == "GET, HEAD"
        assert reply.json() == {"error": "method not allowed", "allowed": ["GET", "HEAD"]}
        # Middlewares ran for these too; a matched route is known before the handler runs.
        assert reply.headers["x-seen"] == "1"
        assert (await client.request("GET", "/items/1")).status == 200
        assert probe.seen_routes == [None, None, None, "/items/{id:int}"]
        client.close()

    scenario(body)


def test_bad_json_is_400() -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        for path in ("/items", "/echo"):  # a declared body model, and request.json()
            reply = await client.request("POST", path, b'{"name": "web", ')
            assert reply.status == 400
            data = reply.json()
            assert data["error"] == "invalid JSON"
            assert data["detail"]
        reply = await client.request("POST", "/items", b"")
        assert reply.status == 400
        assert reply.json()["error"] == "invalid JSON"
        client.close()

    scenario(body)


def test_validation_errors_are_422_naming_the_field() -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        reply = await client.request("POST", "/items", b'{"name": "web", "port": "http"}')
        assert reply.status == 422
        data = reply.json()
        assert data["error"] == "validation failed"
        assert data["field"] == "port"
        assert data["detail"].startswith("Input should be a valid integer")
        assert "errors" not in data

        reply = await client.request("POST", "/items", b'{"name": "web"}')
        assert reply.status == 422
        assert reply.json() == {
            "error": "validation failed",
            "field": "port",
            "detail": "Field required",
        }

        reply = await client.request("POST", "/items", b"{}")
        data = reply.json()
        assert reply.status == 422
        assert data["field"] == "name"
        assert data["errors"] == [
            {"field": "name", "detail": "Field required"},
            {"field": "port", "detail": "Field required"},
        ]

        reply = await client.request(
            "POST", "/pools", b'{"name": "p", "servers": [{"name": "a", "port": 1}, {"name": "b"}]}'
        )
        assert reply.status == 422
        assert reply.json()["field"] == "servers[1].port"

        reply = await client.request("POST", "/items", b"[1, 2]")
        assert reply.status == 422
        assert reply.json()["field"] is None  # the body as a whole is wrong
        client.close()

    scenario(body)


def test_request_parts_reach_the_handler() -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        reply = await client.request(
            "GET",
            "/info?a=1&a=2&b=&c=%C3%A9",
            headers='User-Agent: probe/1\r\nCookie: session=abc; theme="dark"\r\nCookie: x=y\r\n',
        )
        assert reply.json() == {
            "method": "GET",
            "path": "/info",
            "query": {"a": ["1", "2"], "b": [""], "c": ["é"]},
            "cookies": {"session": "abc", "theme": "dark", "x": "y"},
            "client_ip": "127.0.0.1",
            "user_agent": "probe/1",
            "version": "1.1",
        }
        reply = await client.request("GET", "/page")
        assert reply.headers["content-type"] == "text/html; charset=utf-8"
        assert reply.body == b"<p>hi</p>"
        client.close()

    scenario(body)


def test_repeated_response_headers_are_kept() -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        await client.send(b"GET /page HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert head.count(b"\r\nSet-Cookie: ") == 2
        client.close()

    scenario(body)


# -- connection handling -----------------------------------------------------------------------


def test_body_over_the_limit_is_413_and_closes() -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        big = b'{"name": "' + b"x" * 5000 + b'", "port": 1}'
        reply = await client.request("POST", "/items", big)
        assert reply.status == 413
        assert reply.json() == {"error": "request body too large", "limit": 1024}
        assert reply.headers["connection"] == "close"
        assert await client.closed_by_server()

        # A chunked body has no length up front: it is cut when it passes the limit.
        client = await Client.connect(port)
        chunk = b"x" * 600
        await client.send(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"258\r\n" + chunk + b"\r\n") * 2
        )
        reply = await client.reply()
        assert reply.status == 413
        assert await client.closed_by_server()

        # A client that keeps sending the refused body (no Expect: 100-continue) still
        # reads the 413: the server stops its side and discards input before closing,
        # instead of closing on unread data (which resets the connection).
        client = await Client.connect(port)
        await client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4194304\r\n\r\n")
        for _ in range(64):
            await client.send(b"x" * 65536)
        reply = await client.reply()
        assert reply.status == 413
        assert await client.closed_by_server()

        # Under the limit is fine.
        client = await Client.connect(port)
        reply = await client.request("POST", "/items", b'{"name": "a", "port": 1}')
        assert reply.status == 201
        client.close()

    scenario(body, max_body=1024)


def test_keep_alive_serves_two_requests_on_one_connection() -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        first = await client.request("GET", "/items/1")
        second = await client.request("GET", "/items/2")
        assert first.json()["id"] == 1
        assert second.json()["id"] == 2
        assert "connection" not in first.headers  # HTTP/1.1 default: persistent
        client.close()

    scenario(body)


def test_pipelined_requests_are_answered_in_order() -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        # The first takes longest; answers must still come in request order.
        paths = ["/delay/80", "/delay/0", "/items/3", "/delay/20", "/nope"]
        await client.send(
            b"".join(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % p.encode() for p in paths)
        )
        replies = [await client.reply() for _ in paths]
        assert [r.body for r in replies[:2]] == [b"slept 80", b"slept 0"]
        assert replies[2].json()["id"] == 3
        assert replies[3].body == b"slept 20"
        assert replies[4].status == 404
        client.close()

    scenario(body)


def test_head_has_headers_but_no_body() -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        get = await client.request("GET", "/items/5")
        head = await client.request("HEAD", "/items/5")
        assert head.status == 200
        assert head.headers["content-length"] == str(len(get.body))
        assert head.headers["content-type"] == "application/json"
        # Had a body been sent, it would be read here as the next response's status line.
        after = await client.request("GET", "/items/6")
        assert after.json()["id"] == 6
        client.close()

    scenario(body)


def test_connection_close_and_http10() -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        reply = await client.request("GET", "/items/1", headers="Connection: close\r\n")
        assert reply.status == 200
        assert reply.headers["connection"] == "close"
        assert await client.closed_by_server()

        client = await Client.connect(port)
        await client.send(b"GET /info HTTP/1.0\r\n\r\n")
        reply = await client.reply()
        assert reply.json()["version"] == "1.0"
        assert reply.headers["connection"] == "close"
        assert await client.closed_by_server()

        client = await Client.connect(port)
        await client.send(b"GET /items/1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        reply = await client.reply()
        assert reply.headers["connection"] == "keep-alive"
        await client.send(b"GET /items/2 HTTP/1.0\r\n\r\n")
        assert (await client.reply()).json()["id"] == 2
        assert await client.closed_by_server()

    scenario(body)


def test_malformed_request_is_400_and_closes() -> None:
    async def body(port: int, probe: Probe) -> None:
        for garbage in (
            b"NOT HTTP AT ALL\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n",
        ):
            client = await Client.connect(port)
            await client.send(garbage)
            reply = await client.reply()
            assert reply.status == 400, garbage
            assert reply.json()["error"] in ("malformed request", "unsupported request target")
            assert await client.closed_by_server()

        # A valid request ahead of the garbage is still answered first.
        client = await Client.connect(port)
        await client.send(b"GET /items/1 HTTP/1.1\r\nHost: t\r\n\r\nGARBAGE\r\n\r\n")
        assert (await client.reply()).json()["id"] == 1
        assert (await client.reply()).status == 400
        assert await client.closed_by_server()

    scenario(body)


@pytest.mark.parametrize(
    "framing",
    [
        b"Connection: Upgrade\r\nUpgrade: foo\r\nContent-Length: %d\r\n",
        b"Connection: Upgrade\r\nUpgrade: foo\r\nTransfer-Encoding: chunked\r\n",
    ],
)
def test_a_body_behind_an_upgrade_is_never_read_as_a_second_request(framing: bytes) -> None:
    """llhttp ends an Upgrade request at its head: its body must not become a request."""

    async def body(port: int, probe: Probe) -> None:
        smuggled = b"GET /items/7 HTTP/1.1\r\nHost: t\r\n\r\n"
        payload = (
            smuggled
            if b"%d" in framing
            else b"%x\r\n%s\r\n0\r\n\r\n"
            % (
                len(smuggled),
                smuggled,
            )
        )
        head = b"POST /items HTTP/1.1\r\nHost: t\r\n" + (
            framing % len(payload) if b"%d" in framing else framing
        )
        client = await Client.connect(port)
        await client.send(head + b"\r\n" + payload)
        reply = await client.reply()
        assert reply.status == 400, reply.body
        assert await client.closed_by_server()  # no second answer, for /items/7

    scenario(body)


def test_transfer_encoding_on_http10_is_400() -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        await client.send(
            b"POST /items HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        )
        assert (await client.reply()).status == 400
        assert await client.closed_by_server()

    scenario(body)


def test_oversized_head_is_431_and_closes() -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        await client.send(b"GET /items/1 HTTP/1.1\r\nHost: t\r\n")
        for _ in range(80):
            await client.send(b"X-Filler: " + b"f" * 1024 + b"\r\n")
        reply = await client.reply()
        assert reply.status == 431
        assert await client.closed_by_server()

    scenario(body)


def test_header_timeout_closes_slow_clients() -> None:
    async def body(port: int, probe: Probe) -> None:
        slow = await Client.connect(port)
        await slow.send(b"GET /items/1 HTTP/1.1\r\nHost: t\r\n")  # never finishes its head
        silent = await Client.connect(port)  # never says anything
        reply = await slow.reply()
        assert reply.status == 408
        assert reply.json() == {"error": "request timeout"}
        assert await slow.closed_by_server()
        assert await silent.closed_by_server()

    scenario(body, header_timeout=0.2)


def test_keepalive_timeout_closes_idle_connections() -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        assert (await client.request("GET", "/items/1")).status == 200
        assert await client.closed_by_server()

    scenario(body, keepalive_timeout=0.2)


def test_expect_100_continue() -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        payload = b'{"name": "a", "port": 2}'
        await client.send(
            b"POST /items HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(payload)
        )
        status, _ = await client.head()
        assert status == 100
        await client.send(payload)
        assert (await client.reply()).status == 201
        client.close()

    scenario(body)


# -- middlewares and errors --------------------------------------------------------------------


def test_middleware_rejects_with_401() -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        reply = await client.request("GET", "/private")
        assert reply.status == 401
        assert reply.json() == {"error": "token required"}
        assert reply.headers["x-seen"] == "1"  # the outer middleware saw the rejection
        reply = await client.request("GET", "/private", headers="Authorization: Bearer letmein\r\n")
        assert reply.status == 200
        assert reply.body == b"secret"
        client.close()

    scenario(body)


def test_handler_error_is_500_and_the_server_keeps_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        reply = await client.request("GET", "/boom")
        assert reply.status == 500
        assert reply.json() == {"error": "internal error"}
        # Same connection, then a new one: both still served.
        assert (await client.request("GET", "/items/1")).status == 200
        other = await Client.connect(port)
        assert (await other.request("GET", "/items/2")).status == 200
        reply = await client.request("GET", "/teapot")
        assert reply.status == 418
        assert reply.json() == {"error": "short and stout", "spout": True}
        client.close()
        other.close()

    with caplog.at_level(logging.ERROR, logger="bunancer.web"):
        scenario(body)
    errors = [r for r in caplog.records if r.name == "bunancer.web"]
    assert len(errors) == 1
    assert "GET /boom" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert "handler bug" in str(errors[0].exc_info[1])


def test_a_header_that_would_split_the_head_is_500(caplog: pytest.LogCaptureFixture) -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        await client.send(b"GET /bad-header HTTP/1.1\r\nHost: t\r\n\r\n")
        raw = await asyncio.wait_for(client.reader.read(), 5.0)
        assert raw.startswith(b"HTTP/1.1 500 ")
        assert b"Injected" not in raw

    with caplog.at_level(logging.ERROR, logger="bunancer.web"):
        scenario(body)
    assert any("invalid response" in r.getMessage() for r in caplog.records)


def test_204_has_no_body_and_no_length() -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        reply = await client.request("GET", "/empty")
        assert reply.status == 204
        assert "content-length" not in reply.headers
        assert (await client.request("GET", "/items/9")).json()["id"] == 9
        client.close()

    scenario(body)


# -- streaming ---------------------------------------------------------------------------------


def test_stream_response_is_read_chunk_by_chunk() -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        await client.send(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers = await client.head()  # the head comes before any event
        assert status == 200
        assert headers["transfer-encoding"] == "chunked"
        assert headers["content-type"] == "text/event-stream"
        assert "content-length" not in headers
        for event in (b"data: one\n\n", b"data: two\n\n"):
            await probe.stream.put(event)
            assert await client.chunk() == event
        await probe.stream.put(b"")  # skipped: an empty chunk would end the body
        await probe.stream.put(b"data: three\n\n")
        assert await client.chunk() == b"data: three\n\n"
        await probe.stream.put(None)  # the generator returns
        assert await client.chunk() == b""
        assert probe.stream_ended.is_set()
        # The connection is still good for the next request.
        assert (await client.request("GET", "/items/1")).status == 200
        client.close()

    scenario(body)


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_disconnecting_mid_stream_ends_the_iterator(how: str) -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        await client.send(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        await client.head()
        await probe.stream.put(b"data: one\n\n")
        assert await client.chunk() == b"data: one\n\n"
        assert not probe.stream_ended.is_set()
        # The generator is waiting for its next event when the client goes: with a FIN
        # (the server sees EOF) or a RST (the server sees the connection lost).
        if how == "reset":
            sock = client.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        await asyncio.wait_for(probe.stream_ended.wait(), 5.0)
        # The server is fine afterwards.
        other = await Client.connect(port)
        assert (await other.request("GET", "/items/1")).status == 200
        other.close()

    scenario(body)


def test_stream_respects_backpressure() -> None:
    total = 1024  # 64 MiB if nothing held the producer back

    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port, rcvbuf=64 * 1024)
        await client.send(b"GET /firehose/%d HTTP/1.1\r\nHost: t\r\n\r\n" % total)
        # Read nothing: production must stall once the socket buffers and our write
        # buffer are full (a few MiB), far below the total.
        loop = asyncio.get_running_loop()
        last, stable_since = -1, loop.time()

        def stalled() -> bool:
            nonlocal last, stable_since
            if probe.produced != last:
                last, stable_since = probe.produced, loop.time()
            return probe.produced > 0 and loop.time() - stable_since > 0.3

        await eventually(stalled)
        assert probe.produced < 160, probe.produced
        # Reading lets it run to the end.
        reply = await client.reply()
        assert len(reply.body) == total * 65536
        assert probe.produced == total
        client.close()

    scenario(body)


def test_stream_to_http10_is_close_delimited() -> None:
    async def body(port: int, probe: Probe) -> None:
        client = await Client.connect(port)
        await client.send(b"GET /firehose/3 HTTP/1.0\r\n\r\n")
        reply = await client.reply()
        assert "transfer-encoding" not in reply.headers
        assert reply.headers["connection"] == "close"
        assert reply.body == b"x" * 3 * 65536

    scenario(body)


def test_close_connections_ends_streams_cleanly() -> None:
    async def main() -> None:
        probe = Probe()
        app = make_app(probe)
        async with serving(app) as port:
            streaming = await Client.connect(port)
            await streaming.send(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
            await streaming.head()
            idle = await Client.connect(port)
            assert (await idle.request("GET", "/items/1")).status == 200
            app.close_connections()
            assert await streaming.chunk() == b""  # a clean last chunk
            assert await streaming.closed_by_server()
            assert await idle.closed_by_server()
            assert probe.stream_ended.is_set()

    run(main)
