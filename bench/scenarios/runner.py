"""Running scenarios: Locust as a subprocess, the fault schedule beside it, the verdict.

Loads: `light` is the historical 20 users x 10 req/s; `heavy` is at least a quarter of what
this machine's whole rig (Locust, the balancer and its stubs, sharing its cores) serves
flat out, measured first with an unpaced run (or given with --capacity). `--control` runs
the balancer with its protection off (setup.UNPROTECTED); `--matrix` runs every scenario at
both loads, protected and as a control, and prints the table bench/README.md carries.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.harness import Child, command_output, machine_info
from bench.scenarios.catalog import SCENARIOS, Scenario
from bench.scenarios.faults import LocustGone, Run
from bench.scenarios.report import (
    console,
    list_scenarios,
    matrix_markdown,
    overview_table,
    print_summary,
    summarise,
)
from bench.scenarios.setup import (
    Monitor,
    Setup,
    SetupError,
    attach,
    is_loopback_url,
    start_own,
    tear_down,
)
from bench.timeline import Timeline
from bunancer.client import ApiError, BalancerUnreachable
from stubs.sdk import StubError

LOCUSTFILE = Path(__file__).resolve().parent.parent / "locustfile.py"
RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
LOCUST_START_TIMEOUT = 30.0
EXIT_FAIL, EXIT_SETUP = 1, 2
HEAVY_SHARE = 0.3  # of the measured capacity: "at least a quarter", with some margin
CAPACITY_SECONDS = 12


@dataclass
class Options:
    duration: int = 60
    users: int = 20
    rate: float = 10.0  # per user; 0: unpaced
    host: str | None = None
    api: str | None = None
    state_dir: str = ".bunancer"
    nodes: int = 3
    latency: str = "5ms"
    results_dir: Path = RESULTS_DIR
    protected: bool = True  # False: a control run (setup.UNPROTECTED)
    load_name: str = "light"


def start_locust(setup: Setup, options: Options, results: Path) -> tuple[Child, Path]:
    timeline = results / "timeline.json"
    argv = [
        *(sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"),
        *("--users", str(options.users), "--spawn-rate", str(options.users)),
        *("--run-time", f"{options.duration}s", "--host", setup.host),
        *("--csv", str(results / "locust"), "--html", str(results / "report.html")),
        *("--only-summary", "--loglevel", "WARNING"),
    ]
    env = {"BENCH_TIMELINE": str(timeline), "BENCH_USER_RPS": f"{options.rate:g}"}
    return setup.supervisor.start("locust", argv, env), timeline


def wait_started(child: Child, marker: Path) -> float:
    deadline = time.monotonic() + LOCUST_START_TIMEOUT
    while not marker.exists():
        if not child.running() or time.monotonic() > deadline:
            raise SetupError(f"locust did not start:\n{child.log_tail()}")
        time.sleep(0.02)
    return float(marker.read_text())


def run_scenario(scenario: Scenario, options: Options) -> dict[str, Any]:
    """Set up, load, inject, judge, tear down; the summary (also in summary.json)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    control = "" if options.protected else "-control"
    results = options.results_dir / f"{scenario.name}-{options.load_name}{control}-{stamp}"
    results.mkdir(parents=True, exist_ok=False)
    console.print(f"[bold]{scenario.name}[/]: {scenario.shows}")
    with tempfile.TemporaryDirectory(prefix="bunancer-scn-") as tmp:
        setup: Setup | None = None
        try:
            setup = (
                attach(options, results) if options.host else start_own(options, results, Path(tmp))
            )
            nodes = ", ".join(f"{n.name}=({', '.join(n.ids)})" for n in setup.nodes)
            console.print(f"  balancer {setup.host}, api {setup.api.base_url}, nodes {nodes}")
            settings = setup.settings()
            monitor = Monitor(setup)
            monitor.start()
            try:
                locust, timeline_path = start_locust(setup, options, results)
                t0 = wait_started(locust, timeline_path.with_name(timeline_path.name + ".start"))
                run = Run(setup, float(options.duration), locust, t0)
                try:
                    scenario.inject(run)
                except LocustGone as error:  # before the fault schedule was done
                    run.notes["cut_short"] = str(error)
                with contextlib.suppress(LocustGone):  # Locust stops on its own at the end
                    run.at(options.duration)
                locust.popen.wait(timeout=60)
            finally:
                monitor.stop()
            if not timeline_path.exists():
                raise SetupError(f"locust wrote no timeline:\n{locust.log_tail()}")
            timeline = Timeline.load(timeline_path)
            summary = summarise(scenario, run, timeline, monitor, settings, options, results)
        finally:
            if setup is not None:
                tear_down(setup)
            if setup is not None and setup.own and (Path(tmp) / "stubs").exists():
                # Keep the stubs' output next to the report (access logs are bulky: not those).
                for out in (Path(tmp) / "stubs" / "stubs").glob("*.out"):
                    shutil.copy(out, results / f"stub-{out.name}")
    (results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary)
    return summary


def measure_capacity(options: Options) -> float:
    """Requests/s the rig serves flat out (unpaced users, no fault): the median second."""
    probe = replace(options, duration=CAPACITY_SECONDS, rate=0.0, load_name="capacity")
    console.print(f"[bold]capacity[/]: {probe.users} unpaced users for {probe.duration} s")
    summary = run_scenario(SCENARIOS["steady"], probe)
    if not summary["rps_median"]:
        raise SetupError("the capacity run served nothing")
    return float(summary["rps_median"])


def heavy(options: Options, capacity: float) -> Options:
    """The same users, each paced so that together they ask HEAVY_SHARE of `capacity`."""
    rate = math.ceil(capacity * HEAVY_SHARE / options.users)
    return replace(options, rate=float(rate), load_name="heavy")


# -- command line ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[list[str], Options, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scenarios",
        description="Failure scenarios under a Locust load, with a PASS/FAIL verdict.",
    )
    parser.add_argument("scenario", nargs="?", help=f"{', '.join(SCENARIOS)} or all")
    parser.add_argument("--list", action="store_true", help="the scenarios and their criteria")
    parser.add_argument("--duration", type=int, default=60, help="seconds of load (default 60)")
    parser.add_argument("--users", type=int, default=20, help="Locust users (default 20)")
    parser.add_argument("--rate", type=float, default=10.0, help="requests/s per user (10)")
    parser.add_argument(
        "--load",
        choices=("light", "heavy"),
        default="light",
        help="light: --users x --rate; heavy: at least a quarter of the measured capacity",
    )
    parser.add_argument("--capacity", type=float, help="heavy: this req/s instead of measuring")
    parser.add_argument(
        "--control", action="store_true", help="the balancer's protection off (must FAIL)"
    )
    parser.add_argument(
        "--matrix",
        action="store_true",
        help="every named scenario at both loads, protected and as a control; a Markdown table",
    )
    parser.add_argument("--host", help="a running balancer's URL (default: start one)")
    parser.add_argument("--api", help="its API (default: the one its stubs registered with)")
    parser.add_argument(
        "--state-dir",
        default=os.environ.get("BUNANCER_STATE_DIR", ".bunancer"),
        help="with --host: where its stubs' pid files are (default ./.bunancer)",
    )
    parser.add_argument("--nodes", type=int, default=3, help="own setup: nodes (default 3)")
    parser.add_argument("--latency", default="5ms", help="own setup: stubs' base latency")
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help="default bench/results"
    )
    args = parser.parse_args(argv)
    if args.list:
        return [], Options(), args
    if args.scenario is None:
        parser.error("name a scenario (or --list)")
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}, all")
    if args.duration < 3 or args.users < 1 or args.rate <= 0 or args.nodes < 2:
        parser.error("--duration >= 3, --users >= 1, --rate > 0 and --nodes >= 2")
    for flag, url in (("--host", args.host), ("--api", args.api)):
        if url and not is_loopback_url(url):
            parser.error(f"{flag} must be an http://127.0.0.1:PORT URL (traffic stays on loopback)")
    if args.host and (args.control or args.matrix):
        parser.error("--control and --matrix need the runner's own balancer (no --host)")
    options = Options(
        duration=args.duration,
        users=args.users,
        rate=args.rate,
        host=args.host,
        api=args.api,
        state_dir=args.state_dir,
        nodes=args.nodes,
        latency=args.latency,
        results_dir=args.results_dir,
        protected=not args.control,
    )
    return names, options, args


def raise_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def plans(names: list[str], options: Options, args: argparse.Namespace) -> list[Options]:
    """The option sets to run every named scenario with."""
    loads = ["light", "heavy"] if args.matrix else [args.load]
    capacity = args.capacity
    if "heavy" in loads and capacity is None:
        capacity = measure_capacity(options)
    planned = []
    for load in loads:
        base = heavy(options, capacity) if load == "heavy" and capacity else options
        for protected in (True, False) if args.matrix else (options.protected,):
            planned.append(replace(base, protected=protected))
    if capacity:
        console.print(
            f"capacity {capacity:,.0f} req/s; heavy load {heavy(options, capacity).rate:g} "
            f"req/s x {options.users} users"
        )
    return planned


def main(argv: list[str] | None = None) -> int:
    names, options, args = parse_args(argv)
    if not names:
        list_scenarios(SCENARIOS)
        return 0
    if command_output([sys.executable, "-m", "locust", "--version"]) is None:
        console.print("[red]bench.scenarios: locust is not installed: pip install -e '.[bench]'[/]")
        return EXIT_SETUP
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    summaries = []
    try:
        planned = plans(names, options, args)
        for plan in planned:
            for name in names:
                summaries.append(run_scenario(SCENARIOS[name], plan))
    except (SetupError, StubError, BalancerUnreachable, ApiError) as error:
        console.print(f"[red]could not run: {error}[/]")
        return EXIT_SETUP
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    if len(summaries) > 1:
        console.print(overview_table(summaries))
        path = options.results_dir / f"scenarios-{stamp}.json"
        report = {"machine": machine_info(), "summaries": summaries}
        path.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"all summaries: {path}")
    if args.matrix:
        table = matrix_markdown(summaries)
        (options.results_dir / f"scenarios-matrix-{stamp}.md").write_text(table)
        print(table)
        # The matrix is a report: a control run that fails is what it should do.
        protected = [s for s in summaries if s["protected"]]
        return 0 if all(s["verdict"] == "PASS" for s in protected) else EXIT_FAIL
    return 0 if all(s["verdict"] == "PASS" for s in summaries) else EXIT_FAIL
