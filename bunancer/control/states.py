"""Server states and what moves a server between them: a sans-I/O state machine.

Rules this module keeps:
- Every legal transition is one row of `TRANSITIONS`; anything else raises
  `IllegalTransition`. Only `healthy` servers are routed.
- Health results move a server only after a streak (hysteresis): `rise` passing checks
  in a row to come up, `fall` failing ones to go down, `dead_after` to be declared dead.
  A new or restarted (`pending`) server is admitted by its first passing check.
- Admin state is kept apart from health: disabled servers are still checked (their
  results are recorded) but never routed; enabling sends them back to `pending`.
- Passive ejection takes a healthy server out for a time that grows with each repeat;
  it comes back only through passing active checks once that time is over.
- Check intervals back off exponentially (with jitter) while a server is down, up to a
  cap; dead servers are checked at a long interval, and quickly again once one passes.

Time is passed in (`now`), randomness too (`rng`), so tests drive it with a fake clock.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from ..core.server import State


class Trigger(StrEnum):
    RISE = "rise"  # `rise` consecutive passing checks
    FALL = "fall"  # `fall` consecutive failing checks
    DIE = "die"  # `dead_after` consecutive failing checks
    EJECT = "eject"  # passive outlier ejection
    DRAIN = "drain"  # admin drain or deregistration
    DISABLE = "disable"
    ENABLE = "enable"


_ANY = tuple(State)
_DOWN = (State.UNHEALTHY, State.DEAD)
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (State.PENDING, Trigger.RISE): State.HEALTHY,
    (State.PENDING, Trigger.FALL): State.UNHEALTHY,
    (State.HEALTHY, Trigger.FALL): State.UNHEALTHY,
    (State.HEALTHY, Trigger.EJECT): State.UNHEALTHY,
    (State.UNHEALTHY, Trigger.RISE): State.HEALTHY,
    (State.UNHEALTHY, Trigger.DIE): State.DEAD,
    (State.DEAD, Trigger.RISE): State.HEALTHY,
    (State.DISABLED, Trigger.ENABLE): State.PENDING,
    (State.DRAINING, Trigger.ENABLE): State.PENDING,  # a drain called off
    **{(state, Trigger.DRAIN): State.DRAINING for state in _ANY if state is not State.DRAINING},
    **{(state, Trigger.DISABLE): State.DISABLED for state in _ANY if state is not State.DISABLED},
}


class IllegalTransition(Exception):
    def __init__(self, state: State, trigger: Trigger) -> None:
        super().__init__(f"no transition from {state} on {trigger}")
        self.state = state
        self.trigger = trigger


@dataclass(frozen=True, slots=True)
class Transition:
    old: State
    new: State
    trigger: Trigger
    reason: str
    at: float  # the clock's time (monotonic in the balancer)


@dataclass(frozen=True, slots=True)
class CheckResult:
    at: float
    ok: bool
    detail: str  # "200 in 3.1 ms", "connect refused", "timeout after 1.0 s"
    latency: float  # seconds; 0.0 when nothing answered


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    rise: int = 2
    fall: int = 2
    dead_after: int = 10  # failing checks in a row once unhealthy
    interval: float = 1.0  # between checks of a healthy server
    fast_interval: float = 0.5  # while a streak that would change the state is under way
    down_interval: float = 1.0  # first interval while down; multiplied by `backoff` ...
    backoff: float = 1.5
    max_down_interval: float = 2.0  # ... up to this cap
    dead_interval: float = 10.0
    jitter: float = 0.1  # +-10% on every interval, so checks of many servers spread out
    eject_after: int = 5  # consecutive passive failures
    eject_base: float = 2.0  # seconds out on the first ejection, times the repeat count
    eject_max: float = 60.0


class ServerHealth:
    """The state of one server and the streaks, history and timers that drive it."""

    __slots__ = (
        "checks_failed",
        "checks_passed",
        "downtime",
        "ejected_until",
        "ejections",
        "ejections_total",
        "fail_streak",
        "history",
        "ok_streak",
        "policy",
        "reason",
        "since",
        "state",
    )

    def __init__(
        self,
        policy: HealthPolicy,
        now: float,
        state: State = State.PENDING,
        reason: str = "registered",
    ) -> None:
        self.policy = policy
        self.state = state
        self.reason = reason
        self.since = now
        self.ok_streak = 0
        self.fail_streak = 0
        self.ejections = 0  # recent ones (the ejection time grows with them)
        self.ejections_total = 0
        self.checks_passed = 0
        self.checks_failed = 0
        self.ejected_until = 0.0
        self.downtime = 0.0  # seconds spent unhealthy or dead, before the current spell
        self.history: deque[CheckResult] = deque(maxlen=10)

    @property
    def routable(self) -> bool:
        return self.state is State.HEALTHY

    @property
    def last_check(self) -> CheckResult | None:
        return self.history[-1] if self.history else None

    def down_for(self, now: float) -> float:
        """Seconds spent unhealthy or dead in all (HAProxy's "downtime"), the current spell
        included."""
        current = now - self.since if self.state in _DOWN else 0.0
        return self.downtime + current

    def apply(self, trigger: Trigger, now: float, reason: str) -> Transition:
        """Move along one row of the table, or raise IllegalTransition."""
        new = TRANSITIONS.get((self.state, trigger))
        if new is None:
            raise IllegalTransition(self.state, trigger)
        transition = Transition(self.state, new, trigger, reason, now)
        if self.state in _DOWN:
            self.downtime += now - self.since
        self.state = new
        self.reason = reason
        self.since = now
        if trigger in (Trigger.RISE, Trigger.FALL, Trigger.DIE, Trigger.ENABLE):
            self.ok_streak = self.fail_streak = 0
        return transition

    # -- active checks ---------------------------------------------------------------------

    def record_check(self, result: CheckResult) -> Transition | None:
        """Count one active check result; return the transition it causes, if any."""
        self.history.append(result)
        if result.ok:
            self.ok_streak += 1
            self.fail_streak = 0
            self.checks_passed += 1
        else:
            self.fail_streak += 1
            self.ok_streak = 0
            self.checks_failed += 1
        policy = self.policy
        now = result.at
        state = self.state
        if state is State.PENDING:
            # A new (or just restarted) server has no flapping to damp: its first passing
            # check admits it. Hysteresis applies from then on.
            if result.ok:
                return self.apply(Trigger.RISE, now, "first check passed")
            if self.fail_streak >= policy.fall:
                return self._fall(now, result)
        elif state is State.HEALTHY:
            if self.fail_streak >= policy.fall:
                return self._fall(now, result)
            if self.ejections and now - self.since > policy.eject_max:
                self.ejections = 0  # a long healthy spell forgives earlier ejections
        elif state is State.UNHEALTHY:
            if self.ok_streak >= policy.rise and now >= self.ejected_until:
                # Checks that passed while an ejection ran out are not news: say what
                # readmits it (`rise` of them), and that the ejection is over.
                reason = f"{policy.rise} passing checks"
                if self.ok_streak > policy.rise:
                    reason += ", ejection over"
                return self.apply(Trigger.RISE, now, reason)
            if self.fail_streak >= policy.dead_after:
                return self.apply(
                    Trigger.DIE, now, f"{self.fail_streak} failed checks: {result.detail}"
                )
        elif state is State.DEAD and self.ok_streak >= policy.rise:
            return self.apply(Trigger.RISE, now, f"back: {self.ok_streak} passing checks")
        # Disabled and draining servers are checked for information only.
        return None

    def _fall(self, now: float, result: CheckResult) -> Transition:
        return self.apply(Trigger.FALL, now, f"{self.fail_streak} failed checks: {result.detail}")

    def next_check_in(self, rng: random.Random) -> float:
        """Seconds until the next active check, with jitter."""
        policy = self.policy
        state = self.state
        if state is State.HEALTHY:
            delay = policy.fast_interval if self.fail_streak else policy.interval
        elif state is State.UNHEALTHY:
            if self.ok_streak:
                delay = policy.fast_interval
            else:
                steps = self.fail_streak  # failures since the server went down
                delay = min(policy.down_interval * policy.backoff**steps, policy.max_down_interval)
        elif state is State.DEAD:
            delay = policy.fast_interval if self.ok_streak else policy.dead_interval
        elif state is State.PENDING:
            delay = policy.fast_interval
        else:
            delay = policy.interval
        if policy.jitter:
            delay *= 1.0 + rng.uniform(-policy.jitter, policy.jitter)
        return delay

    # -- passive ejection -----------------------------------------------------------------------

    def eject(self, now: float, reason: str) -> Transition:
        """Take a healthy server out for a time that grows with each repeat."""
        self.ejections += 1
        self.ejections_total += 1
        out_for = min(self.policy.eject_base * self.ejections, self.policy.eject_max)
        self.ejected_until = now + out_for
        return self.apply(Trigger.EJECT, now, f"ejected for {out_for:g}s: {reason}")

    def __repr__(self) -> str:
        streaks = f"ok={self.ok_streak} fail={self.fail_streak}"
        return f"<ServerHealth {self.state} ({self.reason}) {streaks}>"
