"""The scenarios: what each does to the balancer's backends, and who judges it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.scenarios import faults, verdicts
from bench.scenarios.faults import Run


@dataclass(frozen=True)
class Scenario:
    name: str
    shows: str
    criteria: str
    inject: Callable[[Run], None]
    judge: verdicts.Judge


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "steady",
            "the baseline: no fault; before/during/after are the thirds of the run",
            "no failures",
            faults.inject_steady,
            verdicts.judge_steady,
        ),
        Scenario(
            "kill-one",
            "SIGKILL node n2 at 1/3 of the run, start it again on the same ports at 2/3",
            "no failed idempotent request; failed POSTs only those on their way at the kill "
            "(at most one per user, within 1 s of it); every restarted stub answers within 3 s",
            faults.inject_kill_one,
            verdicts.judge_kill_one,
        ),
        Scenario(
            "errors",
            "n2 answers 503 to its traffic (its /health stays 200: passive checks only) for "
            "20 s from 1/3",
            "the stubs answered 503s; no failed idempotent request; failed POSTs at most "
            "consecutive_failures per spell n2 spent in rotation; none after",
            faults.inject_errors,
            verdicts.judge_errors,
        ),
        Scenario(
            "slow",
            "n2's latency x10 (5 ms -> 50 ms) during the middle third",
            "no failures; p99 during the fault < the slow latency",
            faults.inject_slow,
            verdicts.judge_slow,
        ),
        Scenario(
            "flapping",
            "n2's /health toggles fail/ok every 3 s during the middle third "
            "(its traffic answers stay 200)",
            "no failures; the balancer took n2 out at least once; n2 answers again within "
            "3 s after the fault",
            faults.inject_flapping,
            verdicts.judge_flapping,
        ),
        Scenario(
            "scale-up",
            "a fourth node registers at half time; during = its first 5 s",
            "no failures; it answers within 3 s; its share after >= half a fair share",
            faults.inject_scale_up,
            verdicts.judge_scale_up,
        ),
        Scenario(
            "rolling-restart",
            "from 1/4, every stub in turn: SIGTERM (deregister, drained), start again "
            "registered on its port, wait until healthy",
            "no failures; every stub restarted",
            faults.inject_rolling_restart,
            verdicts.judge_rolling_restart,
        ),
    )
}
