"""Every scenario judge on made-up runs: ones that must PASS and ones that must FAIL.

A run is a per-second timeline (requests, latencies, which stub answered, failures with
their time and request name), the fault's window, the focus node's state changes and the
fault's notes; no Locust, no sockets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from bench.scenarios.verdicts import (
    Check,
    Evidence,
    Settings,
    Transition,
    judge_errors,
    judge_flapping,
    judge_kill_one,
    judge_rolling_restart,
    judge_scale_up,
    judge_slow,
    judge_steady,
)
from bench.timeline import Timeline, phases

T0 = 1_000_000
SECONDS = 30
WINDOW = (T0 + 10.0, T0 + 20.0)


@dataclass
class Made:
    """A made-up run: what answered each second, and what failed when."""

    rps: int = 30
    stubs: tuple[str, ...] = ("s1", "s2", "s3")
    latency_ms: float = 5.0
    # (second offset, stub ids answering then): replaces `stubs` in those seconds
    answering: dict[int, tuple[str, ...]] = field(default_factory=dict)
    slow: dict[int, int] = field(default_factory=dict)  # second -> answers at 50 ms
    failures: list[tuple[float, str]] = field(default_factory=list)  # (offset, request name)
    transitions: list[tuple[float, str]] = field(default_factory=list)  # (offset, state)
    notes: dict[str, Any] = field(default_factory=dict)
    focus: list[str] = field(default_factory=lambda: ["s2"])
    users: int = 20
    nodes: int = 3

    def timeline(self) -> Timeline:
        buckets = []
        for offset in range(SECONDS):
            stubs = self.answering.get(offset, self.stubs)
            failed = [f for f in self.failures if int(f[0]) == offset]
            slow = self.slow.get(offset, 0)
            latencies = [self.latency_ms] * (self.rps - slow) + [50.0] * slow
            answered = self.rps - len(failed)
            seen = {}
            for index, stub in enumerate(stubs):
                count = answered // len(stubs) + (1 if index < answered % len(stubs) else 0)
                if count:
                    at = T0 + offset + 0.5
                    seen[stub] = [count, at - 0.4, at + 0.4]
            buckets.append(
                {
                    "second": T0 + offset,
                    "requests": self.rps,
                    "failures": len(failed),
                    "latencies_ms": latencies,
                    "stubs": seen,
                    "reasons": {"HTTP 502": len(failed)} if failed else {},
                }
            )
        failures = [[T0 + at, name, "HTTP 502"] for at, name in self.failures]
        return Timeline.from_dict(
            {"started": T0, "stopped": T0 + SECONDS, "buckets": buckets, "failures": failures}
        )

    def evidence(self) -> Evidence:
        timeline = self.timeline()
        cut = phases(timeline, *WINDOW, start=T0, end=T0 + SECONDS)
        return Evidence(
            timeline=timeline,
            phases={p.name: p for p in cut},
            window=WINDOW,
            focus=self.focus,
            transitions=[
                Transition(T0 + at, "default", self.focus[0], state, "")
                for at, state in self.transitions
            ],
            notes=self.notes,
            nodes=self.nodes,
            users=self.users,
            settings=Settings(consecutive_failures=5),
        )


def verdict(checks: list[Check]) -> str:
    return "PASS" if checks and all(c.ok for c in checks) else "FAIL"


def failed(checks: list[Check]) -> list[str]:
    return [c.name for c in checks if not c.ok]


# -- steady ------------------------------------------------------------------------------------


def test_steady_passes_without_failures_and_fails_with_one() -> None:
    assert verdict(judge_steady(Made().evidence())) == "PASS"
    assert verdict(judge_steady(Made(failures=[(3.2, "GET small")]).evidence())) == "FAIL"
    assert verdict(judge_steady(Made(rps=0).evidence())) == "FAIL"  # nothing served


# -- kill-one ------------------------------------------------------------------------------------

KILLED = dict.fromkeys(range(10, 20), ("s1", "s3"))  # s2 is down during the window
RESTARTED = {"restarted_at": T0 + 20.0}


def test_kill_one_passes_when_only_posts_on_their_way_failed() -> None:
    made = Made(answering=KILLED, notes=RESTARTED, failures=[(10.1, "POST 4KiB")] * 3)
    assert verdict(judge_kill_one(made.evidence())) == "PASS"


@pytest.mark.parametrize(
    ("failures", "what"),
    [
        ([(10.1, "GET small")], "no failed idempotent request"),
        ([(10.2, "GET 64KiB")], "no failed idempotent request"),
        ([(14.0, "POST 4KiB")], "failed POSTs"),  # long after the kill: not in flight
        ([(10.1, "POST 4KiB")] * 21, "failed POSTs"),  # more than one per user
    ],
)
def test_kill_one_fails_on_what_retries_should_have_hidden(
    failures: list[tuple[float, str]], what: str
) -> None:
    made = Made(answering=KILLED, notes=RESTARTED, failures=failures)
    checks = judge_kill_one(made.evidence())
    assert verdict(checks) == "FAIL"
    assert any(name.startswith(what) for name in failed(checks)), failed(checks)


def test_kill_one_fails_when_the_restarted_node_is_not_used_again() -> None:
    late = {**KILLED, **dict.fromkeys(range(20, 24), ("s1", "s3"))}  # back 4 s after restart
    never = {**KILLED, **dict.fromkeys(range(20, SECONDS), ("s1", "s3"))}
    for answering in (late, never):
        checks = judge_kill_one(Made(answering=answering, notes=RESTARTED).evidence())
        assert failed(checks) == ["every restarted stub answers within 3 s"]


# -- errors -----------------------------------------------------------------------------------

ANSWERED = {"stub_503s": 40}


def test_errors_passes_with_posts_bounded_by_ejections() -> None:
    once = Made(notes=ANSWERED, failures=[(10.2, "POST 4KiB")] * 5)
    assert verdict(judge_errors(once.evidence())) == "PASS"
    # Readmitted twice during the fault (passive ejection expired, checks pass): 3 spells.
    thrice = Made(
        notes=ANSWERED,
        failures=[(10.2, "POST 4KiB")] * 15,
        transitions=[
            (10.3, "unhealthy"),
            (12.5, "healthy"),
            (12.9, "unhealthy"),
            (16.0, "healthy"),
        ],
    )
    assert verdict(judge_errors(thrice.evidence())) == "PASS"


@pytest.mark.parametrize(
    ("made", "what"),
    [
        (Made(notes=ANSWERED, failures=[(11.0, "GET small")]), "no failed idempotent request"),
        (Made(notes=ANSWERED, failures=[(10.2, "POST 4KiB")] * 6), "failed POSTs"),
        (Made(notes=ANSWERED, failures=[(25.0, "POST 4KiB")]), "no failures after the fault"),
        (Made(notes={"stub_503s": 0}), "the stubs answered 503s"),  # the fault never happened
    ],
)
def test_errors_fails(made: Made, what: str) -> None:
    checks = judge_errors(made.evidence())
    assert verdict(checks) == "FAIL"
    assert any(name.startswith(what) for name in failed(checks)), failed(checks)


# -- slow ----------------------------------------------------------------------------------------

SLOW = {"slow_ms": 50.0}


def test_slow_passes_when_fewer_than_one_in_a_hundred_answers_are_slow() -> None:
    few = dict.fromkeys(range(10, 20), 0) | {15: 1}  # 1 of 300 answers during the fault
    assert verdict(judge_slow(Made(notes=SLOW, slow=few).evidence())) == "PASS"


def test_slow_fails_when_the_slow_node_keeps_its_share() -> None:
    # Round-robin: a third of the answers take 50 ms, so p99 is the slow latency.
    third = dict.fromkeys(range(10, 20), 10)
    checks = judge_slow(Made(notes=SLOW, slow=third).evidence())
    assert failed(checks) == ["p99 during the fault < the slow node's latency (50 ms)"]
    two_percent = dict.fromkeys(range(10, 20), 1)  # 10 of 300: still over 1%
    assert verdict(judge_slow(Made(notes=SLOW, slow=two_percent).evidence())) == "FAIL"


# -- flapping ----------------------------------------------------------------------------------


def test_flapping_passes_when_the_node_was_taken_out_and_comes_back() -> None:
    made = Made(
        transitions=[(11.0, "unhealthy"), (12.5, "healthy"), (14.0, "unhealthy"), (20.3, "healthy")]
    )
    assert verdict(judge_flapping(made.evidence())) == "PASS"


def test_flapping_fails_when_checks_never_took_it_out_or_it_never_returned() -> None:
    never_out = judge_flapping(Made().evidence())
    assert failed(never_out) == ["the balancer took the node out at least once"]
    gone = Made(
        transitions=[(11.0, "unhealthy")],
        answering=dict.fromkeys(range(11, SECONDS), ("s1", "s3")),
    )
    assert failed(judge_flapping(gone.evidence())) == [
        "the node answers again after the fault within 3 s"
    ]


# -- scale-up --------------------------------------------------------------------------------------

JOINED = {"joined_at": T0 + 15.0}
FOUR = ("s1", "s2", "s3", "s4")


def test_scale_up_passes_when_the_newcomer_answers_at_once_and_takes_its_share() -> None:
    made = Made(
        focus=["s4"],
        nodes=4,
        notes=JOINED,
        answering=dict.fromkeys(range(15), ("s1", "s2", "s3")) | dict.fromkeys(range(15, 30), FOUR),
        stubs=FOUR,
    )
    assert verdict(judge_scale_up(made.evidence())) == "PASS"


def test_scale_up_fails_when_the_newcomer_is_ignored() -> None:
    made = Made(focus=["s4"], nodes=4, notes=JOINED)  # s4 never answers
    checks = judge_scale_up(made.evidence())
    assert failed(checks) == [
        "every new stub answers within 3 s",
        "new node's share after >= half a fair share (12.5%)",
    ]


# -- rolling-restart ------------------------------------------------------------------------------


def test_rolling_restart_needs_every_pid_new_and_no_failure() -> None:
    new = {"pids_before": {"s1": 1, "s2": 2}, "pids_after": {"s1": 3, "s2": 4}}
    assert verdict(judge_rolling_restart(Made(notes=new).evidence())) == "PASS"
    same = {"pids_before": {"s1": 1, "s2": 2}, "pids_after": {"s1": 3, "s2": 2}}
    assert verdict(judge_rolling_restart(Made(notes=same).evidence())) == "FAIL"
    failing = Made(notes=new, failures=[(12.0, "GET small")])
    assert failed(judge_rolling_restart(failing.evidence())) == ["no client-visible failures"]
    assert verdict(judge_rolling_restart(Made(notes={}).evidence())) == "FAIL"  # none restarted
