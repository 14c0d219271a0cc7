"""Why this server, through a real `bunancer serve`: with every selection recorded
(`decision_sample = 1`), the API lists each with its candidates, their estimates and the
servers left out with the reason; with the default, 1 in 1,000."""

from __future__ import annotations

import html
import json
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from bunancer.client import ApiClient, ApiError
from tests.conftest import Backend, Proxy, StartProxy
from tests.helpers import FAST_CHECKS, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dead_port() -> Iterator[int]:
    with socket.socket() as probe:  # bound, never listening: connections are refused
        probe.bind(("127.0.0.1", 0))
        yield probe.getsockname()[1]


@pytest.fixture(scope="module")
def proxy(start_proxy: StartProxy, backends: list[Backend], dead_port: int) -> Proxy:
    extra = FAST_CHECKS + "\n[pools.default.balancing]\ndecision_sample = 1\n"
    servers = [b.url for b in backends] + [f"http://127.0.0.1:{dead_port}"]
    return start_proxy(servers, extra, algorithm="least-connections")


def test_every_selection_is_recorded_with_what_it_was_made_from(
    proxy: Proxy, backends: list[Backend], dead_port: int
) -> None:
    api = ApiClient(f"http://127.0.0.1:{proxy.api_port}", proxy.token)
    dead = f"127.0.0.1:{dead_port}"
    wait_for(lambda: api.request("GET", f"/api/pools/default/servers/{dead}")["state"] != "pending")

    def newest_after_a_request() -> dict[str, Any] | None:
        """The newest decision once it saw the dead server out (with --workers, a worker
        learns the state from its next snapshot)."""
        with proxy.client() as client:
            assert client.request("GET", "/").status == 200
        found = api.request("GET", "/api/decisions?pool=default")
        out = found and found[0]["left_out"] and found[0]["left_out"][0]["state"] != "pending"
        return found[0] if out else None

    decision = wait_for(newest_after_a_request)
    assert decision["algorithm"] == "least-connections"
    live = {f"127.0.0.1:{b.port}" for b in backends}
    assert decision["chosen"] in live
    assert {c["id"] for c in decision["candidates"]} == live
    assert all(c["estimate"] == 1.0 and c["in_flight"] == 0 for c in decision["candidates"])
    assert [s["id"] for s in decision["left_out"]] == [dead]
    assert decision["left_out"][0]["state"] in ("unhealthy", "dead")
    assert "connect refused" in decision["left_out"][0]["reason"]
    about = api.request("GET", f"/api/decisions?server={dead}&limit=2")
    assert len(about) == 2  # it is left out of every one
    assert api.request("GET", "/api/decisions?pool=elsewhere") == []
    with pytest.raises(ApiError) as refused:
        api.request("GET", "/api/decisions?limit=0")
    assert refused.value.field == "limit"

    # The dashboard's page: the newest open, its candidates, the dead one and its reason.
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.dashboard_port}/decisions") as page:
        text = html.unescape(page.read().decode())
    assert "least-connections chose" in text
    assert f'>{dead}</a></td><td colspan="3">' in text  # left out
    assert "connect refused" in text
    url = f"http://127.0.0.1:{proxy.dashboard_port}/decisions?server={decision['chosen']}"
    with urllib.request.urlopen(url) as page:
        assert f"about <code>{decision['chosen']}</code>" in page.read().decode()


def test_by_default_one_selection_in_a_thousand_is_recorded(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    proxy = start_proxy([b.url for b in backends])
    api = ApiClient(f"http://127.0.0.1:{proxy.api_port}", proxy.token)
    with proxy.client() as client:
        for _ in range(999):
            client.request("GET", "/")
        assert api.request("GET", "/api/decisions") == []
        client.request("GET", "/")  # the 1,000th
    wait_for(lambda: len(api.request("GET", "/api/decisions")) == 1)


def test_a_request_with_the_token_in_x_bunancer_debug_is_told_why(
    start_proxy: StartProxy, backends: list[Backend], dead_port: int
) -> None:
    servers = [b.url for b in backends] + [f"http://127.0.0.1:{dead_port}"]
    proxy = start_proxy(servers, FAST_CHECKS, algorithm="least-connections")
    api = ApiClient(f"http://127.0.0.1:{proxy.api_port}", proxy.token)
    dead = f"127.0.0.1:{dead_port}"
    wait_for(lambda: api.request("GET", f"/api/pools/default/servers/{dead}")["state"] != "pending")

    def ask(value: str | None) -> tuple[str | None, dict[str, str]]:
        """The X-Bunancer-Decision answered, and the headers the backend saw."""
        headers = {} if value is None else {"X-Bunancer-Debug": value}
        with proxy.client() as client:
            answer = client.request("GET", "/echo-headers", headers=headers)
        seen = {name.lower(): v for name, v in json.loads(answer.body)["headers"]}
        return answer.header("X-Bunancer-Decision"), seen

    def told() -> str | None:  # (a worker learns the token with a snapshot, within a second)
        return ask(proxy.token)[0]

    decision = wait_for(told)
    assert decision.startswith("pool=default; algorithm=least-connections; chosen=127.0.0.1:")
    for backend in backends:
        assert f"127.0.0.1:{backend.port} estimate=1 in_flight=0 weight=1" in decision
    assert f"left_out={dead} " in decision
    _, seen = ask(proxy.token)
    assert "x-bunancer-debug" not in seen  # the token never goes upstream
    for refused in (None, "not-the-token", proxy.token[:-1]):
        header, seen = ask(refused)
        assert header is None
        assert "x-bunancer-debug" not in seen
    # A retry is told too: the first backend fails this path with a 503, the other answers.
    first, second = (f"127.0.0.1:{b.port}" for b in backends)
    lines: list[str] = []
    for _ in range(3):  # (least-connections, in turn: one of three goes to the first first)
        with proxy.client() as client:
            answer = client.request(
                "GET", f"/fail-on/{backends[0].port}/503", headers={"X-Bunancer-Debug": proxy.token}
            )
        assert answer.status == 200
        lines += answer.header_all("X-Bunancer-Decision")
    assert f"retry after {first} (status 503): chosen={second}" in lines
    retried = wait_for(
        lambda: [d for d in api.request("GET", "/api/decisions") if d["retries"]], timeout=5
    )
    assert retried[0]["retries"] == [{"after": first, "status": 503, "chosen": second}]
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.dashboard_port}/decisions") as page:
        text = page.read().decode()
    assert f"Retried: after <code>{first}</code> (status 503) to <code>{second}</code>" in text

    # Sampling is 1 in 1,000: those recorded were the asked ones (collected once a second).
    wait_for(lambda: len(api.request("GET", "/api/decisions")) >= 2)
