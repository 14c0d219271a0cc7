"""bench/timeline.py: buckets in, phases and failure timing out (no Locust, no sockets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.timeline import (
    Failure,
    Timeline,
    failure_window,
    phases,
    quantile,
    reasons,
    recovery,
)

T0 = 1_000


def bucket(second: int, requests: int, failures: int = 0, stubs: dict | None = None) -> dict:
    latencies = [1.0 + index for index in range(requests)]
    return {
        "second": second,
        "requests": requests,
        "failures": failures,
        "latencies_ms": latencies,
        "stubs": stubs or {},
        "reasons": {"HTTP 503": failures} if failures else {},
    }


def timeline(buckets: list[dict], failures: list[list] | None = None) -> Timeline:
    return Timeline.from_dict(
        {"started": T0, "stopped": None, "buckets": buckets, "failures": failures or []}
    )


def test_quantile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert quantile(values, 0.5) == 50.0
    assert quantile(values, 0.99) == 99.0
    assert quantile(values, 1.0) == 100.0
    assert quantile([7.0], 0.99) == 7.0
    assert quantile([], 0.5) is None


def test_phases_split_buckets_by_their_middle_and_take_the_median_rate() -> None:
    data = [bucket(T0 + s, 10 if s < 5 else 4) for s in range(10)]
    before, during, after = phases(timeline(data), T0 + 3, T0 + 6, start=T0, end=T0 + 10)
    assert (before.requests, during.requests, after.requests) == (30, 24, 16)
    # Whole seconds only: the first and the last bucket of the run are partial.
    assert before.rps == 10.0
    assert after.rps == 4.0
    assert during.p99_ms == 10.0
    assert (before.start, after.end) == (T0, T0 + 10)


def test_share_of_answers_by_stub() -> None:
    seen = {"s1": [3, T0 + 0.1, T0 + 0.9], "s2": [1, T0 + 0.5, T0 + 0.5]}
    (only,) = [p for p in phases(timeline([bucket(T0, 4, stubs=seen)]), T0, T0 + 1) if p.requests]
    assert only.share(["s2"]) == 0.25
    assert only.share(["s9"]) == 0.0


def test_first_answer_after_a_time() -> None:
    data = [
        bucket(T0, 2, stubs={"s1": [2, T0 + 0.2, T0 + 0.4]}),
        bucket(T0 + 3, 1, stubs={"s1": [1, T0 + 3.25, T0 + 3.25]}),
    ]
    line = timeline(data)
    assert line.first_answer(["s1"], T0 + 1) == T0 + 3.25
    assert line.first_answer(["s1"], T0) == T0 + 0.2
    assert line.first_answer(["s2"], T0) is None


def test_failure_window_recovery_and_reasons() -> None:
    failures = [
        Failure(T0 + 20.1, "GET small", "ConnectionResetError"),
        Failure(T0 + 20.4, "POST 4KiB", "HTTP 502"),
        Failure(T0 + 21.5, "POST 4KiB", "HTTP 502"),
    ]
    assert failure_window(failures) == pytest.approx(1.4)
    assert recovery(failures, T0 + 20.0) == pytest.approx(1.5)
    assert recovery(failures, T0 + 30.0) == 0.0
    assert failure_window([]) == 0.0
    assert next(iter(reasons(failures))) == "POST 4KiB: HTTP 502"


def test_load_reads_what_the_locustfile_writes(tmp_path: Path) -> None:
    path = tmp_path / "timeline.json"
    path.write_text(
        json.dumps(
            {
                "started": T0,
                "stopped": T0 + 2,
                "user_rps": 10,
                "buckets": [bucket(T0 + 1, 3, 1), bucket(T0, 2)],
                "failures": [[T0 + 1.5, "GET small", "HTTP 503"]],
            }
        )
    )
    line = Timeline.load(path)
    assert [b.second for b in line.buckets] == [T0, T0 + 1]
    assert (line.requests, line.failure_count) == (5, 1)
    assert line.failures[0].reason == "HTTP 503"
