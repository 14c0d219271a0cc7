"""Registrations survive restarts and crashes; several instances share one Redis registry."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bunancer.client import ApiClient, ApiError
from bunancer.control.store import SavedState
from tests.conftest import Backend, Proxy, StartProxy
from tests.helpers import ROOT, RedisServer, free_port, wait_for


def api(proxy: Proxy) -> ApiClient:
    return ApiClient(f"127.0.0.1:{proxy.api_port}", proxy.token)


def servers(proxy: Proxy, pool: str = "default") -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in api(proxy).pool(pool)["servers"]}


def restart(start_proxy: StartProxy, proxy: Proxy, servers_: list[str], extra: str = "") -> Proxy:
    assert proxy.process.stop() == 0
    return start_proxy(servers_, extra, state_dir=proxy.state_dir)


def test_registrations_and_admin_changes_survive_a_restart(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    config_server = backends[0].url
    proxy = start_proxy([config_server])
    client = api(proxy)
    client.register("default", "127.0.0.1", backends[1].port, server_id="api-1", weight=3)
    client.update_server("default", f"127.0.0.1:{backends[0].port}", weight=7)
    client.request("POST", "/api/pools", {"name": "extra", "health": {"path": "/status/200"}})
    client.register("extra", "127.0.0.1", backends[0].port, server_id="x1")
    client.update_server("extra", "x1", admin="disabled")

    again = restart(start_proxy, proxy, [config_server])
    default = servers(again)
    assert set(default) == {f"127.0.0.1:{backends[0].port}", "api-1"}
    assert default["api-1"]["weight"] == 3
    assert default[f"127.0.0.1:{backends[0].port}"]["weight"] == 7  # config server, API weight
    assert default["api-1"]["source"] == "api"
    extra = api(again).pool("extra")
    assert extra["health"]["path"] == "/status/200"
    assert extra["servers"][0]["state"] == "disabled"
    # restored servers are checked at once and take traffic
    wait_for(lambda: servers(again)["api-1"]["state"] == "healthy", timeout=5)


def test_config_is_the_base(start_proxy: StartProxy, backends: list[Backend]) -> None:
    first, second = backends[0].url, backends[1].url
    proxy = start_proxy([first, second])
    # The second config server leaves the file: it is gone after the restart, even though
    # the saved state still lists it.
    again = restart(start_proxy, proxy, [first])
    assert set(servers(again)) == {f"127.0.0.1:{backends[0].port}"}


def test_sigkill_during_registrations_loses_nothing_acknowledged(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    proxy = start_proxy([])
    client = api(proxy)
    acknowledged: list[str] = []
    stop = threading.Event()

    def register_many() -> None:
        for n in range(10000):
            if stop.is_set():
                return
            try:
                # ports only need to be distinct: nothing has to listen there
                client.register("default", "127.0.0.1", 20000 + n, server_id=f"r{n}")
            except Exception:
                return  # the balancer is gone
            acknowledged.append(f"r{n}")

    worker = threading.Thread(target=register_many)
    worker.start()
    wait_for(lambda: len(acknowledged) >= 30, timeout=20)
    proxy.process.signal(signal.SIGKILL)
    proxy.process.proc.wait(10)
    stop.set()
    worker.join(10)
    saved = proxy.state_dir / "state.json"
    state = SavedState.from_json(saved.read_bytes())  # parses: never half-written
    ids = {s.id for s in state.pools["default"].servers}
    assert set(acknowledged) <= ids, set(acknowledged) - ids
    again = start_proxy([], state_dir=proxy.state_dir)
    assert set(acknowledged) <= set(servers(again))


def test_corrupt_state_falls_back_to_the_last_good_copy(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    proxy = start_proxy([])
    client = api(proxy)
    client.register("default", "127.0.0.1", backends[0].port, server_id="one")
    client.register("default", "127.0.0.1", backends[1].port, server_id="two")
    assert proxy.process.stop() == 0
    saved = proxy.state_dir / "state.json"
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])  # truncated, as by a disk that lied
    again = start_proxy([], state_dir=proxy.state_dir)
    assert "one" in servers(again)  # from state.json.bak, one save older
    assert any("state.json" in line and "bak" in line for line in again.process.lines)


def serve_refused(tmp_path: Path, state_dir: Path) -> subprocess.CompletedProcess[str]:
    """`bunancer serve` on `state_dir`, which must refuse to start: exit 2, no traceback."""
    config = tmp_path / "bunancer.toml"
    config.write_text(
        '[api]\nlisten = "127.0.0.1:0"\n[dashboard]\nlisten = "127.0.0.1:0"\n'
        '[[listeners]]\naddress = "127.0.0.1:0"\n[pools.default]\nservers = []\n'
    )
    argv = [sys.executable, "-m", "bunancer", "serve", "--config", str(config)]
    result = subprocess.run(
        [*argv, "--state-dir", str(state_dir)], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    return result


def test_unreadable_state_and_backup_refuse_to_start(tmp_path: Path) -> None:
    """Neither copy parses: the balancer refuses to start (a usage exit, 2, naming both files
    and what is wrong with each) rather than start empty, and leaves both files as they were."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    current, backup = state_dir / "state.json", state_dir / "state.json.bak"
    current.write_text("{")
    backup.write_text("[")
    result = serve_refused(tmp_path, state_dir)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"bunancer: state: no usable saved state: {current}: not valid JSON ")
    assert f"; {backup}: not valid JSON " in last
    assert "ready:" not in result.stdout  # it never listened
    # The saved state is intact: nothing was written over either copy.
    assert current.read_text() == "{"
    assert backup.read_text() == "["
    assert sorted(p.name for p in state_dir.iterdir() if p.name.startswith("state")) == [
        "state.json",
        "state.json.bak",
    ]


def test_a_saved_value_the_api_would_refuse_names_its_record_and_never_starts(
    tmp_path: Path,
) -> None:
    """An unknown algorithm in state.json (and no good copy) is one line and exit 2, not a
    traceback; a weight of 0 is refused the same way, not a 500 for every request."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    server = {"id": "s", "host": "127.0.0.1", "port": 9001, "weight": 0}
    pool = {"name": "p", "algorithm": "fastest", "servers": [server]}
    (state_dir / "state.json").write_text(json.dumps({"format": 1, "revision": 3, "pools": [pool]}))
    last = serve_refused(tmp_path, state_dir).stderr.strip().splitlines()[-1]
    assert "state.json: pools[0].servers[0].weight: expected an integer from 1 to" in last, last


# README: "With a Redis store, a change on one instance reaches the others within a second."
PROPAGATION = 1.0


def test_two_instances_share_a_redis_registry(
    start_proxy: StartProxy, backends: list[Backend], redis_server: RedisServer
) -> None:
    extra = f'store = "{redis_server.url}"\n'
    one = start_proxy([], extra)
    two = start_proxy([], extra)
    # Each change is held to the README's promise: the other instance shows it within a
    # second of the change's 2xx answer (the deadline counts from that answer).
    api(one).register("default", "127.0.0.1", backends[0].port, server_id="shared")
    answered = time.monotonic()
    wait_for(lambda: "shared" in servers(two), timeout=PROPAGATION, since=answered)
    # ...and it routes there.
    wait_for(lambda: servers(two)["shared"]["state"] == "healthy", timeout=5)
    with two.client() as client:
        assert client.request("GET", "/").body == b"ok %d\n" % backends[0].port
    # Changes flow both ways; concurrent registrations on both sides are all kept.
    api(two).update_server("default", "shared", weight=9)
    answered = time.monotonic()
    wait_for(lambda: servers(one)["shared"]["weight"] == 9, timeout=PROPAGATION, since=answered)
    api(one).register("default", "127.0.0.1", free_port(), server_id="from-one")
    from_one = time.monotonic()
    api(two).register("default", "127.0.0.1", free_port(), server_id="from-two")
    from_two = time.monotonic()
    wait_for(lambda: "from-one" in servers(two), timeout=PROPAGATION, since=from_one)
    wait_for(lambda: "from-two" in servers(one), timeout=PROPAGATION, since=from_two)
    for instance in (one, two):  # neither registration lost the other
        assert {"from-one", "from-two"} <= set(servers(instance))
    api(two).deregister("default", "from-one")
    answered = time.monotonic()
    wait_for(lambda: "from-one" not in servers(one), timeout=PROPAGATION, since=answered)
    with pytest.raises(ApiError):
        api(one).update_server("default", "from-one", weight=2)


def test_state_file_is_private(start_proxy: StartProxy) -> None:
    proxy = start_proxy([])
    api(proxy).register("default", "127.0.0.1", free_port(), server_id="p")
    for name in ("state.json", "token"):
        assert (proxy.state_dir / name).stat().st_mode & 0o777 == 0o600, name
    document = json.loads((proxy.state_dir / "state.json").read_text())
    assert document["pools"]
