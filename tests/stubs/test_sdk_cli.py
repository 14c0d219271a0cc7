"""The SDK and the CLI on real stub processes: start, list, set, logs, stop, the menu."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from stubs.cli import stubs_group
from stubs.sdk import PortInUse, StubManager, UnknownStub
from stubs.state import StubPaths, StubRecord, process_running, write_record
from tests.helpers import ROOT, RawClient, free_port, wait_for


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[StubManager]:
    manager = StubManager(tmp_path / "state")
    yield manager
    manager.stop_all()


def answer(port: int, path: str = "/") -> tuple[int, bytes]:
    with RawClient(port) as client:
        response = client.request("GET", path)
        return response.status, response.body


def cli(*args: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    """`python -m stubs.cli ...` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "stubs.cli", "--state-dir", str(state_dir), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- the SDK ------------------------------------------------------------------------------------


def test_sdk_start_list_set_stop(manager: StubManager) -> None:
    s1, s2 = manager.start(2, behaviour={"latency": "1ms"})
    assert (s1.id, s2.id) == ("s1", "s2")
    assert answer(s1.port) == (200, b"s1\n")
    assert answer(s2.port) == (200, b"s2\n")
    assert [s.id for s in manager.list()] == ["s1", "s2"]
    assert s1.behaviour().describe() == "200 1ms"

    assert manager.set("s2", status=503, fail_rate="0").status == 503
    assert answer(s2.port)[0] == 503
    assert manager.stats("s2")["statuses"] == {"200": 1, "503": 1}

    manager.stop("s1")
    assert not process_running(s1.pid)
    assert not StubPaths.of(manager.state_dir, "s1").record.exists()
    assert [s.id for s in manager.list()] == ["s2"]
    (again,) = manager.start()
    assert again.id == "s1"  # the lowest free id


def test_sdk_tail_and_follow(manager: StubManager) -> None:
    (stub,) = manager.start()
    answer(stub.port, "/first")
    wait_for(lambda: any("GET /first 200" in line for line in manager.tail("s1")), timeout=5)
    follow = manager.follow("s1", lines=1, poll=0.02)
    assert "GET /first 200" in next(follow)
    answer(stub.port, "/second")
    assert "GET /second 200" in next(follow)  # within one log flush
    manager.stop("s1")
    assert list(follow)[-1].endswith("[stub] stopped")  # the stub is gone: following ends
    assert manager.tail("s1", 1)[0].endswith("[stub] stopped")  # logs outlive the stub


def test_stale_pid_files_are_cleaned(manager: StubManager, tmp_path: Path) -> None:
    live, killed = manager.start(2)
    os.kill(killed.pid, signal.SIGKILL)  # no chance to clean up after itself
    wait_for(lambda: not process_running(killed.pid))
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    directory = manager.directory
    stale = {
        # a process that has exited
        "s5": StubRecord("s5", int(finished.stdout), 1),
        # a live process that is not a stub (this test)
        "s6": StubRecord("s6", os.getpid(), 1),
        # a live stub's pid, but another process start time: a reused pid
        "s7": StubRecord("s7", live.pid, 1, start_ticks=1, argv=["stubs.server", "--id", "s7"]),
    }
    for stub_id, record in stale.items():
        write_record(directory / f"{stub_id}.json", record)
    (directory / "s8.json").write_text("{damaged")
    (directory / "s8.sock").write_text("")

    assert [s.id for s in manager.list()] == ["s1"]
    leftovers = sorted(p.name for p in directory.iterdir() if p.suffix in (".json", ".sock"))
    assert leftovers == ["s1.json", "s1.sock"]
    with pytest.raises(UnknownStub, match=r"no stub 's6' runs in .* \(running: s1\)"):
        manager.get("s6")
    assert process_running(os.getpid())  # nothing was signalled on the strength of a stale file
    assert process_running(live.pid)


def test_unknown_id_is_a_clear_error(manager: StubManager) -> None:
    manager.start()
    with pytest.raises(UnknownStub, match=r"no stub 's9' runs .*\(running: s1\)"):
        manager.set("s9", status=500)
    runner = CliRunner()
    for args in (["set", "s9", "--status", "500"], ["stop", "s1", "s9"], ["logs", "s9"]):
        result = runner.invoke(stubs_group, ["--state-dir", str(manager.state_dir), *args])
        assert result.exit_code == 1, result.output
        assert "bunancer stubs: no stub 's9' runs in" in result.stderr
    assert [s.id for s in manager.list()] == ["s1"]  # `stop s1 s9` checked both ids first


def taken_port_after_a_free_one() -> socket.socket:
    """A listening socket on a port whose predecessor is free (checked just before)."""
    for _ in range(50):
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", taken.getsockname()[1] - 1))
            except OSError:
                taken.close()
                continue
        return taken
    raise AssertionError("no free port next to a taken one")


def test_port_in_use_is_a_clear_error(manager: StubManager) -> None:
    with taken_port_after_a_free_one() as taken:
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {port} is in use"):
            manager.start(2, port=port - 1)  # the second one fails: all or nothing
        assert manager.list() == []
        assert list(manager.directory.glob("s*")) == []
        result = CliRunner().invoke(
            stubs_group, ["start", "--port", str(port), "--state-dir", str(manager.state_dir)]
        )
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"bunancer stubs: port {port} is in use; pick another --port or stop what uses it\n"
    )


# -- the CLI through click's runner ----------------------------------------------------------------


def test_cli_runner_start_list_set_logs_stop(tmp_path: Path) -> None:
    runner = CliRunner()
    state = ["--state-dir", str(tmp_path / "state")]
    result = runner.invoke(stubs_group, ["start", "--count", "2", "--status", "201", *state])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("started s1  pid ")
    manager = StubManager(tmp_path / "state")
    s1, s2 = manager.list()
    try:
        assert answer(s2.port) == (201, b"s2\n")
        result = runner.invoke(stubs_group, ["list", *state])
        assert result.exit_code == 0
        rows = [
            [cell.strip() for cell in line.split("│")] for line in result.output.splitlines()[2:]
        ]
        assert [row[:4] for row in rows] == [
            ["s1", str(s1.pid), str(s1.port), "-"],
            ["s2", str(s2.pid), str(s2.port), "-"],
        ]
        assert [row[4] for row in rows] == ["201", "201"]
        assert rows[1][-1] == "1"  # requests served

        result = runner.invoke(
            stubs_group,
            [
                "set",
                "s1",
                "--status",
                "503",
                "--latency",
                "20-80ms",
                "--fail-rate",
                "10%",
                "--mode",
                "reset",
                "--health",
                "fail",
                *state,
            ],
        )
        assert (result.exit_code, result.output) == (0, "s1: 503 20-80ms 10% reset, health fail\n")
        result = runner.invoke(stubs_group, ["logs", "s1", "-n", "1", *state])
        assert result.output.endswith("[stub] behaviour: 503 20-80ms 10% reset, health fail\n")

        result = runner.invoke(stubs_group, ["stop", "s1", *state])
        assert (result.exit_code, result.output) == (0, f"stopped s1 (pid {s1.pid})\n")
        assert not process_running(s1.pid)
    finally:
        manager.stop_all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", "s1"], "nothing to change"),
        (["stop"], "name the stubs to stop, or pass --all"),
        (["start", "--latency", "soon"], "Invalid value for '--latency'"),
        (["start", "--fail-rate", "2"], "Invalid value for '--fail-rate'"),
        (["start", "--mode", "explode"], "Invalid value for '--mode'"),
        (["start", "--health", "maybe"], "Invalid value for '--health'"),
    ],
)
def test_cli_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(stubs_group, [*args, "--state-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.stderr


def test_menu_driven_by_stdin(tmp_path: Path) -> None:
    manager = StubManager(tmp_path / "state")
    keys = [
        "a", "2", "", "n",  # add 2 stubs, default status 200, no registration
        "zz",  # not a choice: asked again
        "s2", "s", "503", "", "0.5", "hang", "",  # s2: status 503, 50% hang, health kept
        "l", "b",  # its logs, back
        "1", "p",  # s1: stop
        "s",  # stop all (s2)
        "q",
    ]  # fmt: skip
    try:
        result = CliRunner().invoke(
            stubs_group, ["--state-dir", str(manager.state_dir)], input="\n".join(keys) + "\n"
        )
    finally:
        leftovers = manager.stop_all()
    assert result.exit_code == 0, result.output
    output = result.output
    assert "started s1" in output
    assert "started s2" in output
    assert "Please select one of the available options" in output
    assert "s2: 503 50% hang" in output
    assert "[stub] behaviour: 503 50% hang" in output  # the logs it showed
    assert "stopped s1 (pid" in output
    assert "stopped s2 (pid" in output
    assert "no stubs running in" in output.split("stopped s2")[-1]
    assert leftovers == []


def test_menu_enter_redraws_the_list_and_only_q_quits(tmp_path: Path) -> None:
    manager = StubManager(tmp_path / "state")
    try:
        # Were "q" ignored, the "a" after it would add a stub (1 of status 200, unregistered).
        result = CliRunner().invoke(
            stubs_group,
            ["--state-dir", str(manager.state_dir)],
            input="\n".join(["", "", "q", "a", "1", "200", "n"]) + "\n",
        )
    finally:
        leftovers = manager.stop_all()
    assert result.exit_code == 0, result.output
    assert result.output.count("no stubs running in") == 3  # drawn, then redrawn twice
    assert "a add, Enter refresh, q quit" in result.output
    assert "started" not in result.output
    assert leftovers == []


def test_menu_add_registers_by_default(tmp_path: Path) -> None:
    """Enter at "register with the balancer" registers; with no balancer up (a free port
    as its API), the stub starts anyway and keeps retrying."""
    manager = StubManager(tmp_path / "state")
    api = f"http://127.0.0.1:{free_port()}"
    keys = ["a", "", "", "", "", "q"]  # add: 1 stub, status 200, register (default), pool
    try:
        result = CliRunner().invoke(
            stubs_group,
            ["--state-dir", str(manager.state_dir)],
            input="\n".join(keys) + "\n",
            env={"BUNANCER_API": api, "BUNANCER_TOKEN": None},
        )
        assert result.exit_code == 0, result.output
        assert "register with the balancer [y/n] (y)" in result.output
        assert "started s1" in result.output
        output = " ".join(result.output.split())  # rich wraps long lines
        assert f"s1: no balancer answers at {api}" in output
        (stub,) = manager.list()
        assert stub.pool == "default"
        assert stub.api == api
        assert stub.registration()["state"] == "retrying"
    finally:
        manager.stop_all()


def test_menu_quits_on_end_of_input(tmp_path: Path) -> None:
    result = CliRunner().invoke(stubs_group, ["--state-dir", str(tmp_path)], input="")
    assert result.exit_code == 0
    assert "no stubs running" in result.output


# -- the CLI as real processes ---------------------------------------------------------------------


def test_cli_processes_and_stop_all_leaves_no_process(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    started = cli("start", "--count", "3", "--latency", "1ms", state_dir=state_dir)
    assert started.returncode == 0, started.stderr
    records = [json.loads(p.read_text()) for p in sorted((state_dir / "stubs").glob("*.json"))]
    pids = [r["pid"] for r in records]
    try:
        assert [r["id"] for r in records] == ["s1", "s2", "s3"]
        assert all(process_running(pid) for pid in pids)
        listed = cli("list", state_dir=state_dir)
        assert listed.returncode == 0
        for record in records:
            assert f" {record['id']} │ {record['pid']} │ {record['port']} │" in listed.stdout
        assert cli("set", "s3", "--status", "500", state_dir=state_dir).stdout == "s3: 500 1ms\n"
        assert answer(records[2]["port"])[0] == 500
        assert answer(records[2]["port"], "/health")[0] == 500  # checks see it fail too
        pinned = cli("set", "s3", "--health", "ok", state_dir=state_dir)
        assert pinned.stdout == "s3: 500 1ms, health ok\n"
        assert answer(records[2]["port"], "/health")[0] == 200
        unknown = cli("logs", "s4", state_dir=state_dir)
        assert unknown.returncode == 1
        assert "no stub 's4'" in unknown.stderr
    finally:
        stopped = cli("stop", "--all", state_dir=state_dir)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.splitlines() == [
        f"stopped s{n} (pid {pid})" for n, pid in enumerate(pids, 1)
    ]
    for pid in pids:
        assert not process_running(pid), f"stub pid {pid} still runs"
    assert list((state_dir / "stubs").glob("*.json")) == []
    assert list((state_dir / "stubs").glob("*.sock")) == []
    assert cli("list", state_dir=state_dir).stdout.startswith("no stubs running in")
