"""Which addresses a server registered through the API may have.

A registration makes the balancer connect to the address it names, and its check results
say whether something answered there: without a limit, whoever holds the token can use the
balancer to probe its own network, cloud metadata endpoints included (169.254.169.254).
`AddressPolicy` refuses addresses in `deny` (link-local by default) and, when `allow` is
not empty, any address outside it. A name is resolved once, at registration, and each of
its addresses checked; servers from the config file are the operator's and not checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

from ..config import DEFAULT_REGISTRATION_DENY
from .records import RegistryError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressRefused(RegistryError):
    status = 403

    def __init__(self, detail: str) -> None:
        super().__init__("address not allowed for registration", "host")
        self.detail = detail


class AddressPolicy:
    def __init__(
        self, allow: Iterable[str] = (), deny: Iterable[str] = DEFAULT_REGISTRATION_DENY
    ) -> None:
        self.allow: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in allow
        )
        self.deny: tuple[Network, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in deny)

    def refusal(self, address: str) -> str | None:
        """Why an IP address may not be registered, or None."""
        ip = ipaddress.ip_address(address.partition("%")[0])  # fe80::1%eth0: the scope is no escape
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
        for network in self.deny:
            if ip.version == network.version and ip in network:
                return f"{address} is in {network} (registration_deny)"
        if self.allow and not any(ip.version == n.version and ip in n for n in self.allow):
            return f"{address} is outside registration_allow"
        return None

    async def check(self, host: str) -> None:
        """Raise `AddressRefused` when `host` (an IP address, or a name's addresses) may not
        be registered. A name that does not resolve passes: nothing can be reached there."""
        if not self.allow and not self.deny:
            return
        try:
            addresses = [str(ipaddress.ip_address(host.partition("%")[0]))]
        except ValueError:
            addresses = await _resolve(host)
        for address in addresses:
            refusal = self.refusal(address)
            if refusal is not None:
                raise AddressRefused(refusal if address == host else f"{host}: {refusal}")


def _parse(networks: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(network, strict=False) for network in networks)


async def _resolve(host: str) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return sorted({str(info[4][0]) for info in infos})
