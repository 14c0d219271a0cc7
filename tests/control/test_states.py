"""The server state machine with a fake clock: every transition, hysteresis, backoff."""

from __future__ import annotations

import random

import pytest

from bunancer.control.states import (
    TRANSITIONS,
    CheckResult,
    HealthPolicy,
    IllegalTransition,
    ServerHealth,
    State,
    Trigger,
)

POLICY = HealthPolicy(
    rise=2,
    fall=3,
    dead_after=6,
    interval=1.0,
    fast_interval=0.5,
    down_interval=1.0,
    backoff=2.0,
    max_down_interval=8.0,
    dead_interval=30.0,
    jitter=0.0,
    eject_base=10.0,
    eject_max=25.0,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def tick(self, seconds: float = 1.0) -> float:
        self.now += seconds
        return self.now


def ok(clock: Clock) -> CheckResult:
    return CheckResult(clock.tick(), True, "200 in 1.0 ms", 0.001)


def bad(clock: Clock, detail: str = "connect refused") -> CheckResult:
    return CheckResult(clock.tick(), False, detail, 0.0)


def feed(health: ServerHealth, results: list[CheckResult]) -> list[State]:
    return [t.new for r in results if (t := health.record_check(r)) is not None]


def healthy(clock: Clock) -> ServerHealth:
    health = ServerHealth(POLICY, clock.now)
    feed(health, [ok(clock)])
    assert health.state is State.HEALTHY
    return health


def test_pending_is_admitted_by_its_first_passing_check() -> None:
    clock = Clock()
    health = ServerHealth(POLICY, clock.now)
    assert health.state is State.PENDING
    assert not health.routable
    assert health.record_check(bad(clock)) is None  # one failure is not yet a fall
    transition = health.record_check(ok(clock))
    assert transition is not None
    assert (transition.old, transition.new, transition.trigger) == (
        State.PENDING,
        State.HEALTHY,
        Trigger.RISE,
    )
    assert transition.reason == "first check passed"
    assert transition.at == clock.now
    assert health.routable


def test_pending_falls_to_unhealthy() -> None:
    clock = Clock()
    health = ServerHealth(POLICY, clock.now)
    assert feed(health, [bad(clock), bad(clock), bad(clock)]) == [State.UNHEALTHY]
    assert health.reason == "3 failed checks: connect refused"


def test_hysteresis_a_single_failure_or_pass_changes_nothing() -> None:
    clock = Clock()
    health = healthy(clock)
    # fail, fail, pass: the streak resets, still healthy
    assert feed(health, [bad(clock), bad(clock), ok(clock), bad(clock), bad(clock)]) == []
    assert health.state is State.HEALTHY
    assert feed(health, [bad(clock, "timeout after 1.0 s")]) == [State.UNHEALTHY]
    assert health.reason == "3 failed checks: timeout after 1.0 s"
    # up again only after `rise` passes in a row
    assert feed(health, [ok(clock), bad(clock), ok(clock)]) == []
    assert feed(health, [ok(clock)]) == [State.HEALTHY]


def test_unhealthy_dies_after_dead_after_and_comes_back() -> None:
    clock = Clock()
    health = healthy(clock)
    states = feed(health, [bad(clock) for _ in range(POLICY.dead_after)])
    assert states == [State.UNHEALTHY]
    # streak restarted at the fall: dead_after more failures in a row make it dead
    states = feed(health, [bad(clock) for _ in range(POLICY.dead_after)])
    assert states == [State.DEAD]
    assert health.reason == "6 failed checks: connect refused"
    assert feed(health, [ok(clock), ok(clock)]) == [State.HEALTHY]
    assert health.reason == "back: 2 passing checks"


def test_backoff_grows_to_cap_and_dead_interval() -> None:
    clock = Clock()
    rng = random.Random(1)
    health = healthy(clock)
    assert health.next_check_in(rng) == POLICY.interval
    health.record_check(bad(clock))
    assert health.next_check_in(rng) == POLICY.fast_interval  # a fall may be starting
    feed(health, [bad(clock), bad(clock)])
    assert health.state is State.UNHEALTHY
    delays = []
    for _ in range(5):
        delays.append(health.next_check_in(rng))
        health.record_check(bad(clock))
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]  # doubling, capped
    health.record_check(ok(clock))
    assert health.next_check_in(rng) == POLICY.fast_interval  # a rise may be starting
    feed(health, [bad(clock) for _ in range(POLICY.dead_after)])
    assert health.state is State.DEAD
    assert health.next_check_in(rng) == POLICY.dead_interval
    health.record_check(ok(clock))
    assert health.next_check_in(rng) == POLICY.fast_interval


def test_jitter_spreads_intervals_within_bounds() -> None:
    policy = HealthPolicy(interval=10.0, jitter=0.1)
    clock = Clock()
    health = ServerHealth(policy, clock.now, State.HEALTHY)
    rng = random.Random(7)
    delays = {health.next_check_in(rng) for _ in range(200)}
    assert len(delays) > 100
    assert all(9.0 <= d <= 11.0 for d in delays)


def test_ejection_time_grows_and_active_checks_readmit_after_it() -> None:
    clock = Clock()
    health = healthy(clock)
    transition = health.eject(clock.now, "5 consecutive 502")
    assert transition.new is State.UNHEALTHY
    assert transition.reason == "ejected for 10s: 5 consecutive 502"
    # passing checks during the ejection time do not readmit
    assert feed(health, [ok(clock), ok(clock), ok(clock)]) == []
    clock.tick(10)
    assert feed(health, [ok(clock)]) == [State.HEALTHY]
    # Four checks passed; `rise` (2) of them readmit it, once the ejection is over.
    assert health.reason == "2 passing checks, ejection over"
    second = health.eject(clock.now, "5 consecutive connect failures")
    assert second.reason.startswith("ejected for 20s")
    clock.tick(20)
    feed(health, [ok(clock), ok(clock)])
    assert health.eject(clock.now, "again").reason.startswith("ejected for 25s")  # capped


def test_downtime_adds_up_the_spells_spent_unhealthy_or_dead() -> None:
    clock = Clock()
    health = healthy(clock)
    assert health.down_for(clock.now) == 0.0
    health.eject(clock.now, "x")
    clock.tick(12)
    assert health.down_for(clock.now) == 12.0  # the current spell counts
    feed(health, [ok(clock), ok(clock)])
    assert health.state is State.HEALTHY
    clock.tick(100)
    assert health.down_for(clock.now) == pytest.approx(14.0)  # 12 + the 2 checks' ticks
    health.apply(Trigger.DISABLE, clock.now, "admin")
    clock.tick(50)
    assert health.down_for(clock.now) == pytest.approx(14.0)  # disabled is not down


def test_long_healthy_spell_forgives_ejections() -> None:
    clock = Clock()
    health = healthy(clock)
    health.eject(clock.now, "x")
    clock.tick(10)
    feed(health, [ok(clock), ok(clock)])
    clock.tick(POLICY.eject_max + 1)
    health.record_check(ok(clock))
    assert health.ejections == 0
    assert health.eject(clock.now, "y").reason.startswith("ejected for 10s")


def test_admin_states() -> None:
    clock = Clock()
    health = healthy(clock)
    assert health.apply(Trigger.DISABLE, clock.now, "admin").new is State.DISABLED
    # checked but never moved by results while disabled
    assert feed(health, [bad(clock) for _ in range(10)]) == []
    assert len(health.history) == 10
    assert not health.routable
    assert health.apply(Trigger.ENABLE, clock.now, "admin").new is State.PENDING
    assert feed(health, [ok(clock)]) == [State.HEALTHY]
    assert health.apply(Trigger.DRAIN, clock.now, "deregistered").new is State.DRAINING
    assert feed(health, [ok(clock), ok(clock)]) == []
    assert health.apply(Trigger.ENABLE, clock.now, "drain cancelled").new is State.PENDING


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (State.HEALTHY, Trigger.RISE),
        (State.PENDING, Trigger.EJECT),
        (State.DEAD, Trigger.FALL),
        (State.UNHEALTHY, Trigger.EJECT),
        (State.DRAINING, Trigger.DRAIN),
        (State.HEALTHY, Trigger.ENABLE),
    ],
)
def test_illegal_transitions_raise(state: State, event: Trigger) -> None:
    health = ServerHealth(POLICY, 0.0, state)
    with pytest.raises(IllegalTransition):
        health.apply(event, 1.0, "x")
    assert health.state is state


def test_table_covers_the_design() -> None:
    # Every state can be drained and disabled; only routable state is healthy.
    for state in State:
        if state is not State.DRAINING:
            assert TRANSITIONS[(state, Trigger.DRAIN)] is State.DRAINING
        if state is not State.DISABLED:
            assert TRANSITIONS[(state, Trigger.DISABLE)] is State.DISABLED
    assert set(TRANSITIONS.values()) == set(State)
    assert all(len(row) == 2 for row in TRANSITIONS)
