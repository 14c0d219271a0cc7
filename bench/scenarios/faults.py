"""The faults a scenario injects, on a schedule relative to the start of the load.

`Run` holds the schedule (`at`), the fault actions on a node's stubs (through the stubs SDK)
and what they did, as events and notes the summary and the judges read.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from bench.harness import Child
from bench.scenarios.setup import Node, Setup, SetupError
from stubs.behaviour import Behaviour
from stubs.sdk import Stub


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
        print(f"  +{now - self.t0:6.2f}s {what} {format_details(details)}", flush=True)
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
