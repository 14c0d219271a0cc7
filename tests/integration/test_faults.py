"""The lab's fault rules on real traffic: set through the API and the CLI of a real
`bunancer serve`, met by real requests on the proxy port, ended by hand or by their expiry."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from bunancer.client import ApiClient, ApiError
from tests.conftest import Backend, Proxy, StartProxy
from tests.helpers import run_cli, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def proxy(start_proxy: StartProxy, backends: list[Backend]) -> Proxy:
    return start_proxy([backends[0].url])


@pytest.fixture
def api(proxy: Proxy) -> Iterator[ApiClient]:
    client = ApiClient(f"http://127.0.0.1:{proxy.api_port}", proxy.token)
    yield client
    for rule in client.request("GET", "/api/faults"):  # each test starts without rules
        client.request("DELETE", f"/api/faults/{rule['id']}")


def add(api: ApiClient, **rule: Any) -> dict[str, Any]:
    return api.request("POST", "/api/faults", {"pool": "default", **rule})


def status_of(proxy: Proxy, path: str = "/", headers: dict[str, str] | None = None) -> int:
    with proxy.client() as client:
        return client.request("GET", path, headers=headers).status


def test_an_abort_rule_answers_its_status_until_it_is_removed(proxy: Proxy, api: ApiClient) -> None:
    rule = add(api, kind="abort", status=418, seconds=60)
    assert (rule["kind"], rule["status"], rule["percent"]) == ("abort", 418, 100.0)
    assert [r["id"] for r in api.request("GET", "/api/faults")] == [rule["id"]]
    assert [status_of(proxy) for _ in range(5)] == [418] * 5
    api.request("DELETE", f"/api/faults/{rule['id']}")
    assert status_of(proxy) == 200
    assert api.request("GET", "/api/faults") == []


def test_a_rule_hits_only_requests_with_its_header_and_path(proxy: Proxy, api: ApiClient) -> None:
    add(api, kind="abort", status=503, header="X-Chaos", path_prefix="/api/")
    assert status_of(proxy, "/api/orders") == 200  # no header
    assert status_of(proxy, "/api/orders", {"x-chaos": "1"}) == 503
    assert status_of(proxy, "/static/app.js", {"X-Chaos": "1"}) == 200  # another path


def test_a_rule_for_a_host_leaves_other_hosts_alone(proxy: Proxy, api: ApiClient) -> None:
    rule = add(api, kind="abort", status=502, host="Shop.Example")
    assert rule["host"] == "shop.example"
    assert status_of(proxy, "/", {"Host": "shop.example:8080"}) == 502
    assert status_of(proxy, "/", {"Host": "blog.example"}) == 200


def test_a_share_of_the_requests_is_hit(proxy: Proxy, api: ApiClient) -> None:
    add(api, kind="abort", status=500, percent=50)
    statuses = [status_of(proxy) for _ in range(200)]
    hit = statuses.count(500)
    assert 60 <= hit <= 140, hit  # 50% of 200: 100, sd 7
    assert statuses.count(200) == 200 - hit


def test_a_delay_holds_the_request_then_it_goes_through(proxy: Proxy, api: ApiClient) -> None:
    add(api, kind="delay", delay_ms=300, delay_max_ms=400)
    with proxy.client() as client:
        started = time.monotonic()
        answer = client.request("GET", "/")
        took = time.monotonic() - started
    assert answer.status == 200
    assert answer.body.startswith(b"ok ")  # the backend answered, after the wait
    assert 0.3 <= took < 2.0, took


def test_a_reset_rule_resets_the_client_connection(proxy: Proxy, api: ApiClient) -> None:
    add(api, kind="reset")
    with proxy.client() as client:
        client.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            client.sock.recv(1024)


def test_a_rule_ends_by_itself_at_its_expiry(proxy: Proxy, api: ApiClient) -> None:
    add(api, kind="abort", status=503, seconds=1)
    assert status_of(proxy) == 503
    wait_for(lambda: api.request("GET", "/api/faults") == [], timeout=5)
    assert status_of(proxy) == 200
    proxy.process.wait_line(r"fault f\d+ expired: abort with 503 for 100% of pool default")


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"kind": "abort", "percent": 0}, 422, "percent"),
        ({"kind": "abort", "percent": 101}, 422, "percent"),
        ({"kind": "delay"}, 422, "delay_ms"),
        ({"kind": "delay", "delay_ms": 100, "delay_max_ms": 50}, 422, "delay_max_ms"),
        ({"kind": "abort", "delay_ms": 100}, 422, "delay_ms"),
        ({"kind": "explode"}, 422, "kind"),
        ({"kind": "abort", "seconds": 7200}, 422, "seconds"),
        ({"kind": "abort", "header": "bad header"}, 422, "header"),
        ({"kind": "abort", "host": "bad/host"}, 422, "host"),
        ({"kind": "abort", "pool": "nope"}, 404, None),
    ],
)
def test_a_bad_rule_is_refused_naming_the_field(
    api: ApiClient, body: dict[str, Any], status: int, field: str | None
) -> None:
    with pytest.raises(ApiError) as refused:
        add(api, **body)
    assert refused.value.status == status
    assert refused.value.field == field
    assert api.request("GET", "/api/faults") == []


def test_setting_a_rule_needs_the_token(proxy: Proxy, api: ApiClient) -> None:
    anonymous = ApiClient(f"http://127.0.0.1:{proxy.api_port}", None)
    with pytest.raises(ApiError) as refused:
        anonymous.request("POST", "/api/faults", {"pool": "default", "kind": "reset"})
    assert refused.value.status == 401
    assert status_of(proxy) == 200


def test_the_cli_sets_lists_and_removes_rules(proxy: Proxy, api: ApiClient) -> None:
    where = ("--api", f"http://127.0.0.1:{proxy.api_port}", "--state-dir", str(proxy.state_dir))
    added = run_cli("faults", "add", "abort", "--status", "502", "--percent", "100",
                    "--header", "X-Lab", "--for", "30", *where)  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "abort with 502 for 100% of pool default's requests with header x-lab" in added.stdout
    assert status_of(proxy, "/", {"X-Lab": "yes"}) == 502
    listed = run_cli("faults", "list", *where)
    assert "abort with 502" in listed.stdout
    removed = run_cli("faults", "remove", "--all", *where)
    assert removed.returncode == 0, removed.stderr
    assert status_of(proxy, "/", {"X-Lab": "yes"}) == 200
    assert "no fault rules" in run_cli("faults", "list", *where).stdout
    bad = run_cli("faults", "add", "delay", *where)
    assert bad.returncode == 1
    assert "delay_ms" in bad.stderr
