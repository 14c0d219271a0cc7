"""The algorithm lab through a real `bunancer serve`: an experiment splits the pool's real
traffic between algorithms over three stubs, one ten times slower, and its result says what
`bench.algorithms` says (peak-ewma keeps the slow stub out of the tail; round-robin does
not). Started and read through the API and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from bench.algorithms import drive
from bunancer.client import ApiClient, ApiError
from stubs.sdk import StubManager
from tests.conftest import Proxy, StartProxy
from tests.helpers import run_cli, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Three stubs: s1 and s2 answer after 2 ms, s3 after 20 ms."""
    manager = StubManager(tmp_path_factory.mktemp("stubs"))
    urls = [manager.start(behaviour={"latency": "2ms"})[0].url for _ in range(2)]
    urls.append(manager.start(behaviour={"latency": "20ms"})[0].url)
    yield urls
    manager.stop_all(timeout=5)


@pytest.fixture(scope="module")
def proxy(start_proxy: StartProxy, stubs: list[str]) -> Proxy:
    return start_proxy(stubs)


@pytest.fixture
def api(proxy: Proxy) -> Iterator[ApiClient]:
    client = ApiClient(f"http://127.0.0.1:{proxy.api_port}", proxy.token)
    yield client
    if client.request("GET", "/api/lab")["running"] is not None:
        client.request("DELETE", "/api/lab")


def traffic(proxy: Proxy, seconds: float, connections: int = 16) -> dict[str, Any]:
    return asyncio.run(drive(proxy.port, "lab", seconds, connections))


@contextlib.contextmanager
def concurrent_traffic(proxy: Proxy, seconds: float) -> Iterator[None]:
    """`traffic` in a thread while the block runs (the CLI blocks until its end)."""
    thread = threading.Thread(target=traffic, args=(proxy, seconds, 8))
    thread.start()
    try:
        yield
    finally:
        thread.join(seconds + 10)


def test_an_experiment_compares_algorithms_on_real_traffic_and_ends_by_itself(
    proxy: Proxy, api: ApiClient, stubs: list[str]
) -> None:
    body = {"algorithms": ["round-robin", "peak-ewma"], "seconds": 5}
    started = api.request("POST", "/api/lab", body)
    assert (started["running"], started["pool"], started["split"]) == (True, "default", "random")
    assert [arm["label"] for arm in started["arms"]] == ["round-robin", "peak-ewma"]
    seen = traffic(proxy, 4.0)
    assert seen["errors"] == 0
    wait_for(lambda: api.request("GET", "/api/lab")["running"] is None, timeout=5)
    listed = api.request("GET", "/api/lab")["results"]
    assert next((r["id"], r["why"]) for r in listed) == (started["id"], "finished")
    result = api.request("GET", f"/api/lab/results/{started['id']}")
    assert len(result["timeline"]) >= 4
    rr, ewma = result["arms"]
    total = rr["requests"] + ewma["requests"]
    assert total >= 0.9 * seen["requests"]  # every request was one arm's
    assert 0.35 <= rr["requests"] / total <= 0.65  # split at random, half and half
    slow = stubs[2].split("://")[1]  # the server's id: its address
    assert 0.25 <= rr["shares"][slow] <= 0.42  # round-robin: a third, slow or not
    assert ewma["shares"].get(slow, 0.0) < 0.2  # peak-ewma: the slow stub is left out
    assert ewma["p99"] < 0.5 * rr["p99"], (ewma["p99"], rr["p99"])
    assert rr["p99"] >= 0.018  # round-robin's tail is the slow stub's 20 ms


def test_a_split_by_client_keeps_each_client_on_its_arm(proxy: Proxy, api: ApiClient) -> None:
    body = {"algorithms": ["round-robin", "least-connections", "p2c"], "split": "client",
            "seconds": 60}  # fmt: skip
    api.request("POST", "/api/lab", body)
    traffic(proxy, 1.0, connections=4)  # all from 127.0.0.1
    stopped = api.request("DELETE", "/api/lab")
    assert stopped["why"] == "stopped"
    answered = [arm["requests"] for arm in stopped["arms"]]
    assert sorted(answered)[:2] == [0, 0]  # one client: one arm took every request
    assert max(answered) > 50


def test_an_arm_takes_its_algorithms_option(proxy: Proxy, api: ApiClient) -> None:
    body = {"algorithms": ["hash:header:X-User", "round-robin"], "seconds": 60}
    started = api.request("POST", "/api/lab", body)
    assert [arm["label"] for arm in started["arms"]] == ["hash:header:X-User", "round-robin"]
    with proxy.client() as client:
        for _ in range(60):
            assert client.request("GET", "/", headers={"X-User": "alice"}).status == 200
    stopped = api.request("DELETE", "/api/lab")
    hashed, rotated = stopped["arms"]
    assert hashed["algorithm"] == "hash"
    assert list(hashed["shares"].values()) == [1.0]  # alice: one server, every time
    assert len(rotated["shares"]) == 3  # round-robin: all three


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"algorithms": ["round-robin"]}, 422, "algorithms"),
        ({"algorithms": ["round-robin", "psychic"]}, 422, "algorithms"),
        ({"algorithms": ["round-robin", "hash:header:"]}, 422, "algorithms"),
        ({"algorithms": ["round-robin", "p2c:fast"]}, 422, "algorithms"),
        ({"algorithms": ["p2c", "random"], "seconds": 1}, 422, "seconds"),
        ({"algorithms": ["p2c", "random"], "split": "hash"}, 422, "split"),
        ({"algorithms": ["p2c", "random"], "pool": "nope"}, 404, None),
    ],
)
def test_a_bad_experiment_is_refused_naming_the_field(
    api: ApiClient, body: dict[str, Any], status: int, field: str | None
) -> None:
    with pytest.raises(ApiError) as refused:
        api.request("POST", "/api/lab", body)
    assert (refused.value.status, refused.value.field) == (status, field)
    assert api.request("GET", "/api/lab")["running"] is None


def test_one_experiment_at_a_time_and_only_with_the_token(proxy: Proxy, api: ApiClient) -> None:
    anonymous = ApiClient(f"http://127.0.0.1:{proxy.api_port}", None)
    body = {"algorithms": ["p2c", "random"], "seconds": 30}
    with pytest.raises(ApiError) as refused:
        anonymous.request("POST", "/api/lab", body)
    assert refused.value.status == 401
    api.request("POST", "/api/lab", body)
    with pytest.raises(ApiError) as busy:
        api.request("POST", "/api/lab", body)
    assert busy.value.status == 409


def test_the_cli_runs_an_experiment_and_prints_each_arm(proxy: Proxy, api: ApiClient) -> None:
    where = ("--api", f"http://127.0.0.1:{proxy.api_port}", "--state-dir", str(proxy.state_dir))
    with concurrent_traffic(proxy, 6.0):
        done = run_cli("lab", "--algorithms", "round-robin,peak-ewma", "--duration", "5", *where)
    assert done.returncode == 0, done.stderr
    assert "on pool default" in done.stdout
    assert "finished" in done.stdout
    rows = [
        line for line in done.stdout.splitlines() if "round-robin" in line or "peak-ewma" in line
    ]
    assert len(rows) == 3  # a row of figures each, and the shares' heading
    assert all(" ms" in row for row in rows[:2])
