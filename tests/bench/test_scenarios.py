"""Smoke runs of every failure scenario (bench/scenarios/): a few seconds at a low rate.

Each run starts real processes (a balancer, six stubs, Locust) on 127.0.0.1 and checks that
the summary is produced and the fault really happened (a new PID after the kill, 503s
counted by the stubs, ...). The judges themselves are tested on made-up runs in
test_verdicts.py; full runs' verdicts are in bench/README.md. A smoke run is too short to
hold most scenarios to their verdict, but two are held to it: `steady` must PASS, and a
control run of `kill-one` (the balancer's protection off) must FAIL.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.scenarios import SCENARIOS, Options, run_scenario
from bench.timeline import Timeline
from stubs.sdk import StubManager
from stubs.state import process_running
from tests.conftest import Proxy, StartProxy
from tests.helpers import LOCUST_MISSING, ROOT, require_tool

# Looked up, not imported: importing Locust monkey-patches threads and sockets with gevent
# for the whole test process (in-process tests using threads then hang). It runs as a
# subprocess of the scenario runner.


@pytest.fixture(scope="module", autouse=True)
def _locust_installed() -> None:
    """Skipped without Locust, or failed when `CI` is set."""
    require_tool(LOCUST_MISSING)


DURATION = 6  # seconds of load: room for a fault at 1/3 and a recovery after 2/3
SMOKE = {"duration": DURATION, "users": 3, "rate": 5.0}


def smoke(name: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    summary = run_scenario(SCENARIOS[name], Options(**SMOKE, results_dir=tmp_path, **overrides))
    results = Path(summary["results"])
    assert results.parent == tmp_path
    for produced in ("summary.json", "timeline.json", "report.html", "locust_stats.csv"):
        assert (results / produced).is_file(), produced
    assert summary["requests"] > 0
    assert [p["name"] for p in summary["phases"]] == ["before", "during", "after"]
    assert summary["verdict"] in ("PASS", "FAIL")
    assert summary["checks"]
    return summary


def timeline_of(summary: dict[str, Any]) -> Timeline:
    """The per-second recording of a run, with exact answer times per stub."""
    return Timeline.load(Path(summary["results"]) / "timeline.json")


def phase(summary: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in summary["phases"] if p["name"] == name)


def test_steady_from_the_command_line(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            *(sys.executable, "-m", "bench.scenarios", "steady", "--duration", "4"),
            *("--users", "2", "--rate", "5", "--results-dir", str(tmp_path)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "verdict: PASS" in completed.stdout
    (run,) = tmp_path.glob("steady-*")
    assert (run / "report.html").stat().st_size > 0
    assert "0 failures" in completed.stdout


def test_a_control_run_without_protection_fails(tmp_path: Path) -> None:
    # Round-robin, no retries, checks every 5 s: GETs meet the killed node and fail.
    summary = smoke("kill-one", tmp_path, protected=False)
    assert summary["protected"] is False
    assert summary["failures_idempotent"] > 0
    assert summary["verdict"] == "FAIL"
    config = (Path(summary["results"]) / "bunancer.toml").read_text()
    assert "retries = 0" in config
    assert "enabled = false" in config


def test_kill_one_kills_a_stub_and_starts_it_again(tmp_path: Path) -> None:
    summary = smoke("kill-one", tmp_path)
    killed, restarted = summary["notes"]["killed_pids"], summary["notes"]["restarted_pids"]
    assert set(killed) == set(restarted) == set(summary["focus"]["stubs"])
    for stub_id, pid in killed.items():
        assert restarted[stub_id] != pid
        assert not process_running(pid)
    assert [e["what"] for e in summary["events"]] == ["SIGKILL", "restarted"]
    # Nobody answered from the dead node between the kill and its new start (the phases
    # are whole seconds; the node is readmitted a fraction of a second after its restart).
    dead_from = summary["notes"]["killed_at"] + 0.1  # answers already on their way
    dead_until = summary["notes"]["restart_began"]
    timeline = timeline_of(summary)
    answers = [
        (bucket.second, seen)
        for bucket in timeline.buckets
        for stub_id, seen in bucket.stubs.items()
        if stub_id in killed
    ]
    assert not [
        a for a in answers if any(dead_from < t < dead_until for t in (a[1].first, a[1].last))
    ], answers


def test_errors_makes_a_stub_answer_503(tmp_path: Path) -> None:
    summary = smoke("errors", tmp_path)
    assert summary["notes"]["stub_503s"] > 0
    assert [e["what"] for e in summary["events"]] == ["status 503", "status 200"]


def test_slow_multiplies_a_stubs_latency_by_ten(tmp_path: Path) -> None:
    summary = smoke("slow", tmp_path, latency="4ms")
    assert summary["notes"]["base_latency"] == "4ms"
    assert summary["notes"]["reported_latency"] == ["40ms", "40ms"]
    assert summary["events"][-1]["latency"] == "4ms"  # restored


def test_flapping_health_takes_the_node_out(tmp_path: Path) -> None:
    summary = smoke("flapping", tmp_path)
    assert [e["health"] for e in summary["events"]] == ["fail", "ok"]
    states = {t["state"] for t in summary["transitions"]}
    assert "unhealthy" in states
    assert "healthy" in states


def test_scale_up_adds_a_node_that_answers(tmp_path: Path) -> None:
    summary = smoke("scale-up", tmp_path)
    new = summary["focus"]["stubs"]
    assert summary["focus"]["node"] == "n4"
    answered = phase(summary, "during")["stubs"] | phase(summary, "after")["stubs"]
    # The node answered (its 64 KiB stub sees a fifth of a few requests/s: it may not yet).
    assert sum(answered.get(stub_id, 0) for stub_id in new) > 0, answered
    # Nothing from the new node before it started (phases are whole seconds: compare times).
    timeline = timeline_of(summary)
    firsts = [seen.first for b in timeline.buckets for i, seen in b.stubs.items() if i in new]
    assert firsts
    assert min(firsts) >= summary["notes"]["joined_at"], (firsts, summary["notes"])


def test_rolling_restart_restarts_every_stub(tmp_path: Path) -> None:
    summary = smoke("rolling-restart", tmp_path)
    before, after = summary["notes"]["pids_before"], summary["notes"]["pids_after"]
    assert len(before) == 6
    assert set(before) == set(after)
    assert all(after[stub_id] != pid for stub_id, pid in before.items())
    states = {t["state"] for t in summary["transitions"]}
    # Each stub left (drained, then removed: an idle drain can end between two polls) and
    # came back healthy.
    assert states & {"draining", "removed"}, states
    assert "healthy" in states


@pytest.fixture
def running(start_proxy: StartProxy, tmp_path: Path) -> Iterator[tuple[Proxy, Path]]:
    """A balancer the runner did not start, with three registered stubs of a state dir."""
    proxy = start_proxy([], extra="[pools.default.health]\ninterval = 0.5\n")
    state_dir = tmp_path / "state"
    manager = StubManager(state_dir)
    manager.start(
        3,
        register=True,
        api=f"http://127.0.0.1:{proxy.api_port}",
        token=proxy.token,
        behaviour={"latency": "2ms"},
    )
    yield proxy, state_dir
    manager.stop_all(timeout=10)


def test_errors_against_a_running_balancer(running: tuple[Proxy, Path], tmp_path: Path) -> None:
    proxy, state_dir = running
    results = tmp_path / "results"
    summary = smoke(
        "errors",
        results,
        host=f"http://127.0.0.1:{proxy.port}",
        state_dir=str(state_dir),
    )
    assert summary["mode"] == f"--host http://127.0.0.1:{proxy.port}"
    assert summary["focus"]["stubs"] == ["s2"]
    assert summary["notes"]["stub_503s"] > 0
    assert not (results / summary["results"] / "bunancer.log").exists()  # not started here
    # The runner leaves the stubs it found running, back to their normal behaviour.
    stubs = StubManager(state_dir).list()
    assert [s.id for s in stubs] == ["s1", "s2", "s3"]
    assert stubs[1].behaviour().status == 200
