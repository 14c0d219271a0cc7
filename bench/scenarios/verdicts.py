"""The judges: what each scenario must show, as checks that PASS or FAIL. Sans-I/O.

A judge reads `Evidence` (the run's per-second timeline, its phases around the fault, the
state changes of the servers it follows, a few notes from the fault and the balancer's
settings) and returns `Check`s. Every threshold is a promise of the README, named next to
it; tests/bench/test_verdicts.py feeds every judge made-up runs that must pass and runs
that must fail.

The promises, as the README makes them:
- A request whose connection failed before any answer, or that got one of `retry_on`'s
  statuses, is retried on another server when it is idempotent and fully received: clients
  see no error for it. A POST whose body already went to a server is never replayed, so
  those are reported apart, with their own bound.
- Passive checks eject a server after `consecutive_failures` bad answers in a row.
- Active checks take a server out after `fall` failed checks and bring it back after
  `rise` passes; a new or restarted server is checked at once and admitted by its first
  passing check.
- peak-ewma keeps p99 low with one of three backends ten times slower.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.timeline import Failure, Phase, Timeline

# A request whose method a retry may replay (the locustfile names requests by method).
IDEMPOTENT_PREFIXES = ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")
# The restarted or new server's first answers: first check at once, then one request's turn.
ADMITTED_WITHIN_S = 3.0
# Failed POSTs that were on their way to a killed server: they left within this of the kill.
IN_FLIGHT_S = 1.0
OUT_STATES = ("unhealthy", "dead", "draining", "removed")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    value: str


@dataclass(frozen=True)
class Transition:
    """A server's state as the runner saw it change (wall clock)."""

    at: float
    pool: str
    server: str
    state: str
    reason: str


@dataclass(frozen=True)
class Settings:
    """The balancer's settings a judge needs (its own config, or read from the API)."""

    consecutive_failures: int = 5


@dataclass
class Evidence:
    """What a judge looks at: plain data, so every judge can be tried on made-up runs."""

    timeline: Timeline
    phases: dict[str, Phase]
    window: tuple[float, float]  # the fault, wall clock
    focus: list[str] = field(default_factory=list)  # the stubs the scenario follows
    transitions: list[Transition] = field(default_factory=list)  # of the focus servers
    notes: dict[str, Any] = field(default_factory=dict)
    nodes: int = 3
    users: int = 20
    settings: Settings = field(default_factory=Settings)

    @property
    def requests(self) -> int:
        return self.timeline.requests

    def failures(self, idempotent: bool) -> list[Failure]:
        return [f for f in self.timeline.failures if is_idempotent(f.name) == idempotent]


def is_idempotent(request_name: str) -> bool:
    return request_name.startswith(IDEMPOTENT_PREFIXES)


# -- checks the scenarios share ----------------------------------------------------------------


def served_something(evidence: Evidence) -> Check:
    return Check("requests served", evidence.requests > 0, f"{evidence.requests:,}")


def no_failures(evidence: Evidence) -> Check:
    count = len(evidence.timeline.failures)
    return Check("no client-visible failures", count == 0, str(count))


def no_idempotent_failures(evidence: Evidence) -> Check:
    failed = evidence.failures(idempotent=True)
    return Check(
        "no failed idempotent request (retried on another server)", not failed, str(len(failed))
    )


def answers_within(evidence: Evidence, since: float, what: str) -> Check:
    """Every focus stub answered within ADMITTED_WITHIN_S of `since`."""
    took = all_back(evidence.timeline, evidence.focus, since)
    return Check(
        f"{what} within {ADMITTED_WITHIN_S:g} s",
        took is not None and took < ADMITTED_WITHIN_S,
        "never" if took is None else f"{took:.2f} s",
    )


def all_back(timeline: Timeline, stubs: list[str], since: float) -> float | None:
    """Seconds from `since` until every one of `stubs` had answered (None: one never did)."""
    firsts = [timeline.first_answer([stub], since) for stub in stubs]
    if not firsts or None in firsts:
        return None
    return max(first for first in firsts if first is not None) - since


def times_out(evidence: Evidence, start: float, end: float) -> int:
    """Times a focus server left rotation in [start, end)."""
    return sum(1 for t in evidence.transitions if start <= t.at < end and t.state in OUT_STATES)


def times_back(evidence: Evidence, start: float, end: float) -> int:
    """Times a focus server came back into rotation in [start, end)."""
    return sum(1 for t in evidence.transitions if start <= t.at < end and t.state == "healthy")


# -- the judges ----------------------------------------------------------------------------------


def judge_steady(evidence: Evidence) -> list[Check]:
    return [served_something(evidence), no_failures(evidence)]


def judge_kill_one(evidence: Evidence) -> list[Check]:
    """Promise: clients of a backend that dies see no errors; only a POST already sent to
    it is lost (never replayed), so at most one per user, all at the kill."""
    killed = evidence.window[0]
    posts = evidence.failures(idempotent=False)
    late = [f for f in posts if not killed <= f.at < killed + IN_FLIGHT_S]
    bound = evidence.users  # a user has at most one request on its way
    return [
        served_something(evidence),
        no_idempotent_failures(evidence),
        Check(
            f"failed POSTs: only those on their way at the kill (<= {bound}, within "
            f"{IN_FLIGHT_S:g} s of it)",
            len(posts) <= bound and not late,
            f"{len(posts)} ({len(late)} later)",
        ),
        answers_within(evidence, evidence.notes["restarted_at"], "every restarted stub answers"),
    ]


def judge_errors(evidence: Evidence) -> list[Check]:
    """Promise: 503s are retried for idempotent requests; the failing server is ejected
    after `consecutive_failures` of them, so a POST (never retried once its body went) can
    meet at most that many per spell the server spends in rotation."""
    start, end = evidence.window
    after = evidence.phases["after"]
    spells = 1 + times_back(evidence, start, end)  # in rotation at the start, and each return
    bound = evidence.settings.consecutive_failures * spells
    posts = [f for f in evidence.failures(idempotent=False) if start <= f.at < end + 1.0]
    answered = int(evidence.notes.get("stub_503s", 0))
    return [
        served_something(evidence),
        Check("the stubs answered 503s", answered > 0, str(answered)),
        no_idempotent_failures(evidence),
        Check(
            f"failed POSTs <= consecutive_failures x spells in rotation "
            f"({evidence.settings.consecutive_failures} x {spells})",
            len(posts) <= bound,
            str(len(posts)),
        ),
        Check("no failures after the fault", after.failures == 0, str(after.failures)),
    ]


def judge_slow(evidence: Evidence) -> list[Check]:
    """Promise: peak-ewma keeps p99 low with one of three backends ten times slower:
    fewer than 1% of answers come from it, so p99 stays under its latency."""
    during = evidence.phases["during"]
    slow_ms = float(evidence.notes["slow_ms"])
    p99 = during.p99_ms
    return [
        served_something(evidence),
        no_failures(evidence),
        Check(
            f"p99 during the fault < the slow node's latency ({slow_ms:g} ms)",
            p99 is not None and p99 < slow_ms,
            "-" if p99 is None else f"{p99:.1f} ms",
        ),
    ]


def judge_flapping(evidence: Evidence) -> list[Check]:
    """Promise: `fall` failed checks take a server out, `rise` passes bring it back; its
    traffic answers (200 all along) reach clients either way."""
    start, end = evidence.window
    out = times_out(evidence, start, end + 2.0)
    return [
        served_something(evidence),
        no_failures(evidence),
        Check("the balancer took the node out at least once", out > 0, f"{out} time(s)"),
        answers_within(evidence, end, "the node answers again after the fault"),
    ]


def judge_scale_up(evidence: Evidence) -> list[Check]:
    """Promise: a new server is checked at once and admitted by its first passing check."""
    after = evidence.phases["after"]
    share = after.share(evidence.focus) or 0.0
    fair = 1 / evidence.nodes
    return [
        served_something(evidence),
        no_failures(evidence),
        answers_within(evidence, evidence.notes["joined_at"], "every new stub answers"),
        Check(
            f"new node's share after >= half a fair share ({fair / 2:.1%})",
            share >= fair / 2,
            f"{share:.1%}",
        ),
    ]


def judge_rolling_restart(evidence: Evidence) -> list[Check]:
    """Promise: a stopping stub deregisters and is drained: requests in flight finish."""
    notes = evidence.notes
    before, after = notes.get("pids_before", {}), notes.get("pids_after", {})
    changed = sum(1 for stub_id, pid in before.items() if after.get(stub_id) not in (None, pid))
    return [
        served_something(evidence),
        no_failures(evidence),
        Check(
            "every stub restarted (new PID, healthy again)",
            bool(before) and changed == len(before),
            f"{changed}/{len(before)}",
        ),
    ]


Judge = Callable[[Evidence], list[Check]]
