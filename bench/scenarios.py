"""Failure scenarios under a Locust load: faults injected on a schedule, and a verdict.

    python -m bench.scenarios kill-one                    # 60 s, 20 users, own balancer + stubs
    python -m bench.scenarios errors --duration 30 --users 10
    python -m bench.scenarios all                         # every scenario in turn, one table
    python -m bench.scenarios slow --host http://127.0.0.1:8080   # a running balancer
    python -m bench.scenarios --list                      # scenarios and their criteria

Without ``--host`` the runner starts its own balancer on 127.0.0.1 (short health-check
intervals, pools ``default`` and ``large``, ``/large/`` routed to ``large``) and three
*nodes*: each node is one stub in ``default`` (small bodies) and one in ``large`` (64 KiB
bodies), all registered through the API with a base latency (``--latency``, 5 ms). A fault
hits every stub of a node, as if one machine serving both went wrong. With ``--host`` it
uses the balancer there and the registered stubs of ``--state-dir`` (``bunancer stubs
start --count 3 --register``), grouped into nodes by pool; ``--api`` defaults to the API
the stubs registered with.

Locust runs headless as a subprocess (bench/locustfile.py: each user sends ``--rate``
requests/s of small GETs, 64 KiB GETs and 4 KiB POSTs) and records every request into
per-second buckets; meanwhile this process injects the scenario's faults through the stubs
SDK on a schedule relative to the start of the load (the second node, ``n2``, is the
victim) and polls the API for server states. Locust's CSV and HTML report, the timeline,
the balancer's config and logs and ``summary.json`` go to
``bench/results/<scenario>-<time>/``. The summary: requests, failures, the failure window,
requests/s (median of whole seconds) and p99 before/during/after the fault, the victim's
share of answers, and PASS/FAIL against the scenario's criteria (``--list``). Exit code 0
when every scenario passed, 1 when one failed, 2 when a run could not be set up.

Every process started here is stopped by its recorded PID (process group for the balancer
and Locust, the SDK's pid files for stubs); all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.table import Table

from bench.throughput import (
    Child,
    Supervisor,
    command_output,
    machine_info,
    wait_log_line,
)
from bench.timeline import Phase, Timeline, failure_window, phases, reasons, recovery
from bunancer.client import ApiClient, ApiError, BalancerUnreachable, find_token
from stubs.behaviour import Behaviour
from stubs.sdk import Stub, StubError, StubManager

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
LARGE_SIZE = 64 * 1024
SETUP_TIMEOUT = 20.0  # balancer and stubs up, servers healthy
HEALTHY_TIMEOUT = 15.0  # a restarted or new stub admitted by the balancer
LOCUST_START_TIMEOUT = 30.0
MONITOR_INTERVAL = 0.25  # API polls for server states
MAX_TRANSITIONS_SHOWN = 12
EXIT_FAIL, EXIT_SETUP = 1, 2

console = Console(highlight=False, width=None if sys.stdout.isatty() else 110)


class SetupError(Exception):
    """The run could not be set up (balancer, stubs or Locust); one line for the user."""


# -- the balancer and its stubs ----------------------------------------------------------


@dataclass
class Node:
    """One machine's worth of stubs: one per pool (a fault hits all of them)."""

    name: str
    members: list[Stub]

    @property
    def ids(self) -> list[str]:
        return [stub.id for stub in self.members]


def balancer_config() -> str:
    """The runner's own balancer: ephemeral ports, quick checks, /large/ to 64 KiB stubs."""
    health = "interval = 0.5\nfast_interval = 0.2\ndown_interval = 0.3\nmax_down_interval = 1.0\n"
    return (
        '[[listeners]]\naddress = "127.0.0.1:0"\n'
        '[api]\nlisten = "127.0.0.1:0"\n[dashboard]\nlisten = "127.0.0.1:0"\n\n'
        f"[pools.default]\nservers = []\n[pools.default.health]\n{health}\n"
        f"[pools.large]\nservers = []\n[pools.large.health]\n{health}\n"
        '[[routes]]\npath_prefix = "/large/"\npool = "large"\n'
    )


@dataclass
class Setup:
    """Where the load goes and the stubs the faults hit."""

    host: str
    api: ApiClient
    token: str | None
    manager: StubManager
    nodes: list[Node]
    own: bool  # the balancer and every stub were started by this run
    supervisor: Supervisor
    started: list[str] = field(default_factory=list)  # ids of stubs this run started

    def start_stub(self, pool: str, behaviour: Behaviour, port: int | None = None) -> Stub:
        (stub,) = self.manager.start(
            1,
            port=port,
            behaviour=behaviour,
            register=True,
            pool=pool,
            api=self.api.base_url,
            token=self.token,
        )
        self.started.append(stub.id)
        return stub

    def states(self) -> dict[tuple[str, str], tuple[str, str, int]]:
        """(pool, id) -> (state, reason, port) of every server the balancer knows."""
        found = {}
        for pool in self.api.pools():
            for server in pool["servers"]:
                found[(pool["name"], server["id"])] = (
                    server["state"],
                    server.get("reason", ""),
                    int(server["port"]),
                )
        return found

    def wait_healthy(self, stubs: list[Stub], timeout: float = HEALTHY_TIMEOUT) -> float:
        """Poll the API until every stub is a healthy server; the seconds it took."""
        began = time.monotonic()
        deadline = began + timeout
        while True:
            states = self.states()
            if all(self._is_healthy(states, stub) for stub in stubs):
                return time.monotonic() - began
            if time.monotonic() >= deadline:
                names = ", ".join(
                    f"{s.id}: {states.get((s.pool or 'default', s.id), ('absent',))[0]}"
                    for s in stubs
                )
                raise SetupError(f"not healthy within {timeout:g}s ({names})")
            time.sleep(0.05)

    @staticmethod
    def _is_healthy(states: dict[tuple[str, str], tuple[str, str, int]], stub: Stub) -> bool:
        state, _reason, port = states.get((stub.pool or "default", stub.id), ("absent", "", 0))
        return state == "healthy" and port == stub.port


def start_own(options: Options, results: Path, workdir: Path) -> Setup:
    supervisor = Supervisor(results)
    config = results / "bunancer.toml"
    config.write_text(balancer_config())
    state = workdir / "balancer"
    argv = [sys.executable, "-m", "bunancer", "serve", "--config", str(config)]
    child = supervisor.start("bunancer", [*argv, "--state-dir", str(state)])
    setup = Setup(
        host="",
        api=ApiClient("http://127.0.0.1:1"),
        token=None,
        manager=StubManager(workdir / "stubs"),
        nodes=[],
        own=True,
        supervisor=supervisor,
    )
    try:
        proxy = wait_log_line(child, r"ready: proxy listening on 127\.0\.0\.1:(\d+)")
        api = wait_log_line(child, r"ready: api listening on 127\.0\.0\.1:(\d+)")
    except RuntimeError as error:
        supervisor.stop_all()
        raise SetupError(str(error)) from None
    try:
        fill_own(setup, options, proxy.group(1), api.group(1), state)
    except BaseException:
        tear_down(setup)
        raise
    return setup


def fill_own(setup: Setup, options: Options, proxy_port: str, api_port: str, state: Path) -> None:
    """Start the nodes' stubs, registered in the balancer, and wait until all are healthy."""
    setup.host = f"http://127.0.0.1:{proxy_port}"
    setup.api = ApiClient(f"http://127.0.0.1:{api_port}")
    setup.token = (state / "token").read_text().strip()
    base = Behaviour().with_changes({"latency": options.latency})
    columns = []
    for pool, behaviour in (("default", base), ("large", base.with_changes({"size": LARGE_SIZE}))):
        column = setup.manager.start(
            options.nodes,
            behaviour=behaviour,
            register=True,
            pool=pool,
            api=setup.api.base_url,
            token=setup.token,
        )
        setup.started += [stub.id for stub in column]
        columns.append(column)
    setup.nodes = [
        Node(f"n{index + 1}", list(members))
        for index, members in enumerate(zip(*columns, strict=True))
    ]
    setup.wait_healthy([stub for node in setup.nodes for stub in node.members], SETUP_TIMEOUT)


def attach(options: Options, results: Path) -> Setup:
    """A running balancer at --host and the registered stubs of --state-dir."""
    manager = StubManager(options.state_dir)
    stubs = [stub for stub in manager.list() if stub.pool]
    by_pool: dict[str, list[Stub]] = {}
    for stub in stubs:
        by_pool.setdefault(stub.pool or "default", []).append(stub)
    count = min((len(column) for column in by_pool.values()), default=0)
    if count < 2:
        raise SetupError(
            f"need at least two registered stubs per pool in {manager.directory}; start them "
            "with: bunancer stubs start --count 3 --register"
        )
    api_url = options.api or stubs[0].api or "http://127.0.0.1:8081"
    if not is_loopback_url(api_url):
        raise SetupError(f"the stubs registered with {api_url}: not a loopback API")
    token = find_token(state_dir=options.state_dir)
    columns = [by_pool[pool][:count] for pool in sorted(by_pool)]
    nodes = [
        Node(f"n{index + 1}", list(members))
        for index, members in enumerate(zip(*columns, strict=True))
    ]
    setup = Setup(
        host=options.host.rstrip("/"),
        api=ApiClient(api_url, token),
        token=token,
        manager=manager,
        nodes=nodes,
        own=False,
        supervisor=Supervisor(results),
    )
    try:
        setup.wait_healthy([stub for node in nodes for stub in node.members], 5.0)
    except (BalancerUnreachable, ApiError) as error:
        raise SetupError(str(error)) from None
    return setup


def tear_down(setup: Setup) -> None:
    """Stop what this run started: its stubs (own mode: all; they deregister), the balancer."""
    running = {stub.id for stub in setup.manager.list()}
    mine = [stub_id for stub_id in dict.fromkeys(setup.started) if stub_id in running]
    if setup.own:
        with contextlib.suppress(StubError):
            setup.manager.stop_all(timeout=10.0)
    else:
        # Stubs it added (scale-up) go; restarted ones replace the user's and stay.
        replaced = {stub.id for node in setup.nodes for stub in node.members}
        for stub_id in mine:
            if stub_id not in replaced:
                with contextlib.suppress(StubError):
                    setup.manager.stop(stub_id, timeout=10.0)
    setup.supervisor.stop_all()


# -- watching the balancer ----------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    at: float
    pool: str
    server: str
    state: str
    reason: str


class Monitor:
    """Polls the API in a thread and keeps every change of a server's state."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.transitions: list[Transition] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        last: dict[tuple[str, str], str] = {}
        while not self._stop.is_set():
            try:
                states = self.setup.states()
            except (BalancerUnreachable, ApiError, OSError, ValueError):
                # Unknown is not "every server removed": skip this poll.
                self._stop.wait(MONITOR_INTERVAL)
                continue
            now = time.time()
            for key, (state, reason, _port) in states.items():
                if last.get(key) != state:
                    self.transitions.append(Transition(now, *key, state, reason))
                    last[key] = state
            for key in set(last) - set(states):
                self.transitions.append(Transition(now, *key, "removed", ""))
                del last[key]
            self._stop.wait(MONITOR_INTERVAL)

    def left_healthy(self, pool_ids: set[tuple[str, str]], start: float, end: float) -> int:
        """Times one of these servers turned from healthy to something else in [start, end)."""
        return sum(
            1
            for t in self.transitions
            if (t.pool, t.server) in pool_ids
            and start <= t.at < end
            and t.state in ("unhealthy", "dead", "draining", "removed")
        )


# -- one run: the schedule and the faults ----------------------------------------------------


class LocustGone(Exception):
    pass


@dataclass
class Run:
    """The schedule of one scenario run; fault actions record what they did and when."""

    setup: Setup
    duration: float
    locust: Child
    t0: float  # wall clock when the load started
    events: list[dict[str, Any]] = field(default_factory=list)
    window: tuple[float, float] | None = None  # the fault, wall clock
    focus: Node | None = None  # the node the summary follows (victim or newcomer)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def victim(self) -> Node:
        return self.setup.nodes[1]

    def at(self, offset: float) -> None:
        """Wait until `offset` seconds into the load; raise LocustGone if Locust ended."""
        target = self.t0 + offset
        while (left := target - time.time()) > 0:
            if not self.locust.running():
                raise LocustGone(f"locust exited early ({self.locust.popen.returncode})")
            time.sleep(min(left, 0.05))

    def mark(self, what: str, **details: Any) -> float:
        now = time.time()
        self.events.append({"at": round(now - self.t0, 3), "what": what, **details})
        console.print(f"  +{now - self.t0:6.2f}s {what} {format_details(details)}")
        return now

    # -- faults --------------------------------------------------------------------------

    def set_node(self, node: Node, **changes: Any) -> list[dict[str, Any]]:
        """Change every stub of `node` live; the behaviours the stubs report back."""
        return [self.setup.manager.set(stub.id, **changes).to_dict() for stub in node.members]

    def kill(self, node: Node) -> dict[str, Behaviour]:
        """SIGKILL every stub of `node`; their behaviours, to start them again alike."""
        saved = {stub.id: stub.behaviour() for stub in node.members}
        for stub in node.members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stub.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while {s.id for s in self.setup.manager.list()} & set(node.ids):
            if time.monotonic() > deadline:
                raise SetupError(f"{node.name} still runs 10 s after SIGKILL")
            time.sleep(0.01)
        return saved

    def start_again(self, node: Node, saved: dict[str, Behaviour]) -> list[Stub]:
        """Start the stubs of a killed node on their old ports, registered again."""
        fresh = []
        for stub in sorted(node.members, key=lambda s: id_order(s.id)):  # ids come back alike
            fresh.append(self.setup.start_stub(stub.pool or "default", saved[stub.id], stub.port))
        node.members = fresh
        return fresh

    def restart_gracefully(self, stub: Stub) -> Stub:
        """Stop one stub (it deregisters, the balancer drains it), start it again, wait until
        the balancer admits it."""
        behaviour = stub.behaviour()
        self.setup.manager.stop(stub.id)
        fresh = self.setup.start_stub(stub.pool or "default", behaviour, stub.port)
        self.setup.wait_healthy([fresh])
        return fresh

    def add_node(self) -> Node:
        template = self.setup.nodes[0]
        members = [
            self.setup.start_stub(stub.pool or "default", stub.behaviour())
            for stub in template.members
        ]
        node = Node(f"n{len(self.setup.nodes) + 1}", members)
        self.setup.nodes.append(node)
        return node


def id_order(stub_id: str) -> tuple[int, str]:
    number = stub_id[1:]
    return (int(number), "") if stub_id[:1] == "s" and number.isdigit() else (1 << 30, stub_id)


def format_details(details: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in details.items())


def fault_span(duration: float) -> tuple[float, float]:
    """The middle third of the run."""
    return duration / 3, 2 * duration / 3


def inject_steady(run: Run) -> None:
    start, end = fault_span(run.duration)  # no fault: the thirds, to compare them
    run.window = (run.t0 + start, run.t0 + end)


def inject_kill_one(run: Run) -> None:
    node = run.focus = run.victim
    start, end = fault_span(run.duration)
    run.at(start)
    pids = {stub.id: stub.pid for stub in node.members}
    killed = time.time()  # before the signal: the first failures count in the window
    saved = run.kill(node)
    run.mark("SIGKILL", node=node.name, pids=pids)
    run.at(end)
    began = time.time()
    fresh = run.start_again(node, saved)
    restarted = run.mark(
        "restarted",
        node=node.name,
        pids={s.id: s.pid for s in fresh},
        took=f"{time.time() - began:.2f}s",
    )
    run.notes["killed_pids"] = pids
    run.notes["restarted_pids"] = {stub.id: stub.pid for stub in fresh}
    run.notes["killed_at"] = killed
    run.notes["restart_began"] = began
    run.notes["restarted_at"] = restarted
    run.window = (killed, restarted)


def inject_errors(run: Run) -> None:
    node = run.focus = run.victim
    start, _ = fault_span(run.duration)
    length = min(20.0, run.duration / 3)
    run.at(start)
    before = [run.setup.manager.stats(stub_id) for stub_id in node.ids]
    run.set_node(node, status=503, health="ok")  # traffic fails, checks pass: passive only
    began = run.mark("status 503", node=node.name)
    run.at(start + length)
    after = [run.setup.manager.stats(stub_id) for stub_id in node.ids]
    run.set_node(node, status=200, health="auto")
    ended = run.mark("status 200", node=node.name)
    answered = sum(
        a["statuses"].get("503", 0) - b["statuses"].get("503", 0)
        for a, b in zip(after, before, strict=True)
    )
    run.notes["stub_503s"] = answered
    run.window = (began, ended)


def inject_slow(run: Run) -> None:
    node = run.focus = run.victim
    start, end = fault_span(run.duration)
    base = run.setup.manager.behaviour(node.ids[0]).latency
    slow = f"{base.low * 10 * 1000:g}ms" if not base.is_zero else "50ms"
    run.at(start)
    run.set_node(node, latency=slow)
    reported = [str(run.setup.manager.behaviour(stub_id).latency) for stub_id in node.ids]
    began = run.mark("latency", node=node.name, latency=slow, reported=reported)
    run.notes["base_latency"] = str(base)
    run.notes["slow_latency"] = slow
    run.notes["slow_ms"] = Behaviour().with_changes({"latency": slow}).latency.low * 1000
    run.notes["reported_latency"] = reported
    run.at(end)
    run.set_node(node, latency=str(base))
    ended = run.mark("latency", node=node.name, latency=str(base))
    run.window = (began, ended)


def flap_period(duration: float) -> float:
    start, end = fault_span(duration)
    return max(1.5, min(3.0, (end - start) / 6))


def inject_flapping(run: Run) -> None:
    node = run.focus = run.victim
    start, end = fault_span(run.duration)
    period = flap_period(run.duration)
    toggles = max(2, int((end - start) / period) // 2 * 2)  # even: it ends healthy
    run.at(start)
    began = time.time()
    for index in range(toggles):
        run.at(start + index * period)
        health = "fail" if index % 2 == 0 else "ok"
        run.set_node(node, health=health)
        run.mark("health", node=node.name, health=health)
    run.at(start + toggles * period)
    run.notes["period_s"] = period
    run.notes["toggles"] = toggles
    run.window = (began, time.time())


def inject_scale_up(run: Run) -> None:
    at = run.duration / 2
    run.at(at)
    began = time.time()
    node = run.focus = run.add_node()
    joined = run.mark("joined", node=node.name, stubs=node.ids, took=f"{time.time() - began:.2f}s")
    run.notes["joined_at"] = began
    run.notes["registered_at"] = joined
    run.window = (began, began + min(5.0, run.duration / 6))


def inject_rolling_restart(run: Run) -> None:
    run.at(run.duration / 4)
    pause = min(1.0, run.duration / 30)
    began = time.time()
    before: dict[str, int] = {}
    after: dict[str, int] = {}
    run.notes["pids_before"] = before  # filled as it goes: kept if the load ends early
    run.notes["pids_after"] = after
    for number, node in enumerate(run.setup.nodes, 1):
        fresh = []
        for stub in sorted(node.members, key=lambda s: id_order(s.id)):
            before[stub.id] = stub.pid
            started = time.time()
            new = run.restart_gracefully(stub)
            after[new.id] = new.pid
            fresh.append(new)
            run.mark(
                "restarted",
                stub=stub.id,
                pid=f"{stub.pid}->{new.pid}",
                took=f"{time.time() - started:.2f}s",
            )
        node.members = fresh
        if number < len(run.setup.nodes):
            run.at(time.time() - run.t0 + pause)  # a pause between nodes, as an operator would
    run.window = (began, time.time())


# -- criteria --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    value: str


@dataclass
class Outcome:
    """What a judge looks at."""

    run: Run
    timeline: Timeline
    phases: dict[str, Phase]
    monitor: Monitor

    @property
    def requests(self) -> int:
        return self.timeline.requests

    @property
    def failures(self) -> int:
        return self.timeline.failure_count

    @property
    def failure_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @property
    def focus_ids(self) -> list[str]:
        return self.run.focus.ids if self.run.focus else []

    def focus_keys(self) -> set[tuple[str, str]]:
        node = self.run.focus
        return {(stub.pool or "default", stub.id) for stub in node.members} if node else set()


def no_failures(outcome: Outcome) -> Check:
    return Check("no client-visible failures", outcome.failures == 0, str(outcome.failures))


def served_something(outcome: Outcome) -> Check:
    return Check("requests served", outcome.requests > 0, f"{outcome.requests:,}")


def judge_steady(outcome: Outcome) -> list[Check]:
    return [served_something(outcome), no_failures(outcome)]


def all_back(timeline: Timeline, stubs: list[str], since: float) -> float | None:
    """Seconds from `since` until every one of `stubs` had answered (None: one never did)."""
    firsts = [timeline.first_answer([stub], since) for stub in stubs]
    if not firsts or None in firsts:
        return None
    return max(first for first in firsts if first is not None) - since


def judge_kill_one(outcome: Outcome) -> list[Check]:
    run = outcome.run
    assert run.window is not None
    rate = outcome.failure_rate
    took = recovery(outcome.timeline.failures, run.window[0])
    back_s = all_back(outcome.timeline, outcome.focus_ids, run.notes["restarted_at"])
    return [
        served_something(outcome),
        Check("failures <= 0.1% of requests (retries on)", rate <= 0.001, f"{rate:.3%}"),
        Check("recovery (kill to last failure) < 2 s", took < 2.0, f"{took:.2f} s"),
        Check(
            "every restarted stub answers again within 5 s",
            back_s is not None and back_s < 5.0,
            "never" if back_s is None else f"{back_s:.2f} s",
        ),
    ]


def judge_errors(outcome: Outcome) -> list[Check]:
    during, after = outcome.phases["during"], outcome.phases["after"]
    rate = during.failures / during.requests if during.requests else 0.0
    share = during.share(outcome.focus_ids) or 0.0
    return [
        served_something(outcome),
        Check(
            "the stubs answered 503s",
            outcome.run.notes.get("stub_503s", 0) > 0,
            str(outcome.run.notes.get("stub_503s")),
        ),
        Check("failures during the fault <= 1% of its requests", rate <= 0.01, f"{rate:.3%}"),
        Check("no failures after the fault", after.failures == 0, str(after.failures)),
        Check("failing node gets < 10% of answers during the fault", share < 0.10, f"{share:.1%}"),
    ]


def judge_slow(outcome: Outcome) -> list[Check]:
    """Round-robin would give the slow node a third of the answers, so p90 would be its
    latency. p99 is not judged: under Locust on a shared 2-core machine the fast servers'
    own answers spike (the balancer queues behind Locust and the stubs), and peak-ewma then
    sends the slow node a few per cent, which is the 1% tail (the summary shows it)."""
    during = outcome.phases["during"]
    share = during.share(outcome.focus_ids) or 0.0
    slow_ms = float(outcome.run.notes["slow_ms"])
    p90 = during.p90_ms
    return [
        served_something(outcome),
        no_failures(outcome),
        Check("slow node gets < 10% of answers during the fault", share < 0.10, f"{share:.1%}"),
        Check(
            f"p90 during the fault < the slow latency ({slow_ms:g} ms)",
            p90 is not None and p90 < slow_ms,
            "-" if p90 is None else f"{p90:.1f} ms",
        ),
    ]


def judge_flapping(outcome: Outcome) -> list[Check]:
    run = outcome.run
    assert run.window is not None
    before, during = outcome.phases["before"], outcome.phases["during"]
    out = outcome.monitor.left_healthy(outcome.focus_keys(), run.window[0], run.window[1] + 2)
    limit = None if before.p99_ms is None else 2 * before.p99_ms + 10
    return [
        served_something(outcome),
        no_failures(outcome),
        Check("balancer took the node out at least once", out > 0, f"{out} time(s)"),
        Check(
            "p99 during <= 2 x p99 before + 10 ms",
            limit is not None and during.p99_ms is not None and during.p99_ms <= limit,
            f"{during.p99_ms} ms (limit {limit:.1f})" if limit else "-",
        ),
    ]


def judge_scale_up(outcome: Outcome) -> list[Check]:
    run = outcome.run
    joined = run.notes["joined_at"]
    first_s = all_back(outcome.timeline, outcome.focus_ids, joined)
    after = outcome.phases["after"]
    share = after.share(outcome.focus_ids) or 0.0
    fair = 1 / len(run.setup.nodes)
    return [
        served_something(outcome),
        no_failures(outcome),
        Check(
            "every new stub answers within 3 s of starting",
            first_s is not None and first_s < 3.0,
            "never" if first_s is None else f"{first_s:.2f} s",
        ),
        Check(
            f"new node's share after >= half a fair share ({fair / 2:.1%})",
            share >= fair / 2,
            f"{share:.1%}",
        ),
    ]


def judge_rolling_restart(outcome: Outcome) -> list[Check]:
    notes = outcome.run.notes
    before, after = notes.get("pids_before", {}), notes.get("pids_after", {})
    changed = sum(1 for stub_id, pid in before.items() if after.get(stub_id) not in (None, pid))
    return [
        served_something(outcome),
        no_failures(outcome),
        Check(
            "every stub restarted (new PID, healthy again)",
            bool(before) and changed == len(before),
            f"{changed}/{len(before)}",
        ),
    ]


@dataclass(frozen=True)
class Scenario:
    name: str
    shows: str
    criteria: str
    inject: Callable[[Run], None]
    judge: Callable[[Outcome], list[Check]]


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "steady",
            "the baseline: no fault; before/during/after are the thirds of the run",
            "no failures",
            inject_steady,
            judge_steady,
        ),
        Scenario(
            "kill-one",
            "SIGKILL node n2 at 1/3 of the run, start it again on the same ports at 2/3",
            "failures <= 0.1% (retries on), kill to last failure < 2 s, "
            "back in rotation < 5 s after restart",
            inject_kill_one,
            judge_kill_one,
        ),
        Scenario(
            "errors",
            "n2 answers 503 to everything (its /health stays 200) for 20 s from 1/3",
            "the stubs did answer 503; failures during <= 1%, none after; "
            "n2 gets < 10% of answers during",
            inject_errors,
            judge_errors,
        ),
        Scenario(
            "slow",
            "n2's latency x10 (5 ms -> 50 ms) during the middle third",
            "no failures; n2 gets < 10% of answers during; p90 during < the slow latency",
            inject_slow,
            judge_slow,
        ),
        Scenario(
            "flapping",
            "n2's /health toggles fail/ok every 3 s during the middle third "
            "(its traffic answers stay 200)",
            "no failures; the balancer took n2 out at least once; p99 during <= 2 x before + 10 ms",
            inject_flapping,
            judge_flapping,
        ),
        Scenario(
            "scale-up",
            "a fourth node registers at half time; during = its first 5 s",
            "no failures; it answers within 3 s; its share after >= half a fair share",
            inject_scale_up,
            judge_scale_up,
        ),
        Scenario(
            "rolling-restart",
            "from 1/4, every stub in turn: SIGTERM (deregister, drained), start again "
            "registered on its port, wait until healthy",
            "no failures; every stub restarted",
            inject_rolling_restart,
            judge_rolling_restart,
        ),
    )
}


# -- running Locust and one scenario -------------------------------------------------------


@dataclass
class Options:
    duration: int = 60
    users: int = 20
    rate: float = 10.0
    host: str | None = None
    api: str | None = None
    state_dir: str = ".bunancer"
    nodes: int = 3
    latency: str = "5ms"
    results_dir: Path = RESULTS_DIR


def start_locust(setup: Setup, options: Options, results: Path) -> tuple[Child, Path]:
    timeline = results / "timeline.json"
    argv = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--users",
        str(options.users),
        "--spawn-rate",
        str(options.users),
        "--run-time",
        f"{options.duration}s",
        "--host",
        setup.host,
        "--csv",
        str(results / "locust"),
        "--html",
        str(results / "report.html"),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    os.environ["BENCH_TIMELINE"] = str(timeline)
    os.environ["BENCH_USER_RPS"] = f"{options.rate:g}"
    try:
        child = setup.supervisor.start("locust", argv)
    finally:
        del os.environ["BENCH_TIMELINE"], os.environ["BENCH_USER_RPS"]
    return child, timeline


def wait_started(child: Child, marker: Path) -> float:
    deadline = time.monotonic() + LOCUST_START_TIMEOUT
    while not marker.exists():
        if not child.running() or time.monotonic() > deadline:
            raise SetupError(f"locust did not start:\n{child.log_tail()}")
        time.sleep(0.02)
    return float(marker.read_text())


def run_scenario(scenario: Scenario, options: Options) -> dict[str, Any]:
    """Set up, load, inject, judge, tear down; the summary (also in summary.json)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    results = options.results_dir / f"{scenario.name}-{stamp}"
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
            summary = summarise(scenario, run, timeline, monitor, options, results)
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


def summarise(
    scenario: Scenario,
    run: Run,
    timeline: Timeline,
    monitor: Monitor,
    options: Options,
    results: Path,
) -> dict[str, Any]:
    window = run.window or (run.t0 + run.duration / 3, run.t0 + 2 * run.duration / 3)
    cut = phases(timeline, *window, start=run.t0, end=run.t0 + run.duration)
    outcome = Outcome(run, timeline, {p.name: p for p in cut}, monitor)
    if "cut_short" in run.notes:  # the fault schedule did not finish: nothing to judge
        checks = [Check("the load ran for the whole scenario", False, run.notes["cut_short"])]
    elif not cut:
        checks = [Check("requests served", False, "0")]
    else:
        checks = scenario.judge(outcome)
    focus = outcome.focus_ids
    keys = outcome.focus_keys()
    transitions = [
        {
            "at": round(t.at - run.t0, 3),
            "server": f"{t.pool}/{t.server}",
            "state": t.state,
            "reason": t.reason,
        }
        for t in monitor.transitions
        if (not keys or (t.pool, t.server) in keys) and t.at >= run.t0
    ]
    return {
        "scenario": scenario.name,
        "shows": scenario.shows,
        "criteria": scenario.criteria,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "mode": "own balancer" if run.setup.own else f"--host {run.setup.host}",
        "duration_s": options.duration,
        "users": options.users,
        "rate_per_user": options.rate,
        "results": str(results),
        "requests": outcome.requests,
        "failures": outcome.failures,
        "failure_rate": outcome.failure_rate,
        "failure_window_s": round(failure_window(timeline.failures), 3),
        "recovery_s": round(recovery(timeline.failures, window[0]), 3),
        "failure_reasons": reasons(timeline.failures),
        "window": [round(window[0] - run.t0, 3), round(window[1] - run.t0, 3)],
        "focus": {"node": run.focus.name, "stubs": focus} if run.focus else None,
        "phases": [
            p.to_dict()
            | {
                "start": round(p.start - run.t0, 3),
                "end": round(p.end - run.t0, 3),
                "focus_share": p.share(focus) if focus else None,
            }
            for p in cut
        ],
        "events": run.events,
        "transitions": transitions,
        "notes": run.notes,
        "checks": [{"name": c.name, "ok": c.ok, "value": c.value} for c in checks],
        "verdict": "PASS" if checks and all(c.ok for c in checks) else "FAIL",
        "files": sorted(path.name for path in results.iterdir()),
    }


# -- output ----------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_summary(summary: dict[str, Any]) -> None:
    console.print(
        f"[bold]{summary['scenario']}[/] ({summary['duration_s']} s, {summary['users']} users "
        f"x {summary['rate_per_user']:g} req/s, {summary['mode']}): "
        f"{summary['requests']:,} requests, {summary['failures']} failures "
        f"({summary['failure_rate']:.3%}), failure window {summary['failure_window_s']:.2f} s, "
        f"recovery {summary['recovery_s']:.2f} s"
    )
    focus = summary["focus"]
    table = Table(title_justify="left")
    for heading in ("phase", "seconds", "requests", "failures", "req/s", "p50 ms", "p99 ms"):
        table.add_column(heading, justify="left" if heading == "phase" else "right")
    if focus:
        table.add_column(f"{focus['node']} share", justify="right")
    for p in summary["phases"]:
        row = [
            p["name"],
            f"{p['start']:.1f}-{p['end']:.1f}",
            f"{p['requests']:,}",
            str(p["failures"]),
            fmt(p["rps"], ".0f"),
            fmt(p["p50_ms"]),
            fmt(p["p99_ms"]),
        ]
        if focus:
            row.append(
                fmt(None if p["focus_share"] is None else p["focus_share"] * 100, ".1f") + "%"
            )
        table.add_row(*row)
    console.print(table)
    for reason, count in list(summary["failure_reasons"].items())[:5]:
        console.print(f"  failed: {count} x {reason}")
    shown = summary["transitions"][:MAX_TRANSITIONS_SHOWN]
    for t in shown:
        console.print(f"  balancer +{t['at']:.2f}s {t['server']} -> {t['state']} ({t['reason']})")
    if len(summary["transitions"]) > len(shown):
        more = len(summary["transitions"]) - len(shown)
        console.print(f"  balancer: {more} more state changes in summary.json")
    for check in summary["checks"]:
        mark = "[green]PASS[/]" if check["ok"] else "[red]FAIL[/]"
        console.print(f"  {mark} {check['name']}: {check['value']}")
    colour = "green" if summary["verdict"] == "PASS" else "red"
    console.print(f"  verdict: [bold {colour}]{summary['verdict']}[/]  ({summary['results']})")


def overview_table(summaries: list[dict[str, Any]]) -> Table:
    table = Table(
        title="scenarios (req/s and p99 before / during / after the fault)", title_justify="left"
    )
    for heading in (
        "scenario",
        "requests",
        "failures",
        "window s",
        "recovery s",
        "req/s",
        "p99 ms",
        "verdict",
    ):
        table.add_column(heading, justify="left" if heading in ("scenario", "verdict") else "right")
    for s in summaries:
        by_name = {p["name"]: p for p in s["phases"]}
        names = ("before", "during", "after")
        table.add_row(
            s["scenario"],
            f"{s['requests']:,}",
            f"{s['failures']} ({s['failure_rate']:.2%})",
            f"{s['failure_window_s']:.2f}",
            f"{s['recovery_s']:.2f}",
            " / ".join(fmt(by_name.get(n, {}).get("rps"), ".0f") for n in names),
            " / ".join(fmt(by_name.get(n, {}).get("p99_ms")) for n in names),
            s["verdict"],
        )
    return table


def list_scenarios() -> None:
    table = Table(title="scenarios", title_justify="left")
    table.add_column("name")
    table.add_column("what happens")
    table.add_column("PASS when")
    for scenario in SCENARIOS.values():
        table.add_row(scenario.name, scenario.shows, scenario.criteria)
    console.print(table)


# -- command line ----------------------------------------------------------------------------


def is_loopback_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost")


def parse_args(argv: list[str] | None = None) -> tuple[list[str], Options]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scenarios",
        description="Failure scenarios under a Locust load, with a PASS/FAIL verdict.",
    )
    parser.add_argument("scenario", nargs="?", help=f"{', '.join(SCENARIOS)} or all")
    parser.add_argument("--list", action="store_true", help="the scenarios and their criteria")
    parser.add_argument("--duration", type=int, default=60, help="seconds of load (default 60)")
    parser.add_argument("--users", type=int, default=20, help="Locust users (default 20)")
    parser.add_argument("--rate", type=float, default=10.0, help="requests/s per user (10)")
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
        return [], Options()
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
    )
    return names, options


def raise_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    names, options = parse_args(argv)
    if not names:
        list_scenarios()
        return 0
    if command_output([sys.executable, "-m", "locust", "--version"]) is None:
        console.print("[red]bench.scenarios: locust is not installed: pip install -e '.[bench]'[/]")
        return EXIT_SETUP
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    summaries = []
    for name in names:
        try:
            summaries.append(run_scenario(SCENARIOS[name], options))
        except (SetupError, StubError, BalancerUnreachable, ApiError) as error:
            console.print(f"[red]{name}: could not run: {error}[/]")
            return EXIT_SETUP
    if len(summaries) > 1:
        console.print(overview_table(summaries))
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = options.results_dir / f"scenarios-{stamp}.json"
        report = {"machine": machine_info(), "summaries": summaries}
        path.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"all summaries: {path}")
    return 0 if all(s["verdict"] == "PASS" for s in summaries) else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
