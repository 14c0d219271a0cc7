"""Stubs joining a real balancer: registration, ejection on 503, readmission, departure."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bunancer.client import ApiClient
from stubs.cli import stubs_group
from stubs.sdk import RegistrationFailed, StubManager
from tests.conftest import Proxy, StartProxy
from tests.helpers import FAST_CHECKS, ROOT, free_port, spawn, wait_for

# Quick checks and short ejections keep the suite fast; the logic is the default one.
FAST = (
    FAST_CHECKS
    + """
[pools.default.outlier]
base_ejection_time = 0.5
"""
)


def servers(proxy: Proxy) -> dict[str, dict[str, Any]]:
    client = ApiClient(f"127.0.0.1:{proxy.api_port}", proxy.token)
    return {s["id"]: s for s in client.pool("default")["servers"]}


def api_url(proxy: Proxy) -> str:
    return f"http://127.0.0.1:{proxy.api_port}"


@pytest.fixture(scope="module")
def proxy(start_proxy: StartProxy) -> Proxy:
    return start_proxy([], FAST)


@pytest.fixture
def manager(proxy: Proxy) -> Iterator[StubManager]:
    """Stubs in the balancer's state dir, where they find its token."""
    manager = StubManager(proxy.state_dir)
    yield manager
    manager.stop_all()
    wait_for(lambda: not servers(proxy), timeout=10)


def healthy(proxy: Proxy, ids: set[str]) -> bool:
    view = servers(proxy)
    return set(view) == ids and all(s["state"] == "healthy" for s in view.values())


def test_registered_stubs_get_traffic_503_ejects_and_200_readmits(
    proxy: Proxy, manager: StubManager
) -> None:
    started = subprocess.run(
        [sys.executable, "-m", "stubs.cli", "start", "--count", "3", "--register",
         "--api", api_url(proxy), "--state-dir", str(proxy.state_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert started.stdout.splitlines()[-1] == f"registered in pool default at {api_url(proxy)}"
    wait_for(lambda: healthy(proxy, {"s1", "s2", "s3"}), timeout=10)
    view = servers(proxy)
    assert {s["address"] for s in view.values()} == {f"127.0.0.1:{s.port}" for s in manager.list()}
    with proxy.client() as client:
        answers = {client.request("GET", "/").header("X-Stub-Id") for _ in range(6)}
    assert answers == {"s1", "s2", "s3"}

    runner = CliRunner()
    state = ["--state-dir", str(proxy.state_dir)]
    # Checks pinned to pass: only the traffic's 503s (passive checks) can eject s2.
    result = runner.invoke(stubs_group, ["set", "s2", "--status", "503", "--health", "ok", *state])
    assert result.output == "s2: 503, health ok\n"

    def ejected() -> dict[str, Any] | None:
        with proxy.client() as client:
            for _ in range(6):
                client.request("GET", "/")
        s2 = servers(proxy)["s2"]
        return s2 if s2["state"] == "unhealthy" else None

    s2 = wait_for(ejected, timeout=10)
    assert "503" in s2["reason"]
    assert s2["reason"].startswith("ejected for")
    others = servers(proxy)
    assert (others["s1"]["state"], others["s3"]["state"]) == ("healthy", "healthy")
    with proxy.client() as client:
        assert {client.request("GET", "/").status for _ in range(6)} == {200}  # s2 is out

    result = runner.invoke(stubs_group, ["set", "s2", "--status", "200", *state])
    assert result.output == "s2: 200\n"
    wait_for(lambda: healthy(proxy, {"s1", "s2", "s3"}), timeout=10)
    with proxy.client() as client:
        answers = {client.request("GET", "/").header("X-Stub-Id") for _ in range(6)}
    assert answers == {"s1", "s2", "s3"}

    # The list shows where they registered.
    listed = runner.invoke(stubs_group, ["list", *state])
    assert listed.output.count(" default ") == 3


def test_status_503_alone_fails_the_active_checks_without_any_traffic(
    proxy: Proxy, manager: StubManager
) -> None:
    """The README's `stubs set s2 --status 503`: no request is sent through the balancer,
    so only its active checks of /health can take s2 out, and bring it back."""
    manager.start(2, register=True, api=api_url(proxy))
    wait_for(lambda: healthy(proxy, {"s1", "s2"}), timeout=10)
    state = ["--state-dir", str(proxy.state_dir)]
    result = CliRunner().invoke(stubs_group, ["set", "s2", "--status", "503", *state])
    assert result.output == "s2: 503\n"
    wait_for(lambda: servers(proxy)["s2"]["state"] == "unhealthy", timeout=10)
    view = servers(proxy)
    assert "503" in view["s2"]["reason"]
    assert not view["s2"]["reason"].startswith("ejected for")  # a check, not an ejection
    assert view["s1"]["state"] == "healthy"
    result = CliRunner().invoke(stubs_group, ["set", "s2", "--status", "200", *state])
    assert result.output == "s2: 200\n"
    wait_for(lambda: healthy(proxy, {"s1", "s2"}), timeout=10)


def test_failing_health_takes_a_stub_out_while_traffic_would_pass(
    proxy: Proxy, manager: StubManager
) -> None:
    manager.start(2, register=True, api=api_url(proxy))
    wait_for(lambda: healthy(proxy, {"s1", "s2"}), timeout=10)
    manager.set("s1", health="fail")
    wait_for(lambda: servers(proxy)["s1"]["state"] == "unhealthy", timeout=10)
    assert "503" in servers(proxy)["s1"]["reason"]
    manager.set("s1", health="ok")
    wait_for(lambda: healthy(proxy, {"s1", "s2"}), timeout=10)


def test_sigterm_deregisters(proxy: Proxy, manager: StubManager) -> None:
    manager.start(2, register=True, api=api_url(proxy))
    wait_for(lambda: healthy(proxy, {"s1", "s2"}), timeout=10)
    manager.stop("s2")  # SIGTERM; returns once the process is gone
    assert set(servers(proxy)) == {"s1"}
    log = (manager.directory / "s2.log").read_text()
    assert "[stub] deregistered from pool default" in log
    # A stub run by hand, stopped with Ctrl-C (SIGINT), leaves too and exits 0.
    process = spawn(
        ["-m", "stubs.server", "--id", "hand", "--port", "0", "--register",
         "--api", api_url(proxy), "--token", proxy.token],
    )  # fmt: skip
    wait_for(lambda: "hand" in servers(proxy), timeout=10)
    process.signal(2)
    assert process.proc.wait(15) == 0
    process.stop()
    assert set(servers(proxy)) == {"s1"}
    assert any("deregistered from pool default" in line for line in process.lines)


def test_a_stub_started_before_the_balancer_registers_when_it_comes_up(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    manager = StubManager(state_dir)
    try:
        (stub,) = manager.start(register=True, api=api)
        registration = stub.registration()
        assert registration["state"] == "retrying"
        assert f"no balancer answers at {api}" in registration["detail"]
        # The CLI says so, and the stub keeps trying.
        result = CliRunner().invoke(
            stubs_group,
            ["start", "--register", "--api", api, "--state-dir", str(state_dir)],
        )
        assert result.exit_code == 0
        assert f"warning: no balancer answers at {api}" in result.stderr
        assert "s2 keep trying to register" in result.stderr

        proxy = start_proxy(
            [], f'{FAST}\n[api]\nlisten = "127.0.0.1:{api_port}"\n', state_dir=state_dir
        )
        wait_for(lambda: healthy(proxy, {"s1", "s2"}), timeout=15)
        # The balancer may check a stub healthy before the stub has read the answer to its
        # registration (its attempt runs in a thread): wait for its own view, bounded.
        wait_for(lambda: stub.registration()["state"] == "registered", timeout=10)
        with proxy.client() as client:
            assert {client.request("GET", "/").header("X-Stub-Id") for _ in range(4)} == {
                "s1",
                "s2",
            }
    finally:
        manager.stop_all()


def test_a_refused_registration_stops_the_stubs(proxy: Proxy, tmp_path: Path) -> None:
    manager = StubManager(tmp_path / "elsewhere")  # no token there
    with pytest.raises(RegistrationFailed, match="401"):
        manager.start(2, register=True, api=api_url(proxy))
    assert manager.list() == []
    result = CliRunner().invoke(
        stubs_group,
        ["start", "--register", "--pool", "nope", "--api", api_url(proxy),
         "--state-dir", str(proxy.state_dir)],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "404" in result.stderr
    assert StubManager(proxy.state_dir).list() == []


def test_a_stale_entry_with_its_id_is_replaced_but_an_address_taken_is_refused(
    proxy: Proxy, manager: StubManager
) -> None:
    client = ApiClient(api_url(proxy), proxy.token)
    stale_port, taken_port = free_port(), free_port()
    client.register("default", "127.0.0.1", stale_port, server_id="s1")  # a dead earlier s1
    (stub,) = manager.start(register=True, api=api_url(proxy))
    assert stub.registration()["detail"].endswith("replacing a stale entry")
    assert servers(proxy)["s1"]["address"] == f"127.0.0.1:{stub.port}"

    client.register("default", "127.0.0.1", taken_port, server_id="someone")
    with pytest.raises(
        RegistrationFailed, match=f"127.0.0.1:{taken_port} is already registered as someone"
    ):
        manager.start(register=True, api=api_url(proxy), port=taken_port)
    assert [s.id for s in manager.list()] == ["s1"]
    client.deregister("default", "someone")
