"""Selection algorithms with seeded randomness and a fake clock."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable

import pytest

from bunancer.core.algorithms import (
    ALGORITHM_NAMES,
    LeastConnections,
    MaglevHash,
    PeakEwma,
    PowerOfTwoChoices,
    Random,
    RoundRobin,
    Sticky,
    WeightedRoundRobin,
    make_selector,
    sticky_token,
)
from bunancer.core.server import Server


def servers(count: int, weights: list[int] | None = None) -> tuple[Server, ...]:
    weights = weights or [1] * count
    return tuple(Server(f"s{i}", "127.0.0.1", 9000 + i, weights[i]) for i in range(count))


def chi_square(counts: Counter[Server], expected: dict[Server, float]) -> float:
    return sum((counts[s] - e) ** 2 / e for s, e in expected.items())


# Critical values of chi-square at p = 0.001 (a fair selector fails 1 run in 1000).
CHI2_999 = {2: 13.8, 3: 16.3, 4: 18.5, 9: 27.9}


def test_round_robin_cycles_and_survives_shrinking() -> None:
    selector = RoundRobin()
    pool = servers(3)
    assert [selector.pick(pool) for _ in range(6)] == [*pool, *pool]
    selector.update(pool[:1])
    assert selector.pick(pool[:1]) is pool[0]
    assert selector.pick(()) is None


@pytest.mark.parametrize("name", ["random", "p2c", "peak-ewma", "hash"])
def test_fair_distribution_chi_square(name: str) -> None:
    pool = servers(5)
    selector = make_selector(name, rng=random.Random(7))
    selector.update(pool)
    rng = random.Random(11)
    picks = Counter(
        selector.pick(pool, b"key-%d" % rng.getrandbits(48) if selector.needs_key else None)
        for _ in range(20_000)
    )
    expected = dict.fromkeys(pool, 20000 / 5)
    assert chi_square(picks, expected) < CHI2_999[4], picks


@pytest.mark.parametrize("name", ["weighted-round-robin", "random", "hash"])
def test_weight_proportions(name: str) -> None:
    pool = servers(3, [5, 3, 2])
    selector = make_selector(name, rng=random.Random(3))
    selector.update(pool)
    rng = random.Random(5)
    total = 30_000
    picks = Counter(
        selector.pick(pool, b"k%d" % rng.getrandbits(48) if selector.needs_key else None)
        for _ in range(total)
    )
    for server, share in zip(pool, (0.5, 0.3, 0.2), strict=True):
        assert abs(picks[server] / total - share) < 0.02, (name, picks)


def test_weighted_round_robin_is_smooth() -> None:
    a, b, c = pool = servers(3, [5, 1, 1])
    selector = WeightedRoundRobin()
    selector.update(pool)
    order = [selector.pick(pool) for _ in range(7)]
    assert order == [a, a, b, a, c, a, a]
    # Any 7 consecutive picks hold each server in proportion, and the heavy one never
    # gets its whole share in one burst (a naive order would be a,a,a,a,a,b,c).
    sequence = [selector.pick(pool) for _ in range(700)]
    for start in range(len(sequence) - 7):
        window = Counter(sequence[start : start + 7])
        assert (window[a], window[b], window[c]) == (5, 1, 1)
    longest = max(len(list(run)) for _, run in itertools.groupby(sequence))
    assert longest < 5


def test_least_connections_weighted() -> None:
    a, b, c = pool = servers(3, [1, 1, 2])
    selector = LeastConnections()
    selector.update(pool)
    for server, load in ((a, 3), (b, 1), (c, 3)):
        server.in_flight = load
        selector.started(server)
    # loads per weight: a 4/1, b 2/1, c 4/2 -> b or c (tie at 2)
    assert selector.pick(pool) in (b, c)
    b.in_flight = 5
    selector.started(b)
    assert selector.pick(pool) is c
    c.in_flight = 20
    selector.finished(c)
    assert selector.pick(pool) is a
    selector.update(pool[:2])
    assert selector.pick(pool[:2]) is a


def test_p2c_avoids_the_loaded_server() -> None:
    pool = servers(3)
    pool[0].in_flight = 50
    selector = PowerOfTwoChoices(rng=random.Random(1))
    picks = Counter(selector.pick(pool) for _ in range(3000))
    assert picks[pool[0]] == 0  # it is always the worse of any pair it is in


def test_peak_ewma_shuns_slow_server_then_retries_it() -> None:
    now = [0.0]
    pool = servers(3)
    slow = pool[0]
    selector = PeakEwma(rng=random.Random(2), clock=lambda: now[0], decay=10.0)
    for server in pool:
        selector.observe(server, 1000 if server is not slow else 10_000)
    picks = Counter(selector.pick(pool) for _ in range(3000))
    assert picks[slow] == 0
    # The fast ones keep answering quickly; the slow one gets no traffic, so no samples:
    # its estimate decays with time until it is tried again.
    for _ in range(60):
        now[0] += 1.0
        for server in pool[1:]:
            selector.observe(server, 1000)
    picks = Counter(selector.pick(pool) for _ in range(3000))
    assert picks[slow] > 0


def sequential_shares(
    selector: PeakEwma, pool: tuple[Server, ...], now: list[float], answer: Callable[..., int]
) -> Counter[Server]:
    """300 requests one after another, 10 ms apart (a `curl` loop): who answered each."""
    picks: Counter[Server] = Counter()
    for n in range(300):
        now[0] += 0.01
        server = selector.pick(pool)
        assert server is not None
        picks[server] += 1
        selector.observe(server, answer(server, n))
    return picks


def test_peak_ewma_spreads_identical_servers_after_one_slow_first_answer() -> None:
    """A first answer that took twice as long (a connect, a cold cache) must not leave a
    server without traffic while the others answer alike: its estimate decays within
    about a second, and costs within TIE of each other are a random pick."""
    now = [0.0]
    pool = servers(3)
    rng = random.Random(5)
    selector = PeakEwma(rng=random.Random(2), clock=lambda: now[0])

    def answer(server: Server, n: int) -> int:
        if server is pool[0] and n == 0:
            return 1000
        return int(500 * rng.uniform(0.9, 1.1))

    selector.observe(pool[0], 1000)  # its first answer, before the loop
    picks = sequential_shares(selector, pool, now, answer)
    assert all(picks[server] >= 60 for server in pool), picks  # a fifth at least each


def test_peak_ewma_tries_a_healthy_server_again_within_seconds_of_one_spike() -> None:
    now = [0.0]
    pool = servers(10)
    rng = random.Random(7)
    selector = PeakEwma(rng=random.Random(3), clock=lambda: now[0])
    for server in pool:
        selector.observe(server, 500)
    selector.observe(pool[0], 6000)  # one slow answer (12x)
    spiked_at = now[0]
    while True:  # 30 requests a second, each answered in ~500 µs
        now[0] += 1 / 30
        server = selector.pick(pool)
        assert server is not None
        if server is pool[0]:
            break
        selector.observe(server, int(500 * rng.uniform(0.9, 1.1)))
        assert now[0] - spiked_at < 6.0, "a healthy server shunned for 6 s after one spike"


def test_maglev_moves_about_one_nth_of_keys() -> None:
    pool = servers(10)
    before, after = MaglevHash(), MaglevHash()
    before.update(pool)
    after.update(pool[:9])  # s9 leaves
    keys = [b"client-%d" % i for i in range(20_000)]
    moved = sum(
        1
        for k in keys
        if before.pick(pool, k) is not after.pick(pool[:9], k)
        and before.pick(pool, k) is not pool[9]
    )
    # Only keys of the server that left should move; Maglev moves a little more.
    assert moved / len(keys) < 0.03
    grew = MaglevHash()
    grew.update((*pool, Server("s10", "127.0.0.1", 9010)))
    changed = sum(1 for k in keys if before.pick(pool, k) is not grew.pick(pool, k))
    assert 0.05 < changed / len(keys) < 0.15  # about 1/11 of the keys go to the new one
    # and the table depends on the set, not on its order
    shuffled = MaglevHash()
    shuffled.update(tuple(reversed(pool)))
    assert all(before.pick(pool, k) is shuffled.pick(pool, k) for k in keys[:500])


def test_sticky_follows_cookie_and_falls_back() -> None:
    pool = servers(3)
    selector = Sticky(fallback="round-robin")
    selector.update(pool)
    token = sticky_token(pool[2]).encode()
    assert all(selector.pick(pool, token) is pool[2] for _ in range(10))
    assert selector.knows(token)
    assert not selector.knows(b"nonsense")
    assert selector.pick(pool, b"nonsense") is pool[0]  # fallback takes over
    selector.update(pool[:2])  # the sticky server is gone
    assert selector.pick(pool[:2], token) in pool[:2]
    with pytest.raises(ValueError, match="fallback"):
        Sticky(fallback="hash")


def test_random_weighted_zero_servers() -> None:
    selector = Random(rng=random.Random(1))
    selector.update(())
    assert selector.pick(()) is None


def test_every_algorithm_builds_and_picks() -> None:
    pool = servers(4)
    for name in ALGORITHM_NAMES:
        selector = make_selector(name)
        selector.update(pool)
        assert selector.pick(pool, b"k") in pool
    with pytest.raises(ValueError, match="unknown algorithm"):
        make_selector("nope")
