"""Fault rules on real traffic (the lab): delay, abort with a status, or reset the
connection, for a share of a pool's requests. Sans-I/O but for `act`.

A pool without rules has `faults` None, and the request path pays no more than before: the
check it made for hash keys became `ServerPool.per_request`, true with either. With rules,
`PoolFaults.pick` finds the first rule whose filters (a path prefix, a host, a header the
request carries) match and whose dice say yes; `act` then does what it says to the exchange before
it picks a server. Rules end by themselves: the control process removes each at its expiry
(Envoy's fault filter, the anchor, has neither expiry nor rules set at run time).
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from .decisions import Decision, Recorded, Recorder
from .routing import normalise_host
from .stats import REJECTED

DELAY: Final = "delay"
ABORT: Final = "abort"
RESET: Final = "reset"
TRACE: Final = "trace"  # not a fault: a request asking why this server (X-Bunancer-Debug)
# SO_LINGER on with zero seconds: closing the socket sends a TCP reset, not a FIN.
_RESET_ON_CLOSE: Final = struct.pack("ii", 1, 0)


@dataclass(frozen=True, slots=True)
class FaultRule:
    """One rule of a pool: `percent` of the requests it matches are hit."""

    rule_id: str
    kind: str  # DELAY, ABORT or RESET
    percent: float  # 0 < percent <= 100
    delay_min: float = 0.0  # seconds (DELAY); fixed when delay_max equals it
    delay_max: float = 0.0
    status: int = 503  # the answer of an ABORT
    header: bytes = b""  # lower case: only requests carrying this header ("": any)
    path_prefix: bytes = b""  # only requests whose target starts with it ("": any)
    # Only requests for this host, lower case ("*.parent": its subdomains; "": any). With the
    # pool and the path prefix, a route's requests.
    host: bytes = b""

    def matches(
        self, target: bytes, host: bytes | None, headers: list[tuple[bytes, bytes]]
    ) -> bool:
        """Whether a request (its target, its Host as the head has it, its headers) is one
        of this rule's."""
        if self.path_prefix and not target.startswith(self.path_prefix):
            return False
        if self.host and not self._for_host(normalise_host(host)):
            return False
        if self.header:
            return any(name.lower() == self.header for name, _ in headers)
        return True

    def _for_host(self, host: bytes) -> bool:
        if self.host.startswith(b"*."):
            return host.endswith(self.host[1:])
        return host == self.host

    def delay_for(self, draw: float) -> float:
        """The delay for a uniform `draw` in [0, 1)."""
        return self.delay_min + (self.delay_max - self.delay_min) * draw


class PoolFaults:
    """A pool's rules, in the order they were set; the first that hits a request wins."""

    def __init__(
        self, rules: tuple[FaultRule, ...], draw: Callable[[], float] = random.random
    ) -> None:
        self.rules = rules
        self.draw = draw  # uniform in [0, 1); tests pass their own

    def pick(
        self, target: bytes, host: bytes | None, headers: list[tuple[bytes, bytes]]
    ) -> FaultRule | None:
        for rule in self.rules:
            if rule.matches(target, host, headers) and self.draw() * 100.0 < rule.percent:
                return rule
        return None


class Faulted(Protocol):
    """What `act` needs of an exchange."""

    trace: bytes
    decision: Decision | None

    @property
    def pool(self) -> Recorded | None: ...

    def start(self) -> None: ...

    def fail(self, status: int, error: int) -> None: ...

    def abort_client(self) -> None: ...


def act(
    rule: FaultRule,
    exchange: Faulted,
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.BaseTransport | None,
) -> bool:
    """Do what `rule` says to `exchange`: start it after a delay, answer the rule's status,
    or reset the client's connection (True: it does not start now); or, for TRACE, have
    its selection recorded and told in its response (False: it starts now)."""
    if rule.kind == TRACE:
        pool = exchange.pool
        if pool is not None:
            pool.selector = Recorder(pool, pool.selector, exchange, told=True)
        return False
    if rule.kind == DELAY:
        loop.call_later(rule.delay_for(random.random()), exchange.start)
    elif rule.kind == ABORT:
        exchange.fail(rule.status, REJECTED)
    else:
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        exchange.abort_client()
    return True
