"""What open dashboard tabs cost the data plane: throughput with N live tabs vs none.

    python -m bench.dashboard_tabs                 # 10 tabs, 5 runs x 5 s, 64 connections
    python -m bench.dashboard_tabs --tabs 20 --runs 7 --duration 10
    python -m bench.dashboard_tabs --servers 500   # and 500 more servers registered meanwhile
    python -m bench.dashboard_tabs --servers 500 --workers 1   # the same, data plane apart

Starts two stub backends and `bunancer serve` on 127.0.0.1 (one process, as in
bench.throughput), then alternates wrk runs without tabs and with N tabs open, the order
rotating between runs. A "tab" is what a browser tab costs the balancer: it loads the
overview page, then holds `GET /events` open and reads every frame (the summary pulse once a
second, server events), as the page's EventSource does. Tabs are plain sockets read by
threads of this process, not Chromium: a browser on the same 2 cores would take CPU from the
balancer and measure the browser instead.

With `--servers N`, the loaded condition also has N more servers registered through the API
(a pool of their own, at ports where nothing listens: checked, never routed), removed again
before the next quiet run: the per-second summary the tabs receive walks every server, and
their checks share the loop too (the isolation figure of the workers issue).

Prints medians of requests/s, p99 and the balancer's CPU µs per request with and without
the load, the ratios (target: tabs cost under 5% of requests/s; with servers, p99 within
10%), and the SSE frames each tab received per second, so a run where the tabs were not
really live shows. Every process is stopped by its recorded
process group; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from rich.table import Table

from bench.harness import HOST, Supervisor, http_status, wait_log_line
from bench.throughput import (
    Endpoint,
    Sample,
    console,
    measure,
    raise_on_sigterm,
    rotated,
    start_bunancer,
    start_stub_backend,
    warm_up,
)
from bunancer.client import ApiClient

CONDITIONS = ("none", "tabs")
EXTRA_POOL = "many"  # where --servers registers its servers
EXIT_USAGE = 2


def fail(message: str) -> NoReturn:
    console.print(f"[red]bench.dashboard_tabs: {message}[/]")
    sys.exit(EXIT_USAGE)


@dataclass
class Tab:
    """One open dashboard: the overview page once, then `/events` read until closed."""

    port: int
    frames: int = 0
    page_status: int | None = None
    error: str | None = None
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = field(default=None, repr=False)

    def open(self) -> None:
        self.page_status = http_status(self.port)
        sock = socket.create_connection((HOST, self.port), timeout=5)
        sock.sendall(
            b"GET /events HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\n\r\n" % (HOST.encode(), self.port)
        )
        sock.settimeout(None)
        self._sock = sock
        self._thread = threading.Thread(target=self._read, name="tab", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._sock is not None
        tail = b""  # a frame's blank line may be split across two reads
        try:
            while chunk := self._sock.recv(65536):
                data = tail + chunk
                self.frames += data.count(b"\n\n")  # frames end with a blank line
                tail = data[-1:]
        except OSError as error:
            if self._sock.fileno() != -1:  # not closed by us
                self.error = str(error)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(5)


@dataclass
class Run:
    condition: str
    sample: Sample
    frames_per_tab_second: float | None = None


def register_servers(api: ApiClient, count: int) -> None:
    """`count` servers in a pool of their own, at ports where nothing listens."""
    api.request("POST", "/api/pools", {"name": EXTRA_POOL})
    for index in range(count):
        api.register(EXTRA_POOL, HOST, 20000 + index)


def measure_runs(
    proxy: Endpoint, dashboard_port: int, api: ApiClient, args: argparse.Namespace
) -> list[Run]:
    runs: list[Run] = []
    for index in range(args.runs):
        for condition in rotated(list(CONDITIONS), index):
            tabs: list[Tab] = []
            try:
                if condition == "tabs" and args.servers:
                    register_servers(api, args.servers)
                if condition == "tabs":
                    for _ in range(args.tabs):
                        tabs.append(Tab(dashboard_port))
                        tabs[-1].open()
                if tabs and not all(tab.page_status == 200 for tab in tabs):
                    fail(f"the overview page did not load: {[t.page_status for t in tabs]}")
                started = time.monotonic()
                frames_before = sum(tab.frames for tab in tabs)
                sample = measure(proxy, index, "keepalive", args)
                elapsed = time.monotonic() - started
                frames = sum(tab.frames for tab in tabs) - frames_before
            finally:
                for tab in tabs:
                    tab.close()
                if condition == "tabs" and args.servers:
                    api.request("DELETE", f"/api/pools/{EXTRA_POOL}")
            errors = [tab.error for tab in tabs if tab.error]
            if errors:
                fail(f"a tab's event stream broke: {errors[0]}")
            rate = frames / len(tabs) / elapsed if tabs else None
            runs.append(Run(condition, sample, rate))
            shown = f", {rate:.1f} frames/s per tab" if rate is not None else ""
            console.print(
                f"run {index + 1} {condition:>4}: {sample.rps:,.0f} req/s, p99 "
                f"{sample.p99_ms:.2f} ms, {sample.cpu_us_per_request or 0:.1f} µs CPU/req{shown}"
            )
    return runs


def median_of(runs: list[Run], condition: str, value: str) -> float:
    values = [getattr(r.sample, value) for r in runs if r.condition == condition]
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else float("nan")


def report(runs: list[Run], args: argparse.Namespace) -> None:
    rps = {c: median_of(runs, c, "rps") for c in CONDITIONS}
    p99 = {c: median_of(runs, c, "p99_ms") for c in CONDITIONS}
    cpu = {c: median_of(runs, c, "cpu_us_per_request") for c in CONDITIONS}
    frames = statistics.median(r.frames_per_tab_second or 0 for r in runs if r.condition == "tabs")
    errors = {c: sum(r.sample.errors for r in runs if r.condition == c) for c in CONDITIONS}
    table = Table(
        title=f"medians of {args.runs} runs x {args.duration:g} s, {args.connections} "
        "connections, keep-alive"
    )
    for column in ("tabs open", "more servers", "req/s", "p99 ms", "CPU µs/req", "wrk errors"):
        table.add_column(column, justify="right")
    for condition, tabs, servers in (("none", 0, 0), ("tabs", args.tabs, args.servers)):
        table.add_row(
            str(tabs), str(servers), f"{rps[condition]:,.0f}", f"{p99[condition]:.2f}",
            f"{cpu[condition]:.1f}", str(errors[condition]),
        )  # fmt: skip
    console.print(table)
    ratio = rps["tabs"] / rps["none"]
    verdict = "under" if ratio > 0.95 else "NOT under"
    change = f"{abs(1 - ratio) * 100:.1f}% {'lower' if ratio <= 1 else 'higher'}"
    console.print(
        f"with {args.tabs} tabs: {ratio:.3f}x the requests/s of none ({change}; {verdict} the "
        f"5% target), CPU per request {cpu['tabs'] / cpu['none']:.3f}x, p99 "
        f"{p99['tabs'] / p99['none']:.3f}x (target with servers: within 10%); "
        f"each tab received {frames:.1f} SSE frames/s"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dashboard_tabs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tabs", type=int, default=10, help="dashboard tabs open (10)")
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs (5)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (5)")
    parser.add_argument("--connections", type=int, default=64, help="wrk -c (64)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unrecorded seconds (2)")
    parser.add_argument(
        "--servers", type=int, default=0, help="more servers registered with the tabs (0)"
    )
    parser.add_argument(
        "--workers", type=int, choices=[0, 1, 2], default=0, help="bunancer serve --workers (0)"
    )
    args = parser.parse_args(argv)
    if args.tabs < 1 or args.runs < 1 or args.duration <= 0:
        parser.error("--tabs, --runs and --duration must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        fail("wrk is not on PATH; install it with: apt-get install wrk")
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    with tempfile.TemporaryDirectory(prefix="bunancer-tabs-") as tmp:
        supervisor = Supervisor(Path(tmp))
        try:
            backends = [start_stub_backend(supervisor, f"b{i}", 100) for i in (1, 2)]
            name = f"bunancer-w{args.workers}" if args.workers else "bunancer"
            proxy = start_bunancer(supervisor, backends, name)
            ready = wait_log_line(proxy.child, r"ready: dashboard listening on [\d.]+:(\d+)")
            dashboard_port = int(ready.group(1))
            api_ready = wait_log_line(proxy.child, r"ready: api listening on [\d.]+:(\d+)")
            token = (Path(tmp) / f"{name}-state" / "token").read_text().strip()
            api = ApiClient(f"http://{HOST}:{api_ready.group(1)}", token, timeout=30.0)
            warm_up({"bunancer": proxy}, args.warmup, args.connections)
            report(measure_runs(proxy, dashboard_port, api, args), args)
        except KeyboardInterrupt:
            console.print("interrupted")
            sys.exit(130)
        finally:
            supervisor.stop_all()


if __name__ == "__main__":
    main()
