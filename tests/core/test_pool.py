"""ServerPool: the routable snapshot, and the one owner of selection accounting."""

from __future__ import annotations

import pytest

from bunancer.core.pool import ServerPool
from bunancer.core.server import Server, State
from bunancer.core.settings import BalancingSettings


def pool_of(algorithm: str, count: int = 2) -> tuple[ServerPool, list[Server]]:
    pool = ServerPool("p", BalancingSettings(algorithm=algorithm))
    servers = [Server(f"s{i}", "127.0.0.1", 9000 + i) for i in range(count)]
    for server in servers:
        pool.add(server)
    return pool, servers


def test_pool_snapshot_and_avoid() -> None:
    pool, (a, b) = pool_of("round-robin")
    assert pool.routable == (a, b)
    for _ in range(4):
        assert pool.pick(avoid=a) is b
    b.state = State.DISABLED
    pool.rebuild()
    assert pool.routable == (a,)
    assert pool.pick(avoid=a) is a  # nothing else to take
    pool.remove("s0")
    assert pool.pick() is None
    with pytest.raises(ValueError, match="already"):
        pool.add(b)


def test_begin_and_end_keep_in_flight_and_its_peak() -> None:
    pool, servers = pool_of("round-robin")
    first = pool.begin()
    second = pool.begin()
    third = pool.begin()
    assert {first, second} == set(servers)
    assert third is first
    assert (first.in_flight, first.max_in_flight) == (2, 2)
    for server in (first, second, third):
        assert server is not None
        pool.end(server)
    assert [s.in_flight for s in servers] == [0, 0]
    assert first.max_in_flight == 2  # the peak stays


def test_least_connections_sees_every_begin_and_end() -> None:
    # Long-lived uses (TCP tunnels) must spread: each begin counts until its end.
    pool, servers = pool_of("least-connections", 2)
    held = [pool.begin() for _ in range(6)]
    assert [s.in_flight for s in servers] == [3, 3]
    for server in held[:3]:
        assert server is not None
        pool.end(server)
    fresh = [pool.begin() for _ in range(3)]
    assert [s.in_flight for s in servers] == [3, 3]
    assert len({id(s) for s in fresh}) <= 2


def test_a_retry_goes_elsewhere_or_back_to_the_only_server() -> None:
    pool, (a, b) = pool_of("round-robin")
    assert pool.begin(avoid=a) is b
    b.state = State.UNHEALTHY
    pool.rebuild()
    assert pool.begin(avoid=a) is a
    a.state = State.UNHEALTHY
    pool.rebuild()
    assert pool.begin(avoid=a) is a  # nothing routable: the retry goes where it was
    assert pool.begin() is None


def test_end_teaches_peak_ewma_only_answers_it_timed() -> None:
    pool, (only,) = pool_of("peak-ewma", 1)
    assert pool.begin() is only
    pool.end(only, 50_000)
    learnt = only.latency_ewma
    assert learnt > 0
    assert pool.begin() is only
    pool.end(only)  # a failed attempt: nothing learnt
    assert only.latency_ewma == learnt
    assert only.in_flight == 0
