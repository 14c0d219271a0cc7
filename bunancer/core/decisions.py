"""Why this server: one selection, recorded with what it was made from (the lab).

A pool records the selection of 1 in `decision_sample` requests. The request path pays a
countdown for it (`ServerPool.admit`); the chosen request's pick goes through a `Recorder`
that the pool puts in front of its selector for that one pick and that puts the selector
back: the candidates (the routable servers, each with the algorithm's estimate, its
requests in flight and its weight), the servers left out and their state, panic mode, and
the one chosen. Sans-I/O: the clock is given.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .algorithms import Selector
from .server import Server

KEPT = 50  # recorded decisions a pool keeps until they are collected


@dataclass(frozen=True, slots=True)
class Candidate:
    server_id: str
    estimate: float | None  # the algorithm's number, lower first (None: it compares none)
    in_flight: int
    weight: float


@dataclass(slots=True)
class Decision:
    at: float  # wall clock
    pool: str
    arm: str  # the lab's arm that selected, "" outside an experiment
    algorithm: str
    chosen: str | None  # its server id (None: no server was routable)
    candidates: tuple[Candidate, ...]
    left_out: tuple[tuple[str, str], ...]  # (server id, state)
    panic: bool
    # The request's retries, as they come: (after which server, its status or 0, to which).
    retries: list[tuple[str, int, str]] = field(default_factory=list)

    def retried(self, failed: str, status: int, chosen: str, told: bool) -> bytes:
        """A retry of the request this decision is of; its X-Bunancer-Decision line when
        the request asked why (`told`), else b""."""
        self.retries.append((failed, status, chosen))
        return retry_line(failed, status, chosen) if told else b""

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "pool": self.pool,
            "arm": self.arm or None,
            "algorithm": self.algorithm,
            "chosen": self.chosen,
            "candidates": [
                {
                    "id": c.server_id,
                    "estimate": c.estimate,
                    "in_flight": c.in_flight,
                    "weight": c.weight,
                }
                for c in self.candidates
            ],
            "left_out": [{"id": sid, "state": state} for sid, state in self.left_out],
            "panic": self.panic,
            "retries": [
                {"after": failed, "status": status or None, "chosen": chosen}
                for failed, status, chosen in self.retries
            ],
        }


def taken(decisions: deque[Decision]) -> list[dict[str, Any]]:
    """A pool's recorded decisions, handed over as plain values (and gone from the pool)."""
    handed = [decision.as_dict() for decision in decisions]
    decisions.clear()
    return handed


class Recorded(Protocol):
    """What a recorder needs of its pool (core/pool.py's ServerPool)."""

    name: str
    label: str
    routable: tuple[Server, ...]
    servers: dict[str, Server]
    panic: bool
    selector: Selector
    decisions: deque[Decision]


def explain(pool: Recorded, selector: Selector, chosen: Server | None, at: float) -> Decision:
    """The decision `selector` just made for `pool` (before its books count the request)."""
    routable = pool.routable
    candidates = tuple(
        Candidate(s.id, selector.estimate(s), s.in_flight, s.effective_weight) for s in routable
    )
    left_out = tuple((s.id, str(s.state)) for s in pool.servers.values() if s not in routable)
    return Decision(at, pool.name, pool.label, selector.name, chosen.id if chosen else None,
                    candidates, left_out, pool.panic)  # fmt: skip


class Traced(Protocol):
    """A request whose selection is recorded: its decision (for its retries), and, when it
    asked why (X-Bunancer-Debug), its response's header lines."""

    trace: bytes
    decision: Decision | None


def header_line(decision: Decision) -> bytes:
    """The X-Bunancer-Decision response header: the decision on one line, ASCII."""

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4g}"

    candidates = ", ".join(
        f"{c.server_id} estimate={number(c.estimate)} in_flight={c.in_flight} "
        f"weight={number(c.weight)}"
        for c in decision.candidates
    )
    left_out = ", ".join(f"{sid} {state}" for sid, state in decision.left_out)
    arm = f"; arm={decision.arm}" if decision.arm else ""
    text = (
        f"pool={decision.pool}{arm}; algorithm={decision.algorithm}; "
        f"chosen={decision.chosen or '-'}; candidates={candidates or '-'}; "
        f"left_out={left_out or '-'}; panic={'yes' if decision.panic else 'no'}"
    )
    return b"X-Bunancer-Decision: " + text.encode("ascii", "replace") + b"\r\n"


def retry_line(failed: str, status: int, chosen: str) -> bytes:
    """An X-Bunancer-Decision line for a retry: after which server, why, and to which."""
    why = f"status {status}" if status else "no answer"
    text = f"retry after {failed} ({why}): chosen={chosen}"
    return b"X-Bunancer-Decision: " + text.encode("ascii", "replace") + b"\r\n"


class Recorder(Selector):
    """The pool's selector for one pick, recorded; then the pool has its own back."""

    def __init__(
        self,
        pool: Recorded,
        inner: Selector,
        traced: Traced,
        told: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.inner = inner
        self.traced = traced
        self.told = told  # it asked why: its response says
        self.clock = clock
        self.tracks_load = inner.tracks_load
        self.tracks_latency = inner.tracks_latency

    def pick(self, servers: Sequence[Server], key: bytes | None = None) -> Server | None:
        pool, inner = self.pool, self.inner
        pool.selector = inner  # this pick only (a retry's second pick goes unrecorded)
        server = inner.pick(servers, key)
        decision = explain(pool, inner, server, self.clock())
        pool.decisions.append(decision)
        self.traced.decision = decision
        if self.told:
            self.traced.trace += header_line(decision)
        return server

    def update(self, servers: Sequence[Server]) -> None:
        self.inner.update(servers)

    def knows(self, key: bytes | None) -> bool:
        return self.inner.knows(key)
