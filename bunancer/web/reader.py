"""Reading requests off one web connection: httptools' callbacks turn bytes into `Pending`
requests, with the framing and size checks, and `App.check_head` on the head of a request
with a body before any of the body is read. The connection (server.py) owns the socket,
the timers and the queue; it hears from the reader through `ReaderOwner`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs

import httptools

from .app import App, HTTPError, Request, Response
from .wire import check_framing, join_headers, split_target

log = logging.getLogger("bunancer.web")

MAX_HEAD = 64 * 1024  # request line and headers; beyond it: 431

Rejection = tuple[int, str, dict[str, Any]]  # status, message, extra fields of the error


@dataclass(slots=True)
class Pending:
    """A parsed request waiting its turn, or (request None) an error to answer, then close."""

    request: Request | None
    response: Response | None
    keep_alive: bool
    http11: bool
    head: bool
    size: int = 0  # body bytes held, for the queue's limit
    refusal: HTTPError | None = None  # refused from its head: answered without its body


class ReaderOwner(Protocol):
    def request_begun(self) -> None:
        """A request's first byte arrived (its head and body must follow in time)."""

    def request_read(self, pending: Pending) -> None:
        """A whole request arrived."""

    def request_refused(self, pending: Pending) -> None:
        """A request refused from its head: answer it; read nothing more."""

    def may_continue(self) -> None:
        """The client waits for `100 Continue` before sending the body."""


class _Refused(Exception):
    """Raised from a parser callback: the request went to `request_refused`; stop parsing."""


class RequestReader:
    __slots__ = (
        "app",
        "body",
        "body_size",
        "client_ip",
        "head_bytes",
        "http11",
        "in_head",
        "in_request",
        "max_body",
        "owner",
        "parser",
        "raw_headers",
        "request",
        "tls",
        "url",
    )

    def __init__(self, app: App, owner: ReaderOwner, max_body: int) -> None:
        self.app = app
        self.owner = owner
        self.max_body = max_body
        self.client_ip = ""
        self.tls = False  # the connection is TLS (the listener serves HTTPS)
        self.parser = httptools.HttpRequestParser(self)
        self.in_request = False  # between a request's first byte and its last
        self.in_head = False
        self.head_bytes = 0
        self.url = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.request: Request | None = None  # from its head on
        self.http11 = True
        self.body: list[bytes] = []
        self.body_size = 0

    def feed(self, data: bytes | memoryview) -> Rejection | None:
        """Parse what one read carried; the error to answer (then close) if it is bad."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # llhttp stops after a request asking for Upgrade (already queued). We never
            # switch protocols, so what follows is the next request.
            rest = data[upgrade.args[0] :]
            return self.feed(rest) if rest else None
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, _Refused):
                return None  # answered as refused; reading has stopped
            if isinstance(cause, HTTPError):
                return cause.status, cause.message, cause.extra
            log.error("error while parsing a request", exc_info=cause)
            return 500, "internal error", {}
        except httptools.HttpParserError as error:
            return 400, "malformed request", {"detail": str(error)}
        if self.in_head:
            # Bounds what httptools buffers for a head that keeps coming.
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD:
                return 431, "request head too large", {"limit": MAX_HEAD}
        return None

    def stop(self) -> None:
        """No request is being read any more (the connection reads no further)."""
        self.in_request = self.in_head = False

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_request = True
        self.in_head = True
        self.head_bytes = 0
        self.url = b""
        self.raw_headers = []
        self.request = None
        self.body = []
        self.body_size = 0
        self.owner.request_begun()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        self.http11 = parser.get_http_version() == "1.1"
        headers = join_headers(self.raw_headers)
        self.raw_headers = []
        length = headers.get("content-length")
        check_framing(headers, self.http11, parser.should_upgrade())
        if length is not None and int(length) > self.max_body:
            raise HTTPError(413, "request body too large", limit=self.max_body)
        path, query = split_target(self.url)
        self.request = request = Request(
            parser.get_method().decode("ascii"),
            path,
            query=parse_qs(query, keep_blank_values=True) if query else {},
            headers=headers,
            client_ip=self.client_ip,
            http_version="1.1" if self.http11 else "1.0",
            tls=self.tls,
        )
        if (length not in (None, "0") or "transfer-encoding" in headers) and (
            refusal := self.app.check_head(request)
        ) is not None:
            # Refused without its body (no token, say): the body is never read or held.
            self.stop()
            self.owner.request_refused(
                Pending(request, None, False, self.http11, False, 0, refusal)
            )
            raise _Refused
        expect = headers.get("expect")
        if expect is not None and expect.lower() == "100-continue" and self.http11:
            self.owner.may_continue()

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.max_body:  # chunked bodies have no length up front
            raise HTTPError(413, "request body too large", limit=self.max_body)
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.in_request = False
        request = self.request
        assert request is not None  # (set when its head completed)
        self.request = None
        request.body = b"".join(self.body)
        self.body = []
        keep_alive = self.parser.should_keep_alive()
        head = request.method == "HEAD"
        pending = Pending(request, None, keep_alive, self.http11, head, len(request.body))
        self.owner.request_read(pending)
