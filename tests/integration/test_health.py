"""Active checks and passive ejection, seen through the API of a running balancer."""

from __future__ import annotations

from typing import Any

from bunancer.client import ApiClient
from tests.conftest import Backend, Proxy, StartProxy, start_backend_on
from tests.helpers import free_port, wait_for


def view(proxy: Proxy) -> dict[str, dict[str, Any]]:
    client = ApiClient(f"127.0.0.1:{proxy.api_port}", proxy.token)
    return {s["id"]: s for s in client.pool("default")["servers"]}


def test_passive_ejection_with_the_max_percentage_guard(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    # Checks of "/" pass on both; real traffic to /status/503 fails on both.
    proxy = start_proxy([b.url for b in backends])
    with proxy.client() as client:
        for _ in range(20):
            assert client.request("GET", "/status/503").status == 503
    servers = view(proxy)
    states = sorted(s["state"] for s in servers.values())
    # One is ejected; ejecting the second would leave the pool empty (max 50%).
    assert states == ["healthy", "unhealthy"], servers
    ejected = next(s for s in servers.values() if s["state"] == "unhealthy")
    assert ejected["reason"] == "ejected for 2s: 5 consecutive 503"
    assert ejected["ejections"] == 1
    assert any("not ejecting" in line for line in proxy.process.lines)
    # Its checks pass, so it is back once the ejection time is over.
    wait_for(lambda: view(proxy)[ejected["id"]]["state"] == "healthy", timeout=6)


def test_failing_checks_go_unhealthy_then_dead_and_come_back(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    port = free_port()
    proxy = start_proxy(
        [f"127.0.0.1:{port}", backends[0].url],
        """
        [pools.default.health]
        interval = 0.1
        fast_interval = 0.1
        down_interval = 0.1
        max_down_interval = 0.2
        dead_interval = 0.3
        fall = 2
        dead_after = 3
        """,
    )
    dead_id = f"127.0.0.1:{port}"
    wait_for(lambda: view(proxy)[dead_id]["state"] == "dead", timeout=5)
    server = view(proxy)[dead_id]
    assert server["reason"] == "3 failed checks: connect refused"
    assert server["last_check"]["ok"] is False
    assert len(server["checks"]) >= 3
    # Nothing is routed to it meanwhile.
    with proxy.client() as client:
        answers = {client.request("GET", "/").body for _ in range(6)}
    assert answers == {b"ok %d\n" % backends[0].port}
    # A backend appears on that port: dead servers are still checked and readmitted.
    revived = start_backend_on(port)
    try:
        wait_for(lambda: view(proxy)[dead_id]["state"] == "healthy", timeout=5)
        assert view(proxy)[dead_id]["reason"].startswith("back:")
    finally:
        revived.process.stop()


def test_a_dead_server_that_registers_again_is_checked_at_once(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    """Dead servers are checked every `dead_interval` (here a minute); a restarted backend
    that registers again is readmitted after its next checks, not a minute later."""
    port = free_port()
    proxy = start_proxy(
        [backends[0].url],
        """
        [pools.default.health]
        interval = 0.1
        fast_interval = 0.1
        down_interval = 0.1
        max_down_interval = 0.1
        dead_interval = 60
        fall = 1
        dead_after = 1
        """,
    )
    client = ApiClient(f"127.0.0.1:{proxy.api_port}", proxy.token)
    client.register("default", "127.0.0.1", port, server_id="late")
    wait_for(lambda: view(proxy)["late"]["state"] == "dead", timeout=5)
    checks = len(view(proxy)["late"]["checks"])
    revived = start_backend_on(port)
    try:
        client.register("default", "127.0.0.1", port, server_id="late")  # 200, not 409
        wait_for(lambda: view(proxy)["late"]["state"] == "healthy", timeout=5)
        assert len(view(proxy)["late"]["checks"]) > checks
    finally:
        revived.process.stop()
