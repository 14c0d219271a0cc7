"""The server name (SNI) in a TLS ClientHello, read from the first bytes of a connection
without terminating TLS: what a TCP listener routes by in passthrough (HAProxy's
`req.ssl_sni`). Sans-I/O: bytes in, an answer out.

`server_name(data)` says whether `data` holds enough to decide and, if so, the name: the
ClientHello's host_name in lower case, or None when the client sent none or the bytes are
not a TLS handshake at all (both go to the listener's default pool).
"""

from __future__ import annotations

MAX_HELLO = 16 * 1024  # a ClientHello in one TLS record: larger is not one we route by
_HANDSHAKE = 22  # TLS record type
_CLIENT_HELLO = 1  # handshake message type
_SERVER_NAME = 0  # extension type
_HOST_NAME = 0  # server name type


def server_name(data: bytes) -> tuple[bool, str | None]:
    """(decided, name): decided False means more bytes are needed."""
    if len(data) < 5:
        return (False, None) if _could_be_tls(data) else (True, None)
    if data[0] != _HANDSHAKE or data[1] != 3:
        return True, None
    length = int.from_bytes(data[3:5], "big")
    if length > MAX_HELLO:
        return True, None
    if len(data) < 5 + length:
        return False, None
    return True, _name_in(data[5 : 5 + length])


def _could_be_tls(data: bytes) -> bool:
    return (not data or data[0] == _HANDSHAKE) and (len(data) < 2 or data[1] == 3)


def _name_in(hello: bytes) -> str | None:
    """The host_name of a ClientHello handshake message, or None."""
    try:
        if hello[0] != _CLIENT_HELLO:
            return None
        at = 4 + 2 + 32  # message type and length; client version; random
        at += 1 + hello[at]  # session id
        at += 2 + int.from_bytes(hello[at : at + 2], "big")  # cipher suites
        at += 1 + hello[at]  # compression methods
        end = at + 2 + int.from_bytes(hello[at : at + 2], "big")
        at += 2
        while at + 4 <= end:
            kind = int.from_bytes(hello[at : at + 2], "big")
            size = int.from_bytes(hello[at + 2 : at + 4], "big")
            at += 4
            if kind == _SERVER_NAME:
                return _host_name(hello[at : at + size])
            at += size
    except IndexError:
        return None
    return None


def _host_name(extension: bytes) -> str | None:
    at, end = 2, 2 + int.from_bytes(extension[:2], "big")
    while at + 3 <= end:
        kind, size = extension[at], int.from_bytes(extension[at + 1 : at + 3], "big")
        at += 3
        if kind == _HOST_NAME:
            try:
                return extension[at : at + size].decode("ascii").lower()
            except UnicodeDecodeError:
                return None
        at += size
    return None
