"""The PROXY protocol (HAProxy's spec, versions 1 and 2), sans-I/O: encode and parse.

A PROXY header goes first on a connection and tells the receiver the real client and
destination addresses of a proxied connection. bunancer can send it to upstreams, and
accept it on listeners from trusted sources only (anyone else could forge an address).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_MAX = 107  # the spec's longest v1 line, CRLF included


class ProxyHeaderError(Exception):
    """A malformed PROXY header: the connection must be closed."""


@dataclass(frozen=True, slots=True)
class Addresses:
    source: str
    source_port: int
    destination: str
    destination_port: int


def encode_v1(addresses: Addresses) -> bytes:
    family = "TCP6" if ":" in addresses.source else "TCP4"
    return (
        f"PROXY {family} {addresses.source} {addresses.destination} "
        f"{addresses.source_port} {addresses.destination_port}\r\n"
    ).encode()


def encode_v2(addresses: Addresses) -> bytes:
    source = ipaddress.ip_address(addresses.source)
    destination = ipaddress.ip_address(addresses.destination)
    if source.version != destination.version:
        # Mixed families cannot be expressed: map both to IPv6.
        source = ipaddress.IPv6Address(f"::ffff:{source}") if source.version == 4 else source
        destination = (
            ipaddress.IPv6Address(f"::ffff:{destination}")
            if destination.version == 4
            else destination
        )
    family = 0x11 if source.version == 4 else 0x21  # AF_INET or AF_INET6, STREAM
    body = (
        source.packed
        + destination.packed
        + struct.pack("!HH", addresses.source_port, addresses.destination_port)
    )
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


def looks_like_header(data: bytes) -> bool:
    """Does `data` start (or could it still start) a PROXY header?"""
    return _prefix_of(data, V2_SIGNATURE) or _prefix_of(data, b"PROXY ")


def starts_with_header(data: bytes) -> bool | None:
    """Does `data` begin with a PROXY header's signature? None: too short to tell yet."""
    if data.startswith((V2_SIGNATURE, b"PROXY ")):
        return True
    return None if looks_like_header(data) else False


def _prefix_of(data: bytes, marker: bytes) -> bool:
    """`data` begins with `marker`, or is a beginning of it."""
    size = min(len(data), len(marker))
    return data[:size] == marker[:size]


def parse(data: bytes) -> tuple[Addresses | None, int]:
    """Parse a header at the start of `data`.

    Returns (addresses, length) when complete (addresses None for a LOCAL/UNKNOWN header),
    or (None, 0) when more bytes are needed. Raises ProxyHeaderError when malformed.
    """
    if data[:12] == V2_SIGNATURE:
        return _parse_v2(data)
    if data[:6] == b"PROXY ":
        return _parse_v1(data)
    if (len(data) < 12 and V2_SIGNATURE.startswith(data)) or (
        len(data) < 6 and b"PROXY ".startswith(data)
    ):
        return None, 0
    raise ProxyHeaderError("not a PROXY protocol header")


def _parse_v1(data: bytes) -> tuple[Addresses | None, int]:
    end = data.find(b"\r\n", 0, _V1_MAX)
    if end == -1:
        if len(data) >= _V1_MAX:
            raise ProxyHeaderError("PROXY v1 line too long")
        return None, 0
    parts = data[:end].decode("ascii", "replace").split(" ")
    if len(parts) == 2 and parts[1] == "UNKNOWN":
        return None, end + 2
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("malformed PROXY v1 line")
    _, family, source, destination, source_port, destination_port = parts
    try:
        for address in (source, destination):
            version = ipaddress.ip_address(address).version
            if version != (4 if family == "TCP4" else 6):
                raise ValueError(address)
        ports = int(source_port), int(destination_port)
    except ValueError:
        raise ProxyHeaderError("malformed address or port in PROXY v1 line") from None
    if not all(0 <= port <= 65535 for port in ports) or not (
        source_port.isdigit() and destination_port.isdigit()
    ):
        raise ProxyHeaderError("bad port in PROXY v1 line")
    return Addresses(source, ports[0], destination, ports[1]), end + 2


def _parse_v2(data: bytes) -> tuple[Addresses | None, int]:
    if len(data) < 16:
        return None, 0
    version_command, family = data[12], data[13]
    (length,) = struct.unpack("!H", data[14:16])
    total = 16 + length
    if version_command >> 4 != 2:
        raise ProxyHeaderError("unsupported PROXY protocol version")
    if len(data) < total:
        return None, 0
    command = version_command & 0x0F
    if command == 0:  # LOCAL: a health check from the proxy itself
        return None, total
    if command != 1:
        raise ProxyHeaderError("unknown PROXY v2 command")
    body = data[16:total]
    if family == 0x11 and length >= 12:
        source = str(ipaddress.IPv4Address(body[0:4]))
        destination = str(ipaddress.IPv4Address(body[4:8]))
        ports = struct.unpack("!HH", body[8:12])
    elif family == 0x21 and length >= 36:
        source = str(ipaddress.IPv6Address(body[0:16]))
        destination = str(ipaddress.IPv6Address(body[16:32]))
        ports = struct.unpack("!HH", body[32:36])
    elif family == 0x00:
        return None, total  # UNSPEC
    else:
        raise ProxyHeaderError("unsupported or short PROXY v2 address block")
    return Addresses(source, ports[0], destination, ports[1]), total
