"""Per-second request timelines of a Locust run, cut into phases around a fault.

bench/locustfile.py records every request into one-second buckets (requests, failures with
their exact times and reasons, latencies, the stub that answered) and writes them as JSON.
This module reads them back and answers the questions a failure scenario asks: how many
requests failed and over how long a window, requests/s and p99 before, during and after
the fault, and which stubs answered when. Sans-I/O: data in, numbers out.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StubSeen:
    """How often one stub answered within a bucket, and when first and last (wall clock)."""

    count: int
    first: float
    last: float


@dataclass(frozen=True)
class Bucket:
    second: int  # wall-clock second the requests completed in
    requests: int
    failures: int
    latencies_ms: list[float]
    stubs: dict[str, StubSeen]
    reasons: dict[str, int]


@dataclass(frozen=True)
class Failure:
    at: float
    name: str
    reason: str


@dataclass
class Timeline:
    started: float | None
    stopped: float | None
    buckets: list[Bucket] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Timeline:
        buckets = [
            Bucket(
                second=int(b["second"]),
                requests=int(b["requests"]),
                failures=int(b["failures"]),
                latencies_ms=[float(x) for x in b["latencies_ms"]],
                stubs={
                    k: StubSeen(int(v[0]), float(v[1]), float(v[2])) for k, v in b["stubs"].items()
                },
                reasons={k: int(v) for k, v in b["reasons"].items()},
            )
            for b in data["buckets"]
        ]
        failures = [
            Failure(float(at), str(name), str(reason)) for at, name, reason in data["failures"]
        ]
        return cls(
            data.get("started"),
            data.get("stopped"),
            sorted(buckets, key=lambda b: b.second),
            failures,
        )

    @classmethod
    def load(cls, path: Path) -> Timeline:
        return cls.from_dict(json.loads(path.read_text()))

    @property
    def requests(self) -> int:
        return sum(b.requests for b in self.buckets)

    @property
    def failure_count(self) -> int:
        return sum(b.failures for b in self.buckets)

    def full_buckets(self) -> list[Bucket]:
        """Buckets of whole seconds under load: the first and last second are partial."""
        return self.buckets[1:-1]

    def first_answer(self, stubs: Iterable[str], after: float) -> float | None:
        """When one of `stubs` first answered at or after `after` (wall clock), if ever.

        Exact when none of them answered in the second before `after` (a stub that was
        down, or new); otherwise the last answer of that second bounds it from above."""
        wanted = set(stubs)
        for bucket in self.buckets:
            if bucket.second + 1 < after:
                continue
            times = [
                seen.first if seen.first >= after else seen.last
                for stub, seen in bucket.stubs.items()
                if stub in wanted and seen.last >= after
            ]
            if times:
                return min(times)
        return None


@dataclass(frozen=True)
class Phase:
    """Requests that completed in [start, end), by whole buckets (a bucket's middle decides)."""

    name: str
    start: float
    end: float
    requests: int
    failures: int
    rps: float | None  # median of the phase's whole seconds
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    stubs: dict[str, int]

    def share(self, stubs: Iterable[str]) -> float | None:
        """The part of this phase's answers that came from `stubs` (None without answers)."""
        total = sum(self.stubs.values())
        if not total:
            return None
        return sum(self.stubs.get(stub, 0) for stub in stubs) / total

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "start": self.start,
            "end": self.end,
            "requests": self.requests,
            "failures": self.failures,
            "rps": self.rps,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "stubs": self.stubs,
        }


def quantile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank quantile of already sorted values; None when there are none."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), math.ceil(q * len(sorted_values))))
    return sorted_values[rank - 1]


def phase(timeline: Timeline, name: str, start: float, end: float) -> Phase:
    whole = {b.second for b in timeline.full_buckets()}
    inside = [b for b in timeline.buckets if start <= b.second + 0.5 < end]
    latencies = sorted(x for b in inside for x in b.latencies_ms)
    per_second = [b.requests for b in inside if b.second in whole]
    stubs: dict[str, int] = {}
    for bucket in inside:
        for stub, seen in bucket.stubs.items():
            stubs[stub] = stubs.get(stub, 0) + seen.count
    return Phase(
        name=name,
        start=start,
        end=end,
        requests=sum(b.requests for b in inside),
        failures=sum(b.failures for b in inside),
        rps=float(statistics.median(per_second)) if per_second else None,
        p50_ms=quantile(latencies, 0.50),
        p90_ms=quantile(latencies, 0.90),
        p99_ms=quantile(latencies, 0.99),
        stubs=dict(sorted(stubs.items())),
    )


def phases(
    timeline: Timeline,
    fault_start: float,
    fault_end: float,
    start: float | None = None,
    end: float | None = None,
) -> list[Phase]:
    """before / during / after the fault; the run spans [start, end), by default from the
    first to the last completed request."""
    if not timeline.buckets:
        return []
    first = float(timeline.buckets[0].second) if start is None else start
    last = float(timeline.buckets[-1].second + 1) if end is None else end
    return [
        phase(timeline, "before", first, fault_start),
        phase(timeline, "during", fault_start, fault_end),
        phase(timeline, "after", fault_end, last),
    ]


def failure_window(failures: list[Failure]) -> float:
    """Seconds from the first failed request to the last (0 with none or one)."""
    if not failures:
        return 0.0
    times = [f.at for f in failures]
    return max(times) - min(times)


def recovery(failures: list[Failure], fault_start: float) -> float:
    """Seconds from the fault to the last failure it caused (0 when clients saw none)."""
    after = [f.at for f in failures if f.at >= fault_start]
    return max(after) - fault_start if after else 0.0


def reasons(failures: list[Failure]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for failure in failures:
        key = f"{failure.name}: {failure.reason}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))
