"""The lab's split of a pool's traffic (core/pool.py: Experiment and Arm): which arm a
request goes to, each arm selecting with its own algorithm over the pool's servers as they
change, and counting what its requests got. Objects only, with given dice."""

from __future__ import annotations

from bunancer.core.pool import Arm, Experiment, ServerPool
from bunancer.core.server import Server, State
from bunancer.core.settings import BalancingSettings
from tests.core.test_faults import prepared


def pool_of(count: int) -> ServerPool:
    pool = ServerPool("web", BalancingSettings(algorithm="round-robin"))
    for index in range(count):
        server = Server(f"s{index + 1}", "127.0.0.1", 9001 + index, 1, "web")
        server.state = State.HEALTHY
        pool.add(server)
    return pool


def arms_of(pool: ServerPool, *algorithms: str) -> list[Arm]:
    return [Arm(pool, name, BalancingSettings(algorithm=name)) for name in algorithms]


def test_requests_are_split_at_random_or_by_client() -> None:
    pool = pool_of(2)
    arms = arms_of(pool, "round-robin", "least-connections")
    draws = iter([0.2, 0.7, 0.49, 0.5])
    pool.set_lab(Experiment(arms, by_client=False, draw=lambda: next(draws)))
    assert pool.per_request
    assert [prepared(pool).pool for _ in range(4)] == [arms[0], arms[1], arms[0], arms[1]]
    pool.set_lab(Experiment(arms, by_client=True))
    for client in ("10.0.0.1", "10.0.0.2", "192.168.1.9"):
        first = prepared(pool, client).pool
        assert all(prepared(pool, client).pool is first for _ in range(5))  # stays on its arm
    pool.set_lab(None)
    assert not pool.per_request
    assert prepared(pool).pool is pool


def test_each_arm_selects_with_its_own_state_over_the_pool_as_it_changes() -> None:
    pool = pool_of(3)
    first, second = arms_of(pool, "round-robin", "round-robin")
    pool.set_lab(Experiment([first, second], by_client=False))
    assert [first.begin().id for _ in range(3)] == ["s1", "s2", "s3"]  # type: ignore[union-attr]
    assert second.begin().id == "s1"  # type: ignore[union-attr]  # its own position
    assert pool.servers["s1"].in_flight == 2  # the servers are the pool's: counted once each
    pool.servers["s2"].state = State.UNHEALTHY
    pool.rebuild()
    assert first.routable == pool.routable == (pool.servers["s1"], pool.servers["s3"])
    assert {second.begin().id for _ in range(4)} == {"s1", "s3"}  # type: ignore[union-attr]


def test_an_arm_counts_only_what_a_request_finally_got() -> None:
    pool = pool_of(2)
    (arm,) = arms_of(pool, "round-robin")
    pool.set_lab(Experiment([arm], by_client=False))
    s1, s2 = pool.servers["s1"], pool.servers["s2"]
    assert [arm.begin() for _ in range(3)] == [s1, s2, s1]
    arm.end(s1, 1200, 200)
    arm.end(s2, -1, 0)  # an attempt tried again elsewhere: not the request's outcome
    arm.end(s1, 900_000, 503)
    outcome = arm.outcomes["s1"]
    assert outcome.by_class[2] == 1
    assert outcome.by_class[5] == 1
    assert sum(outcome.errors) == 1
    assert "s2" not in arm.outcomes
    assert (s1.in_flight, s2.in_flight) == (0, 0)  # the pool's books are kept all the same
