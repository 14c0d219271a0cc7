"""Which Host a request to the API or dashboard may name, and which listen addresses are loopback.

DNS rebinding: a web page the operator visits at `evil.example` can make its name resolve to
127.0.0.1 and then read `http://evil.example:8081/api/pools` as same-origin. What gives it away
is the Host header, which names the attacker's domain. So a request is answered only when its
Host is an IP address (a page served from an IP cannot point it elsewhere), `localhost`, the
name the listener was configured with, or a name in `allowed_hosts`; anything else is a 421.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .app import HTTPError, Request

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether a listen host only takes connections from this machine."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_name(header: str) -> str:
    """The name in a Host header, lower-case, without the port ("[::1]:80" -> "::1")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    name, _, _ = header.partition(":")
    return name.rstrip(".")


class HostCheck:
    """The allow-list of Host names for one listener (IP addresses always pass)."""

    def __init__(self, listen_host: str, allowed: Iterable[str], setting: str) -> None:
        names = set(LOOPBACK_NAMES) | {name.lower().rstrip(".") for name in allowed}
        if not _is_ip(listen_host) and listen_host:
            names.add(listen_host.lower())
        self.names = frozenset(names)
        self.setting = setting  # where to allow another name, for the error message

    def allows(self, header: str | None) -> bool:
        if header is None:
            return True  # HTTP/1.0 without Host: no browser sends that
        name = host_name(header)
        return name in self.names or _is_ip(name)

    def refusal(self, request: Request) -> HTTPError | None:
        header = request.headers.get("host")
        if self.allows(header):
            return None
        return HTTPError(
            421,
            f"this listener does not answer for host {host_name(header or '')!r}",
            detail=f"add it to {self.setting} to allow it",
        )
