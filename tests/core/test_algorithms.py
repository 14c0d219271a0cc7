from __future__ import annotations

import pytest

from bunancer.core.algorithms import RoundRobin, make_selector
from bunancer.core.pool import ServerPool
from bunancer.core.server import Server
from bunancer.core.states import Event


def test_round_robin_cycles_and_survives_shrinking() -> None:
    selector = RoundRobin()
    servers = ("a", "b", "c")
    assert [selector.pick(servers) for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
    selector.pick(servers)
    selector.pick(servers)
    smaller = ("a",)
    selector.update(smaller)
    assert selector.pick(smaller) == "a"
    assert selector.pick(()) is None


def test_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="unknown algorithm"):
        make_selector("nope")


def test_pool_snapshot_and_avoid() -> None:
    pool = ServerPool("p")
    a, b = Server("a", "127.0.0.1", 1), Server("b", "127.0.0.1", 2)
    pool.add(a)
    pool.add(b)
    assert pool.routable == (a, b)
    for _ in range(4):
        assert pool.pick(avoid=a) is b
    b.health.apply(Event.DISABLE, 1.0, "test")
    pool.rebuild()
    assert pool.routable == (a,)
    assert pool.pick(avoid=a) is a  # nothing else to take
    pool.remove("a")
    assert pool.pick() is None
    with pytest.raises(ValueError, match="already"):
        pool.add(b)
