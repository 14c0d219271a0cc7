"""How an algorithm spreads load over identical servers: shares and starvation.

    python -m bench.spread [--algorithm peak-ewma] [--seconds 30]

Starts identical stubs and one bunancer on 127.0.0.1, and measures three things:

- sequential: 300 requests one after another, each on a new connection (as `curl` in a
  loop does), over three stubs: each stub's share (a third is even).
- steady: 30 requests/s for `--seconds`, a new connection each, over three stubs: each
  stub's share and its longest time without a request.
- heavy: `wrk -c64` for `--seconds` over ten stubs (when wrk is installed): each stub's
  share and its longest time without a request, from `/api/stats` read every 0.25 s.

A long time without a request on an identical, healthy stub is starvation: its estimate
stays high because nothing sends it a request that would lower it.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import HOST, Supervisor, free_port, start_python, wait_http_ok

SEQUENTIAL = 300
STEADY_RATE = 30.0
POLL = 0.25


@dataclass
class Setup:
    supervisor: Supervisor
    port: int
    api_port: int
    stubs: list[str]


def start(supervisor: Supervisor, name: str, stubs: int, algorithm: str) -> Setup:
    ports = [free_port() for _ in range(stubs)]
    ids = [f"{name}{i + 1}" for i in range(stubs)]
    for port, stub_id in zip(ports, ids, strict=True):
        argv = ["-m", "stubs.server", "--port", str(port), "--id", stub_id]
        start_python(supervisor, stub_id, argv, "PORT")
    port, api_port = free_port(), free_port()
    servers = ", ".join(
        f'{{ address = "{HOST}:{p}", id = "{i}" }}' for p, i in zip(ports, ids, strict=True)
    )
    config = supervisor.workdir / f"{name}.toml"
    config.write_text(
        f'[[listeners]]\naddress = "{HOST}:{port}"\n'
        f'[api]\nlisten = "{HOST}:{api_port}"\n[dashboard]\nenabled = false\n'
        f'[pools.default]\nalgorithm = "{algorithm}"\nservers = [{servers}]\n'
    )
    state = supervisor.workdir / f"{name}-state"
    serve = ["-m", "bunancer", "serve", "--config", str(config), "--state-dir", str(state)]
    proxy = start_python(supervisor, f"{name}-bunancer", serve, "ready: proxy listening")
    wait_http_ok(proxy, port)
    return Setup(supervisor, port, api_port, ids)


def one_request(port: int) -> str:
    """GET / on a new connection; the id of the stub that answered."""
    connection = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        return response.getheader("X-Stub-Id") or f"status {response.status}"
    finally:
        connection.close()


def shares(counts: Counter[str], ids: list[str]) -> dict[str, float]:
    total = sum(counts.values()) or 1
    return {stub: round(counts[stub] / total, 3) for stub in ids}


def longest_gaps(times: dict[str, list[float]], ids: list[str], start: float, end: float):
    """Each stub's longest stretch without a request, from `start` to `end` (seconds)."""
    gaps = {}
    for stub in ids:
        moments = [start, *sorted(times.get(stub, [])), end]
        gaps[stub] = round(max(b - a for a, b in itertools.pairwise(moments)), 2)
    return gaps


def sequential(setup: Setup) -> dict[str, object]:
    took: dict[str, list[float]] = {}
    for _ in range(SEQUENTIAL):
        began = time.perf_counter()
        stub = one_request(setup.port)
        took.setdefault(stub, []).append(time.perf_counter() - began)
    counts = Counter({stub: len(times) for stub, times in took.items()})
    return {
        "requests": SEQUENTIAL,
        "shares": shares(counts, setup.stubs),
        # as a client sees it (a new connection each): do the stubs really differ?
        "median_ms": {
            stub: round(statistics.median(took[stub]) * 1000, 2) if stub in took else None
            for stub in setup.stubs
        },
    }


def steady(setup: Setup, seconds: float) -> dict[str, object]:
    times: dict[str, list[float]] = {}
    began = time.monotonic()
    sent = 0
    while time.monotonic() - began < seconds:
        stub = one_request(setup.port)
        times.setdefault(stub, []).append(time.monotonic() - began)
        sent += 1
        pause = began + sent / STEADY_RATE - time.monotonic()  # paced, not a burst
        if pause > 0:
            time.sleep(pause)
    counts = Counter({stub: len(moments) for stub, moments in times.items()})
    return {
        "requests": sent,
        "shares": shares(counts, setup.stubs),
        "longest_gap_s": longest_gaps(times, setup.stubs, 0.0, seconds),
    }


def server_stats(api_port: int) -> dict[str, dict[str, Any]]:
    """Each server's figures in /api/stats (the balancer's own view of them)."""
    connection = http.client.HTTPConnection(HOST, api_port, timeout=5)
    try:
        connection.request("GET", "/api/stats")
        stats = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    return stats["pools"]["default"]["servers"]  # type: ignore[no-any-return]


def served(api_port: int) -> dict[str, int]:
    return {stub: int(data["requests"]) for stub, data in server_stats(api_port).items()}


def heavy(setup: Setup, seconds: float) -> dict[str, object]:
    """wrk for `seconds`; the moments each stub's request count went up, polled."""
    before = served(setup.api_port)
    wrk = subprocess.Popen(
        ["wrk", "-t1", "-c64", f"-d{seconds:g}s", f"http://{HOST}:{setup.port}/"],
        stdout=subprocess.PIPE,
        text=True,
    )
    began = time.monotonic()
    last = dict(before)
    times: dict[str, list[float]] = {}
    while wrk.poll() is None:
        time.sleep(POLL)
        now = served(setup.api_port)
        at = time.monotonic() - began
        for stub, count in now.items():
            if count > last.get(stub, 0):
                times.setdefault(stub, []).append(at)
        last = now
    output = wrk.communicate()[0]
    rate = next((line.split()[1] for line in output.splitlines() if "Requests/sec" in line), "?")
    counts = Counter({stub: last[stub] - before.get(stub, 0) for stub in setup.stubs})
    return {
        "requests_per_s": rate,
        "shares": shares(counts, setup.stubs),
        "longest_gap_s": longest_gaps(times, setup.stubs, 0.0, seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithm", default="peak-ewma")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    args = parser.parse_args()
    results: dict[str, object] = {"algorithm": args.algorithm}
    with tempfile.TemporaryDirectory(prefix="bunancer-spread-") as tmp:
        supervisor = Supervisor(Path(tmp))
        try:
            three = start(supervisor, "s", 3, args.algorithm)
            results["sequential"] = sequential(three)
            results["steady"] = steady(three, args.seconds)
            if shutil.which("wrk"):
                results["heavy"] = heavy(start(supervisor, "h", 10, args.algorithm), args.seconds)
            else:
                print("heavy: skipped (wrk is not installed)", file=sys.stderr)
        finally:
            supervisor.stop_all()
    if args.json:
        print(json.dumps(results))
        return
    for name, value in results.items():
        print(f"{name:10} {value}")


if __name__ == "__main__":
    main()
