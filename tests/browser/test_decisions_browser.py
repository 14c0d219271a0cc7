"""The Why page in Chromium: every selection recorded on a pool of three stubs, one of them
failing its checks; the newest decision is open with its candidates and the one left out
with its reason, and a server's link filters the list to it. Screenshot in tests/artifacts/."""

from __future__ import annotations

import http.client
import json

from playwright.sync_api import Page, expect

from tests.browser.conftest import Lab
from tests.helpers import wait_for


def patch_pool(lab: Lab, body: dict[str, object]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", lab.proxy.api_port, timeout=5)
    try:
        headers = {"Authorization": f"Bearer {lab.proxy.token}", "Content-Type": "application/json"}
        conn.request("PATCH", "/api/pools/default", json.dumps(body), headers)
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def api_get(lab: Lab, path: str) -> list[dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", lab.proxy.api_port, timeout=5)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())  # type: ignore[no-any-return]
    finally:
        conn.close()


def test_the_why_page_shows_what_each_selection_weighed(lab: Lab, page: Page) -> None:
    lab.start_stubs(3)
    patch_pool(lab, {"algorithm": "least-connections", "balancing": {"decision_sample": 1}})
    lab.stubs.set("s3", status=503)  # fails its checks: left out
    wait_for(lambda: lab.states()["s3"] in ("unhealthy", "dead"), 10)
    for _ in range(5):
        conn = http.client.HTTPConnection("127.0.0.1", lab.proxy.port, timeout=5)
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
        conn.close()
    wait_for(lambda: len(api_get(lab, "/api/decisions")) >= 5)  # (collected once a second)
    page.goto(f"{lab.url}/decisions")
    newest = page.locator("details.decision").first
    expect(newest).to_have_attribute("open", "")
    expect(newest.locator("summary")).to_contain_text("least-connections chose")
    expect(newest.locator("tr.left-out")).to_contain_text("s3")
    expect(newest.locator("tr.left-out")).to_contain_text("503")  # its reason
    expect(newest.locator("tr.chosen")).to_have_count(1)
    lab.screenshot(page, "why-this-server")
    newest.locator("tr.left-out a").click()
    expect(page.locator(".flow-head")).to_contain_text("about s3")
    assert page.errors == []  # type: ignore[attr-defined]
