"""The README's "Trying it with fake backends", run as written: every line of its shell block,
in a fresh directory, each followed by a check of what its comment promises.

The one change to the commands: the balancer's three listeners take free ports instead of
8080-8082 (the same flags a user would pass), so a balancer running on this machine is never
touched; `BUNANCER_API` points the other commands at it. A line this test does not know
fails it: a new command in the README needs its promise checked here.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stubs.sdk import StubManager
from tests.helpers import ROOT, Process, free_port, wait_for

SECTION = "## Trying it with fake backends"


def walkthrough() -> list[str]:
    """The lines of the section's first shell block (comments after a command removed)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "the walkthrough's shell block is gone"
    lines = []
    for line in block.group(1).splitlines():
        command = re.sub(r"\s{2,}#.*$", "", line).strip()
        if command:
            lines.append(command)
    return lines


@dataclass
class Walk:
    """One run of the walkthrough: its directory, ports and the balancer it started."""

    cwd: Path
    proxy_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    serve: Process | None = None
    errors_before: int = 0  # the pool's client-facing errors before the traffic

    @property
    def env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        return {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "BUNANCER_API": f"http://127.0.0.1:{self.api_port}",
            "COLUMNS": "200",
            "PYTHONUNBUFFERED": "1",
        }

    def ported(self, command: str) -> str:
        return command.replace("localhost:8080", f"localhost:{self.proxy_port}")

    def shell(self, command: str, timeout: float = 60.0) -> str:
        done = subprocess.run(
            ["bash", "-c", self.ported(command)],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"{command!r} exited {done.returncode}:\n{done.stderr}"
        return done.stdout

    def api(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.api_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def states(self) -> dict[str, tuple[str, str]]:
        pool = self.api("/api/pools/default")
        return {s["id"]: (s["state"], s["reason"]) for s in pool["servers"]}

    def status_until(self, check: Callable[[str], bool], timeout: float) -> str:
        """Run `bunancer status` (the README's command) until its output passes `check`."""

        def passed() -> str | None:
            out = self.shell("bunancer status")
            return out if check(out) else None

        return wait_for(passed, timeout, 0.2)  # type: ignore[no-any-return]


def s2_row(status: str) -> str:
    """s2's row of a `bunancer status` table, with the lines its cells wrap onto."""
    lines = status.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\s*s2\s", line))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.strip() or re.match(r"\s*s\d", line):
            break
        block.append(line)
    return " ".join(" ".join(line.split()) for line in block)


# -- what each line promises ---------------------------------------------------------------------


def activate(walk: Walk, command: str) -> None:
    # Sourcing only puts .venv/bin on PATH, which `walk.env` does for every command.
    assert (ROOT / ".venv" / "bin" / "activate").exists() or sys.prefix != sys.base_prefix


def serve(walk: Walk, command: str) -> None:
    args = command.removesuffix("&").split()
    args += [
        "--listen",
        f"127.0.0.1:{walk.proxy_port}",
        "--api-listen",
        f"127.0.0.1:{walk.api_port}",
        "--dashboard-listen",
        f"127.0.0.1:{walk.dashboard_port}",
    ]
    proc = subprocess.Popen(
        args,
        cwd=walk.cwd,
        env=walk.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    walk.serve = Process(proc)
    walk.serve.start_reader()
    walk.serve.wait_line(r"ready: proxy listening")
    assert (walk.cwd / ".bunancer" / "token").exists()  # "writes .bunancer/token"


def start_stubs(walk: Walk, command: str) -> None:
    walk.shell(command)
    wait_for(lambda: walk.states().keys() == {"s1", "s2", "s3"}, 10)
    wait_for(lambda: all(s == "healthy" for s, _ in walk.states().values()), 10)


def curl_one(walk: Walk, command: str) -> None:
    assert walk.shell(command).strip() in {"s1", "s2", "s3"}  # "answered by one of them"


def stub_503(walk: Walk, command: str) -> None:
    walk.shell(command)


def first_status(walk: Walk, command: str) -> None:
    # "unhealthy within about 2 s": its checks fail (fall = 2) on the default schedule.
    row = s2_row(walk.status_until(lambda out: "unhealthy" in s2_row(out), 5.0))
    assert "failed checks: status 503" in row


def stub_200(walk: Walk, command: str) -> None:
    walk.shell(command)
    wait_for(lambda: walk.states()["s2"][0] == "healthy", 6)  # "healthy again after 2" checks
    assert "passing checks" in walk.states()["s2"][1]


def only_traffic_fails(walk: Walk, command: str) -> None:
    walk.shell(command)
    walk.errors_before = walk.api("/api/stats")["pools"]["default"]["errors_total"]


def traffic(walk: Walk, command: str) -> None:
    walk.shell(command)
    # "clients get no error": s2's 503s were retried on the others.
    pool = walk.api("/api/stats")["pools"]["default"]
    assert pool["errors_total"] == walk.errors_before
    assert pool["servers"]["s2"]["codes"].get("5xx", 0) >= 5  # ...but s2 shows them


def ejected_status(walk: Walk, command: str) -> None:
    # Ejected for 2 s; by the time this runs its checks may have readmitted it already.
    out = walk.shell(command)
    assert re.search(r"ejected for 2s: 5 consecutive 503|ejection over", s2_row(out)), out


def back_to_normal(walk: Walk, command: str) -> None:
    walk.shell(command)
    wait_for(lambda: walk.states()["s2"][0] == "healthy", 10)


def abort_with_header(walk: Walk, command: str) -> None:
    assert walk.shell(command).startswith("set f1: abort with 503 for 100% of pool default")
    assert [(r["kind"], r["header"]) for r in walk.api("/api/faults")] == [("abort", "x-chaos")]


def curl_chaos(walk: Walk, command: str) -> None:
    assert walk.shell(command).strip() == "503 Service Unavailable"  # from the balancer


def delay_the_others(walk: Walk, command: str) -> None:
    walk.shell(command)
    rules = walk.api("/api/faults")
    assert [r["kind"] for r in rules] == ["abort", "delay"]
    assert rules[1]["delay_ms"] == 200
    assert 25 < rules[1]["seconds_left"] <= 30  # "for 30 s"


def curl_delayed(walk: Walk, command: str) -> None:
    took = float(walk.shell(command))
    assert 0.2 <= took < 1.5, took  # "about 0.2"


def faults_list(walk: Walk, command: str) -> None:
    out = walk.shell(command)
    assert "f1: abort with 503 for 100% of pool default's requests with header x-chaos" in out
    assert "f2: delay 200 ms for 100% of pool default's requests; ends in" in out


def faults_removed(walk: Walk, command: str) -> None:
    assert walk.shell(command).split() == ["removed", "f1", "removed", "f2"]
    assert walk.api("/api/faults") == []
    request = urllib.request.Request(
        f"http://127.0.0.1:{walk.proxy_port}/", headers={"X-Chaos": "1"}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200  # "untouched again": no abort for X-Chaos any more


def dashboard_comment(walk: Walk, command: str) -> None:
    assert "http://127.0.0.1:8082/" in command
    url = command[command.index("http://") :].split()[0].replace("8082", str(walk.dashboard_port))
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert b"bunancer" in response.read()


def top(walk: Walk, command: str) -> None:
    """In a terminal of its own (it reads keys): it draws, and `q` quits."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        command.split(), cwd=walk.cwd, env=walk.env, stdin=follower, stdout=follower,
        stderr=follower, start_new_session=True,
    )  # fmt: skip
    os.close(follower)
    seen = b""
    try:
        deadline = time.monotonic() + 15
        while b"bunancer top" not in seen or b"s3" not in seen:
            assert time.monotonic() < deadline, seen.decode(errors="replace")[-2000:]
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                seen += os.read(leader, 65536)
        os.write(leader, b"q")
        assert proc.wait(5) == 0  # "q quits"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        os.close(leader)


def stop_stubs(walk: Walk, command: str) -> None:
    walk.shell(command)
    assert walk.states() == {}  # "they deregister, then exit"
    assert StubManager(walk.cwd / ".bunancer").list() == []


def kill_balancer(walk: Walk, command: str) -> None:
    # `kill %1` sends SIGTERM to the shell's first job: the balancer started with `&`.
    assert walk.serve is not None
    walk.serve.signal(signal.SIGTERM)
    assert walk.serve.proc.wait(15) == 0
    assert walk.serve.stop() == 0  # (gathers the rest of its output)
    assert any(line.endswith("bunancer: stopped") for line in walk.serve.lines)


PROMISES: dict[str, Callable[[Walk, str], None]] = {
    ". .venv/bin/activate": activate,
    "bunancer serve &": serve,
    "bunancer stubs start --count 3 --register": start_stubs,
    "curl -s localhost:8080/": curl_one,
    "bunancer stubs set s2 --status 503": stub_503,
    "bunancer status": first_status,
    "bunancer stubs set s2 --status 200": stub_200,
    "bunancer stubs set s2 --status 503 --health ok": only_traffic_fails,
    "for i in $(seq 60); do curl -s -o /dev/null localhost:8080/; done": traffic,
    "bunancer stubs set s2 --status 200 --health auto": back_to_normal,
    "bunancer faults add abort --status 503 --header X-Chaos": abort_with_header,
    "curl -s -H 'X-Chaos: 1' localhost:8080/": curl_chaos,
    "bunancer faults add delay --delay 200 --for 30": delay_the_others,
    "curl -s -o /dev/null -w '%{time_total}\\n' localhost:8080/": curl_delayed,
    "bunancer faults list": faults_list,
    "bunancer faults remove --all": faults_removed,
    "bunancer top": top,
    "bunancer stubs stop --all": stop_stubs,
    "kill %1": kill_balancer,
}


def promise_of(command: str, seen: list[str]) -> Callable[[Walk, str], None]:
    if command.startswith("# the dashboard"):
        return dashboard_comment
    if command == "bunancer status" and "bunancer status" in seen:
        return ejected_status  # the second time, after the traffic
    if command not in PROMISES:
        pytest.fail(f"the README's walkthrough has a line this test does not check: {command!r}")
    return PROMISES[command]


@pytest.fixture
def walk(tmp_path: Path) -> Iterator[Walk]:
    walk = Walk(tmp_path)
    yield walk
    StubManager(tmp_path / ".bunancer").stop_all(timeout=5)
    if walk.serve is not None:
        walk.serve.stop()


def test_the_readme_walkthrough_does_what_it_says(walk: Walk) -> None:
    lines = walkthrough()
    assert lines[0] == ". .venv/bin/activate"
    seen: list[str] = []
    for command in lines:
        promise_of(command, seen)(walk, command)
        seen.append(command)
    assert "kill %1" in seen  # the walkthrough ends by stopping what it started
