"""Locust users for bunancer: a realistic request mix, and a per-second request recorder.

    locust -f bench/locustfile.py --host http://127.0.0.1:8080     # the web UI on :8089
    python -m bench.scenarios kill-one                               # headless, with faults

Each user (Locust's FastHttpUser) keeps a steady pace of ``BENCH_USER_RPS`` requests per
second (default 10; 0: as fast as it can, to measure capacity), drawn from this mix:

    60%  GET /items/<n>          a small body (a stub's id line)
    20%  GET /large/<n>          64 KiB when the balancer routes /large/ to stubs started with
                                 ``--size 65536`` (the scenario runner's balancer does). Each
                                 user asks once at start: where the answer is smaller (a plain
                                 ``bunancer serve`` with default stubs), the task is named
                                 "GET /large/ (small body: no 64 KiB pool)", not "GET 64KiB"
    20%  POST /orders            a 4 KiB request body (not idempotent: never retried by
                                 bunancer once its body went out)

With ``BENCH_TIMELINE=<file>`` (the scenario runner sets it) every request is also counted
into one-second buckets by completion time: requests, failures (each with its exact time
and reason), latencies, and the stub that answered (``X-Stub-Id``). The buckets are written
to that file as JSON when the test stops, and ``<file>.start`` is written when it starts;
bench/timeline.py reads them. Only the standard library and Locust are imported here, so
Locust can load this file from any working directory.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant, constant_throughput, events, task

USER_RPS = float(os.environ.get("BENCH_USER_RPS", "10"))
LARGE_PREFIX = os.environ.get("BENCH_LARGE_PREFIX", "/large/")
POST_BODY = b"o" * 4096
LARGE_SIZE = 65536
PROBE = "probe /large/"
ITEMS = 1000  # distinct paths per kind, so access logs and hash routing see some variety


class BalancerUser(FastHttpUser):
    """One client: small GETs, 64 KiB GETs and 4 KiB POSTs at a constant pace."""

    wait_time = constant_throughput(USER_RPS) if USER_RPS > 0 else constant(0)
    # A hung upstream shows as a failure after this long, not as a stuck user.
    network_timeout = 10.0
    connection_timeout = 5.0

    large_name = "GET 64KiB"

    def on_start(self) -> None:
        # Name the large task after what this balancer answers on its path (see above).
        with self.client.get(f"{LARGE_PREFIX}0", name=PROBE, catch_response=True) as probe:
            if len(probe.content or b"") < LARGE_SIZE:
                self.large_name = "GET /large/ (small body: no 64 KiB pool)"
            probe.success()  # a probe, not a measured request of the mix
        # Start at a random point of the pace period: users spawned together would otherwise
        # stay in step and send their requests in bursts (a spawn rate of N/s puts 10 of 20
        # users on the same 100 ms beat), which no set of independent clients does.
        if USER_RPS > 0:
            time.sleep(random.uniform(0.0, 1.0 / USER_RPS))  # gevent-patched: yields

    @task(6)
    def get_small(self) -> None:
        self.client.get(f"/items/{random.randrange(ITEMS)}", name="GET small")

    @task(2)
    def get_large(self) -> None:
        self.client.get(f"{LARGE_PREFIX}{random.randrange(ITEMS)}", name=self.large_name)

    @task(2)
    def post_4k(self) -> None:
        self.client.post(
            "/orders",
            data=POST_BODY,
            name="POST 4KiB",
            headers={"Content-Type": "application/octet-stream"},
        )


class Recorder:
    """Every request into one-second buckets, written as JSON when the test stops."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started: float | None = None
        self.stopped: float | None = None
        # second -> [requests, failures, latencies (ms), {stub: [count, first, last]},
        #            {reason: count}]
        self.buckets: dict[int, list[Any]] = {}
        self.failures: list[tuple[float, str, str]] = []  # (time, request name, reason)

    def on_request(
        self,
        request_type: str,
        name: str,
        response_time: float,
        response_length: int,
        response: Any = None,
        exception: BaseException | None = None,
        start_time: float | None = None,
        **_: Any,
    ) -> None:
        if name == PROBE:
            return  # each user's one look at /large/, not part of the measured mix
        ended = (start_time if start_time is not None else time.time()) + response_time / 1000
        bucket = self.buckets.get(int(ended))
        if bucket is None:
            bucket = self.buckets[int(ended)] = [0, 0, [], {}, {}]
        bucket[0] += 1
        bucket[2].append(round(response_time, 2))
        if exception is not None:
            reason = failure_reason(response, exception)
            bucket[1] += 1
            bucket[4][reason] = bucket[4].get(reason, 0) + 1
            self.failures.append((round(ended, 4), name, reason))
        stub = stub_id(response)
        if stub is not None:
            seen = bucket[3].get(stub)
            if seen is None:
                bucket[3][stub] = [1, round(ended, 4), round(ended, 4)]
            else:
                seen[0] += 1
                seen[2] = round(ended, 4)

    def on_test_start(self, **_: Any) -> None:
        self.started = time.time()
        write_atomically(self.path.with_name(self.path.name + ".start"), str(self.started))

    def on_test_stop(self, **_: Any) -> None:
        if self.stopped is None:
            self.stopped = time.time()
        self.write()

    def write(self) -> None:
        data = {
            "started": self.started,
            "stopped": self.stopped,
            "user_rps": USER_RPS,
            "buckets": [
                {
                    "second": second,
                    "requests": b[0],
                    "failures": b[1],
                    "latencies_ms": b[2],
                    "stubs": b[3],
                    "reasons": b[4],
                }
                for second, b in sorted(self.buckets.items())
            ],
            "failures": [list(failure) for failure in self.failures],
        }
        write_atomically(self.path, json.dumps(data))


def stub_id(response: Any) -> str | None:
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    value = headers.get("X-Stub-Id")
    return str(value) if value else None


def failure_reason(response: Any, exception: BaseException) -> str:
    status = getattr(response, "status_code", 0) or 0
    return f"HTTP {status}" if status else type(exception).__name__


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


if os.environ.get("BENCH_TIMELINE"):
    recorder = Recorder(Path(os.environ["BENCH_TIMELINE"]))
    events.request.add_listener(recorder.on_request)
    events.test_start.add_listener(recorder.on_test_start)
    events.test_stop.add_listener(recorder.on_test_stop)
    events.quitting.add_listener(recorder.on_test_stop)
