"""Why this server (core/decisions.py): 1 in N selections recorded with what they were made
from, and the pool's own selector back after each; objects only."""

from __future__ import annotations

from bunancer.core.algorithms import PeakEwma
from bunancer.core.decisions import Decision
from bunancer.core.pool import ServerPool
from bunancer.core.server import Server, State
from bunancer.core.settings import BalancingSettings
from tests.helpers import FakeClock


class Request:
    """What a recorded selection is told to (an exchange, to the pool)."""

    def __init__(self) -> None:
        self.trace = b""
        self.decision: Decision | None = None


def pool_of(algorithm: str, sample: int) -> ServerPool:
    pool = ServerPool("web", BalancingSettings(algorithm=algorithm, decision_sample=sample))
    for index, state in enumerate((State.HEALTHY, State.HEALTHY, State.DEAD, State.DRAINING)):
        server = Server(f"s{index + 1}", "127.0.0.1", 9001 + index, 1 + index, "web")
        server.state = state
        pool.add(server)
    return pool


def test_one_selection_in_n_is_recorded_and_the_selector_is_the_pools_again() -> None:
    pool = pool_of("least-connections", 3)
    selector = pool.selector
    requests = [Request() for _ in range(7)]
    for request in requests:
        pool.admit(request)
        pool.begin()
        assert pool.selector is selector  # recorded or not, the pool's own after the pick
    assert len(pool.decisions) == 2  # the 3rd and the 6th
    assert [r.decision is not None for r in requests] == [False, False, True] * 2 + [False]
    assert all(r.trace == b"" for r in requests)  # none asked: none is told
    decision = pool.decisions[-1]
    assert (decision.pool, decision.algorithm, decision.arm, decision.panic) == (
        "web", "least-connections", "", False,
    )  # fmt: skip
    assert [c.server_id for c in decision.candidates] == ["s1", "s2"]
    assert decision.chosen in ("s1", "s2")
    assert decision.left_out == (("s3", "dead"), ("s4", "draining"))
    chosen = next(c for c in decision.candidates if c.server_id == decision.chosen)
    others = [c for c in decision.candidates if c.server_id != decision.chosen]
    assert all(chosen.estimate <= c.estimate for c in others)  # type: ignore[operator]


def test_no_selection_is_recorded_with_a_sample_of_zero() -> None:
    pool = pool_of("round-robin", 0)
    for _ in range(2000):
        pool.admit(Request())
        pool.begin()
    assert not pool.decisions


def test_peak_ewma_estimates_what_its_pick_weighs() -> None:
    clock = FakeClock()
    selector = PeakEwma(clock=clock)
    fast, slow = Server("a", "h", 1), Server("b", "h", 2, 2)
    selector.observe(fast, 2000)
    selector.observe(slow, 20_000)
    slow.in_flight = 3
    assert selector.estimate(fast) == 2000.0
    assert selector.estimate(slow) == 20_000.0 * 4 / 2
    assert selector.estimate(Server("c", "h", 3)) == 1.0  # no estimate yet: tried first


def test_a_recorded_decision_keeps_its_retries_and_tells_them_when_asked() -> None:
    pool = pool_of("round-robin", 1)
    request = Request()
    pool.admit(request)
    pool.begin()
    decision = request.decision
    assert decision is not None
    assert decision.retried("s1", 503, "s2", told=False) == b""
    line = decision.retried("s2", 0, "s1", told=True)
    assert line == b"X-Bunancer-Decision: retry after s2 (no answer): chosen=s1\r\n"
    assert decision.as_dict()["retries"] == [
        {"after": "s1", "status": 503, "chosen": "s2"},
        {"after": "s2", "status": None, "chosen": "s1"},
    ]
