"""Passive outlier ejection: servers failing real traffic taken out, within limits.

The data plane counts failures on each `Server` (bunancer.core.server) and reports one that
failed `consecutive_failures` times in a row. The report is handled on the next turn of
the loop, not inside the parser callback that saw the failure: the decision (Envoy's
max-ejection-percent guard), the state change and its events are control-plane work.
An ejected server comes back only through passing active checks once its time is over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..core.pool import ServerPool
from ..core.server import OUT_OF_ROTATION, Server, State
from .health import HealthChecker
from .records import PoolSettings, ServerRecord
from .states import Transition

log = logging.getLogger("bunancer.registry")


class OutlierEjection:
    """Decides on the data plane's reports of failing servers for one registry."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pools: dict[str, ServerPool],
        settings: dict[str, PoolSettings],
        records: dict[tuple[str, str], ServerRecord],
        checker: HealthChecker,
        apply: Callable[[ServerRecord, Transition], None],
    ) -> None:
        # The registry's own tables, read as they change.
        self.loop = loop
        self.pools = pools
        self.settings = settings
        self.records = records
        self.checker = checker
        self.apply = apply  # the registry's way to make a transition take effect

    def report(self, server: Server, reason: str) -> None:
        """The data plane saw `reason` (e.g. "5 consecutive 502"): decide on the next turn."""
        self.loop.call_soon(self._decide, server, reason)

    def _decide(self, server: Server, reason: str) -> None:
        record = self.records.get((server.pool_name, server.id))
        if record is None or record.server is not server or record.state is not State.HEALTHY:
            return  # removed, replaced, or already out meanwhile
        pool = self.pools[server.pool_name]
        outlier = self.settings[pool.name].outlier
        if not outlier.enabled:
            return
        now = self.loop.time()
        candidates = [
            self.records[(pool.name, s.id)]
            for s in pool.servers.values()
            if s.state not in OUT_OF_ROTATION
        ]
        ejected = sum(
            1 for r in candidates if r.state is State.UNHEALTHY and r.health.ejected_until > now
        )
        if (ejected + 1) * 100 > outlier.max_ejection_percent * len(candidates):
            log.warning(
                "not ejecting %s/%s (%s): %d%% of the pool at most may be ejected",
                pool.name,
                server.id,
                reason,
                outlier.max_ejection_percent,
            )
            return
        self.apply(record, record.health.eject(now, reason))
        self.checker.watch(record, record.health.next_check_in(self.checker.rng))
