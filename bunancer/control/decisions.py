"""Why this server: the recorded selections of every pool, collected in the control process.

A pool records 1 in `decision_sample` selections (core/decisions.py). Once a second they
are collected here: from this process's pools, or from each worker's stats report; a
server left out gets the reason its state has (a failed check, an ejection, a drain) from
its record. The newest `KEPT` are kept, for the API (`/api/decisions`) and the dashboard.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from ..core.decisions import taken
from ..core.pool import ServerPool
from .registry import Registry

KEPT = 200


class DecisionLog:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.kept: deque[dict[str, Any]] = deque(maxlen=KEPT)
        self.recorded = 0  # since start, with those no longer kept

    def collect(self, pools: Iterable[ServerPool]) -> None:
        """This process's pools' recorded selections (a worker sends its own)."""
        for pool in pools:
            for decision in taken(pool.decisions):
                self.add(decision)

    def add(self, decision: dict[str, Any]) -> None:
        records = self.registry.records
        for left in decision["left_out"]:
            record = records.get((decision["pool"], left["id"]))
            left["reason"] = record.health.reason if record is not None else ""
        self.kept.append(decision)
        self.recorded += 1

    def recent(
        self, pool: str | None = None, server: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """The newest first; those of `pool`, and that chose or weighed or left out `server`."""
        found: list[dict[str, Any]] = []
        for decision in reversed(self.kept):
            if pool is not None and decision["pool"] != pool:
                continue
            if server is not None and not _mentions(decision, server):
                continue
            found.append(decision)
            if len(found) >= limit:
                break
        return found


def _mentions(decision: dict[str, Any], server: str) -> bool:
    return decision["chosen"] == server or any(
        entry["id"] == server for entry in (*decision["candidates"], *decision["left_out"])
    )
