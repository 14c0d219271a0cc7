"""The sans-I/O behaviour model: parsing, validation and decisions with a seeded RNG."""

from __future__ import annotations

import random
import statistics

import pytest

from stubs.behaviour import (
    FAIL_STATUS,
    MAX_DELAY,
    Behaviour,
    BehaviourError,
    CloseMidBody,
    Hang,
    Latency,
    Reset,
    Respond,
    SlowBody,
    parse_duration,
    parse_latency,
)


def test_default_behaviour_is_plain_and_answers_200() -> None:
    behaviour = Behaviour()
    assert behaviour.is_plain
    assert behaviour.decide(random.Random(1), "/anything") == Respond(200, 0, 0.0)
    assert behaviour.describe() == "200"


def test_status_alone_stays_plain_but_latency_or_failures_do_not() -> None:
    assert Behaviour(status=503).is_plain
    assert not Behaviour(latency=parse_latency("1ms")).is_plain
    assert not Behaviour(fail_rate=0.1).is_plain


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.3, 0.5, 1.0])
def test_fail_rate_proportion_with_a_seeded_rng(rate: float) -> None:
    behaviour = Behaviour(fail_rate=rate)
    rng = random.Random(42)
    actions = [behaviour.decide(rng, "/") for _ in range(20000)]
    failed = sum(1 for a in actions if isinstance(a, Respond) and a.failed)
    # Binomial: four standard deviations either side, and exact at 0 and 1.
    margin = 4 * (rate * (1 - rate) / 20000) ** 0.5
    assert rate - margin <= failed / 20000 <= rate + margin
    assert all(a.status == (FAIL_STATUS if a.failed else 200) for a in actions)  # type: ignore[union-attr]


def test_same_seed_same_decisions() -> None:
    behaviour = Behaviour(fail_rate=0.5, latency=parse_latency("longtail:10ms"))
    first = [behaviour.decide(random.Random(7), "/") for _ in range(3)]
    again = [behaviour.decide(random.Random(7), "/") for _ in range(3)]
    assert first == again


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("5xx", Respond),
        ("reset", Reset),
        ("hang", Hang),
        ("slow", SlowBody),
        ("close", CloseMidBody),
    ],
)
def test_each_failure_mode_gives_its_action(mode: str, kind: type) -> None:
    behaviour = Behaviour(fail_rate=1.0, mode=mode, size=100, latency=parse_latency("5ms"))  # type: ignore[arg-type]
    action = behaviour.decide(random.Random(0), "/x")
    assert isinstance(action, kind)
    if isinstance(action, Respond):
        assert (action.status, action.failed) == (FAIL_STATUS, True)
    if isinstance(action, SlowBody | CloseMidBody):
        assert (action.status, action.size, action.delay) == (200, 100, 0.005)


def test_default_health_answers_the_traffic_status() -> None:
    """`stubs set s2 --status 503` must fail the balancer's active checks too."""
    rng = random.Random(3)
    assert Behaviour().health == "auto"
    assert Behaviour(status=503).decide(rng, "/health") == Respond(503, 0, 0.0, health=True)
    assert Behaviour(status=200).decide(rng, "/health") == Respond(200, 0, 0.0, health=True)
    # Latency and injected failures are traffic noise: checks see only the status.
    noisy = Behaviour(status=201, fail_rate=1.0, mode="reset", latency=parse_latency("1s"))
    assert noisy.decide(rng, "/health") == Respond(201, 0, 0.0, health=True)


def test_pinned_health_ignores_traffic() -> None:
    rng = random.Random(3)
    assert Behaviour(status=503, health="ok").decide(rng, "/health") == Respond(
        200, 0, 0.0, health=True
    )
    broken = Behaviour(
        status=500, fail_rate=1.0, mode="reset", latency=parse_latency("1s"), health="ok"
    )
    assert broken.decide(rng, "/health") == Respond(200, 0, 0.0, health=True)
    failing = Behaviour(health="fail")
    assert failing.decide(rng, "/health") == Respond(503, 0, 0.0, health=True)
    assert failing.decide(rng, "/") == Respond(200, 0, 0.0)
    # Only the exact path is the health endpoint.
    assert failing.decide(rng, "/healthz") == Respond(200, 0, 0.0)


def test_fixed_and_uniform_latency() -> None:
    rng = random.Random(5)
    assert parse_latency("50ms").sample(rng) == 0.05
    uniform = parse_latency("20-80ms")
    samples = [uniform.sample(rng) for _ in range(10000)]
    assert min(samples) >= 0.02
    assert max(samples) <= 0.08
    assert statistics.median(samples) == pytest.approx(0.05, abs=0.003)


def test_longtail_latency_has_the_median_and_a_long_tail() -> None:
    rng = random.Random(11)
    latency = parse_latency("longtail:20ms")
    samples = sorted(latency.sample(rng) for _ in range(20000))
    assert statistics.median(samples) == pytest.approx(0.020, rel=0.05)
    p99 = samples[int(len(samples) * 0.99)]
    assert 6 * 0.020 < p99 < 15 * 0.020  # lognormal sigma 1: p99 is about 10x the median
    assert min(samples) > 0
    assert max(samples) <= MAX_DELAY


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("50ms", 0.05), ("50", 0.05), ("1.5s", 1.5), ("200us", 0.0002), (" 2 s ", 2.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", Latency("fixed", 0.0, 0.0)),
        ("50ms", Latency("fixed", 0.05, 0.05)),
        ("20-80ms", Latency("uniform", 0.02, 0.08)),
        ("20ms-1s", Latency("uniform", 0.02, 1.0)),
        ("longtail:20ms", Latency("longtail", 0.02, 0.02)),
    ],
)
def test_parse_latency_and_format_round_trip(text: str, expected: Latency) -> None:
    latency = parse_latency(text)
    assert latency == expected
    assert parse_latency(str(latency)) == latency
    assert str(latency) == text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"latency": "abc"}, "latency: expected a duration"),
        ({"latency": "80-20ms"}, "reversed"),
        ({"latency": "longtail:0"}, "median above 0"),
        ({"latency": "500s"}, "over the 300s limit"),
        ({"status": 99}, "status: expected 200-599"),
        ({"status": 600}, "status: expected 200-599"),
        ({"status": "abc"}, "status: invalid value"),
        ({"status": True}, "status: invalid value"),
        ({"fail_rate": 1.5}, "fail_rate: expected 0..1"),
        ({"fail_rate": "-0.1"}, "fail_rate: expected 0..1"),
        ({"fail_rate": "nan"}, "fail_rate: invalid value"),
        ({"mode": "boom"}, "mode: expected one of 5xx, reset, hang, slow, close"),
        ({"health": "maybe"}, "health: expected auto, ok or fail"),
        ({"size": -1}, "size: expected 0.."),
        ({"colour": "red"}, "colour: unknown setting"),
    ],
)
def test_bad_settings_name_the_setting(changes: dict[str, object], message: str) -> None:
    with pytest.raises(BehaviourError, match=message):
        Behaviour().with_changes(changes)


def test_changes_from_flag_text_and_from_json() -> None:
    behaviour = Behaviour().with_changes(
        {"status": "503", "fail_rate": "10%", "mode": "RESET", "latency": 5, "size": None}
    )
    assert behaviour == Behaviour(
        status=503, fail_rate=0.1, mode="reset", latency=parse_latency("5ms")
    )
    assert behaviour.describe() == "503 5ms 10% reset"
    assert Behaviour.from_dict(behaviour.to_dict()) == behaviour
    assert Behaviour(health="fail", size=100).describe() == "200 100B, health fail"


@pytest.mark.parametrize(
    ("behaviour", "text"),
    [
        (Behaviour(status=503), "503"),  # auto: checks agree with traffic, nothing to say
        (Behaviour(status=503, health="ok"), "503, health ok"),  # checks pass, traffic fails
        (Behaviour(status=200, health="ok"), "200"),  # pinned ok but nothing to split
        (Behaviour(status=404, health="ok"), "404"),
        (Behaviour(status=200, health="fail"), "200, health fail"),
        (Behaviour(status=503, health="fail"), "503, health fail"),
    ],
)
def test_describe_shows_health_only_when_it_splits_from_traffic(
    behaviour: Behaviour, text: str
) -> None:
    assert behaviour.describe() == text


@pytest.mark.parametrize("health", ["auto", "ok", "fail"])
def test_health_round_trips_through_json(health: str) -> None:
    behaviour = Behaviour().with_changes({"status": 503, "health": health.upper()})
    assert behaviour.health == health
    assert behaviour.to_dict()["health"] == health
    assert Behaviour.from_dict(behaviour.to_dict()) == behaviour


def test_json_without_health_means_auto() -> None:
    assert Behaviour.from_dict({"status": 503}).health == "auto"
