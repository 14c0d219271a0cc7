"""The control channel of one stub: a unix socket speaking newline-delimited JSON.

Each stub listens on its own ``<state-dir>/stubs/<id>.sock`` (mode 0600, in a 0700
directory, so only the owner can connect). A request is one JSON object on one line,
answered by one line:

- ``{"op": "get"}`` -> ``{"ok": true, "id", "port", "pid", "behaviour", "stats", "registration"}``
- ``{"op": "set", "behaviour": {"status": 503, ...}}`` -> ``{"ok": true, "behaviour": {...}}``
- ``{"op": "stats"}`` -> ``{"ok": true, "stats": {...}}``

Errors are ``{"ok": false, "error": "..."}``. The server side runs on the stub's loop; the
client side is blocking (the SDK and CLI are short synchronous calls).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .state import MAX_SOCKET_PATH

MAX_LINE = 64 * 1024

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlError(Exception):
    """The stub did not answer on its control socket, or refused the request."""


def check_socket_path(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ControlError(
            f"control socket path {path} is longer than {MAX_SOCKET_PATH} bytes; "
            "use a shorter --state-dir"
        )


# -- server side (inside the stub) ---------------------------------------------------------------


async def serve_control(path: Path, handle: Handler) -> asyncio.AbstractServer:
    """Listen on `path` (replacing a stale socket file) and answer requests with `handle`."""
    check_socket_path(path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(_answer(line, handle))
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    # Created owner-only from the start: no window in which another user could connect.
    old_umask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(connection, path, limit=MAX_LINE)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return server


def _answer(line: bytes, handle: Handler) -> bytes:
    try:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise ValueError("a request is a JSON object")
        answer = handle(request)
    except ValueError as error:  # bad JSON, bad behaviour values (BehaviourError)
        answer = {"ok": False, "error": str(error)}
    return json.dumps(answer).encode() + b"\n"


# -- client side (SDK, CLI, tests) ---------------------------------------------------------------


def call(path: Path, request: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
    """Send one request and return the answer; ControlError if the stub does not answer."""
    check_socket_path(path)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(os.fspath(path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            buffer = b""
            while not buffer.endswith(b"\n"):
                data = sock.recv(65536)
                if not data:
                    break
                buffer += data
                if len(buffer) > MAX_LINE:
                    raise ControlError("control answer too long")
    except FileNotFoundError:
        raise ControlError(f"no control socket at {path}") from None
    except OSError as error:
        raise ControlError(f"control socket {path}: {error.strerror or error}") from None
    try:
        answer = json.loads(buffer)
    except ValueError:
        raise ControlError(f"control socket {path}: no answer") from None
    if not isinstance(answer, dict):
        raise ControlError(f"control socket {path}: unexpected answer")
    if not answer.get("ok"):
        raise ControlError(str(answer.get("error", "request refused")))
    return answer
