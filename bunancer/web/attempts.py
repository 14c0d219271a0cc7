"""Failed token attempts per client address, and the wait they earn (API and dashboard login).

A token has 256 bits, so guessing is hopeless; what this stops is a client hammering the
admin listeners with wrong tokens unnoticed. After `free` wrong tokens in a row an address
must wait `base` seconds before its next attempt, doubling with each further wrong one up
to `longest`; a right token resets it. While it waits, every request of it that needs the
token is a 429 with Retry-After, even one with the right token (or waiting would not slow
guessing). The first wrong token from an address and each wait are logged, not every
attempt. Addresses quiet for `forget_after` seconds are forgotten; at most `max_addresses`
are kept (the oldest dropped), so a flood of addresses costs bounded memory.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("bunancer.web")


@dataclass(slots=True)
class _Record:
    failures: int = 0
    last: float = 0.0
    blocked_until: float = 0.0


class FailedAttempts:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        free: int = 5,
        base: float = 1.0,
        longest: float = 60.0,
        forget_after: float = 600.0,
        max_addresses: int = 10_000,
    ) -> None:
        self.clock = clock
        self.free = free
        self.base = base
        self.longest = longest
        self.forget_after = forget_after
        self.max_addresses = max_addresses
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def wait(self, client: str) -> float:
        """Seconds `client` must still wait before its next attempt (0: it may try)."""
        record = self._records.get(client)
        if record is None:
            return 0.0
        now = self.clock()
        if now - record.last > self.forget_after:
            del self._records[client]
            return 0.0
        return max(0.0, record.blocked_until - now)

    def failed(self, client: str, what: str) -> None:
        """A wrong token from `client` (`what`: where, for the log)."""
        now = self.clock()
        record = self._records.pop(client, None)
        if record is None or now - record.last > self.forget_after:
            record = _Record()
        self._records[client] = record  # most recent last, for eviction
        while len(self._records) > self.max_addresses:
            self._records.popitem(last=False)
        record.failures += 1
        record.last = now
        if record.failures == 1:
            log.warning("wrong token from %s (%s)", client or "?", what)
        beyond = record.failures - self.free
        if beyond >= 0:
            seconds = min(self.longest, self.base * 2.0**beyond)
            record.blocked_until = now + seconds
            log.warning(
                "%d wrong tokens in a row from %s (%s): it waits %.0f s before trying again",
                record.failures,
                client or "?",
                what,
                seconds,
            )

    def succeeded(self, client: str) -> None:
        self._records.pop(client, None)
