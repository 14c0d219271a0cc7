"""The Faults page of a real `bunancer serve`: a rule set from its form hits real traffic,
every page shows the banner while a rule is in effect, the activity feed says what changed,
and only a logged-in admin with the CSRF token may set or end one."""

from __future__ import annotations

import html
import re

import pytest

from tests.conftest import Backend, Proxy, StartProxy
from tests.web.test_dashboard import Client

pytestmark = pytest.mark.slow

RULE_FORM = {"pool": "default", "kind": "abort", "percent": "100", "delay_ms": "",
             "delay_max_ms": "", "status": "503", "header": "", "path_prefix": "", "host": "",
             "seconds": "60"}  # fmt: skip
PAGES = ("/", "/flow", "/routing", "/settings", "/faults")


def banner_shown(text: str) -> bool:
    tag = re.search(r'<div class="fault-banner"[^>]*>', text)
    assert tag is not None, "every page has the banner's element"
    return "hidden" not in tag.group(0)


def status_of(proxy: Proxy) -> int:
    with proxy.client() as client:
        return client.request("GET", "/").status


@pytest.fixture
def proxy(start_proxy: StartProxy, backends: list[Backend]) -> Proxy:
    return start_proxy([backends[0].url])


def test_a_rule_set_on_the_faults_page_hits_traffic_and_shows_on_every_page(
    proxy: Proxy,
) -> None:
    admin = Client(proxy.dashboard_port)
    admin.login(proxy.token)
    assert "No fault rules: traffic flows untouched." in admin.get("/faults").text
    assert not any(banner_shown(admin.get(path).text) for path in PAGES)

    done = admin.post("/actions/faults", RULE_FORM)
    assert done.status == 200, done.text
    assert done.json["message"] == (
        "fault f1 set for 60 s: abort with 503 for 100% of pool default's requests"
    )
    assert status_of(proxy) == 503
    for path in PAGES:
        text = admin.get(path).text
        assert banner_shown(text), path
        assert '<span data-field="fault-count">1</span> rule(s) in effect' in text
    listed = html.unescape(admin.get("/faults").text)
    assert "abort with 503 for 100% of pool default's requests" in listed
    assert 'action="/actions/faults/f1/remove"' in listed
    feed = html.unescape(admin.get("/").text)
    assert "fault f1 set: abort with 503" in feed

    ended = admin.post("/actions/faults/f1/remove")
    assert ended.status == 200, ended.text
    assert status_of(proxy) == 200
    assert not banner_shown(admin.get("/").text)
    assert "fault f1 removed: abort with 503" in html.unescape(admin.get("/").text)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"kind": "delay"}, "delay_ms: a delay rule needs its length in ms"),
        ({"percent": "0"}, "percent: "),
        ({"percent": "lots"}, "percent: not a number"),
        ({"pool": "nope"}, "no pool 'nope'"),
    ],
)
def test_a_bad_form_is_refused_naming_the_field(
    proxy: Proxy, change: dict[str, str], said: str
) -> None:
    admin = Client(proxy.dashboard_port)
    admin.login(proxy.token)
    refused = admin.post("/actions/faults", {**RULE_FORM, **change})
    assert refused.status in (404, 422)
    assert said in refused.json["message"]
    assert not banner_shown(admin.get("/").text)
    assert status_of(proxy) == 200


def test_without_a_login_the_page_reads_but_nothing_can_be_set(proxy: Proxy) -> None:
    anonymous = Client(proxy.dashboard_port)
    page = anonymous.get("/faults")
    assert page.status == 200
    assert "<fieldset disabled>" in page.text
    assert anonymous.post("/actions/faults", RULE_FORM).status == 403
    assert status_of(proxy) == 200
