"""The lab's fault rules as the data plane holds them (core/faults.py): which requests a
rule matches, the share it hits with given dice, the delay it draws, and what a pool pays
per request with and without rules. Bytes only."""

from __future__ import annotations

from bunancer.core.faults import ABORT, DELAY, RESET, FaultRule, PoolFaults
from bunancer.core.headers import RequestHead
from bunancer.core.pool import ServerPool
from bunancer.core.settings import BalancingSettings

HEADERS = [(b"Host", b"shop"), (b"X-Chaos", b"1")]


def test_a_rule_matches_its_path_prefix_and_header() -> None:
    rule = FaultRule("f1", ABORT, 100.0, header=b"x-chaos", path_prefix=b"/api/")
    assert rule.matches(b"/api/orders?id=1", b"shop", HEADERS)
    assert not rule.matches(b"/static/app.js", b"shop", HEADERS)
    assert not rule.matches(b"/api/orders", b"shop", [(b"Host", b"shop")])
    assert FaultRule("f2", RESET, 100.0).matches(b"/anything", None, [])


def test_a_rule_for_a_host_matches_it_without_port_or_case_and_its_subdomains() -> None:
    # (the Host as the head has it: the header's value, or an absolute target's authority)
    exact = FaultRule("f1", ABORT, 100.0, host=b"shop.example")
    assert exact.matches(b"/", b"Shop.Example:8080", [])
    assert not exact.matches(b"/", b"api.shop.example", [])
    assert not exact.matches(b"/", None, [])  # no Host at all
    wild = FaultRule("f2", ABORT, 100.0, host=b"*.shop.example")
    assert wild.matches(b"/", b"api.shop.example", [])
    assert not wild.matches(b"/", b"shop.example", [])


def test_the_dice_decide_the_share_and_the_first_rule_that_hits_wins() -> None:
    draws = iter([0.30, 0.29, 0.10, 0.99, 0.60])
    slow = FaultRule("f1", DELAY, 30.0, 0.1, 0.1)
    fail = FaultRule("f2", ABORT, 50.0, status=500)
    faults = PoolFaults((slow, fail), draw=lambda: next(draws))
    assert faults.pick(b"/", None, []) is fail  # 30 is not under 30%; 29 is under 50%
    assert faults.pick(b"/", None, []) is slow  # 10 is under 30%
    assert faults.pick(b"/", None, []) is None  # 99 and 60: neither
    never = PoolFaults((FaultRule("f3", ABORT, 100.0, path_prefix=b"/x"),), draw=lambda: 0.0)
    assert never.pick(b"/y", None, []) is None  # not matched: no dice thrown


def test_a_delay_is_drawn_between_its_bounds() -> None:
    rule = FaultRule("f1", DELAY, 100.0, delay_min=0.2, delay_max=0.5)
    assert rule.delay_for(0.0) == 0.2
    assert abs(rule.delay_for(0.5) - 0.35) < 1e-9
    assert FaultRule("f2", DELAY, 100.0, 0.3, 0.3).delay_for(0.9) == 0.3


class Request:
    """What `prepare` fills in (an exchange, to the pool)."""

    def __init__(self) -> None:
        self.pool: ServerPool | None = None
        self.key: bytes | None = None
        self.fault: FaultRule | None = None


def prepared(pool: ServerPool, client_ip: str = "10.0.0.1") -> Request:
    request = Request()
    pool.prepare(request, client_ip, b"/", [], RequestHead())
    return request


def test_a_pool_prepares_requests_only_while_it_has_a_key_or_rules() -> None:
    pool = ServerPool("p", BalancingSettings(algorithm="round-robin"))
    assert not pool.per_request  # the request path skips `prepare` altogether
    rule = FaultRule("f1", ABORT, 100.0)
    pool.set_faults(PoolFaults((rule,), draw=lambda: 0.0))
    assert pool.per_request
    request = prepared(pool)
    assert (request.pool, request.key, request.fault) == (pool, None, rule)
    pool.configure(BalancingSettings(algorithm="hash", hash_key="client_ip"))
    request = prepared(pool)
    assert (request.key, request.fault) == (b"10.0.0.1", rule)  # rules outlive a change
    pool.set_faults(None)
    assert pool.per_request  # the hash key still needs it
    pool.configure(BalancingSettings(algorithm="round-robin"))
    assert not pool.per_request
