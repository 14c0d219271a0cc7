"""Every button of the Lab page's running experiment, pressed in Chromium, each result read
back from the balancer's API or the stub itself: fail and restore a stub, kill one, start
another in the pool, stop the experiment."""

from __future__ import annotations

import http.client
import json
from typing import Any

from playwright.sync_api import Page, expect

from tests.browser.conftest import Lab
from tests.helpers import wait_for


def api_get(lab: Lab, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", lab.proxy.api_port, timeout=5)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def press(page: Page, stub: str, what: str, said: str) -> None:
    page.locator("tr", has_text=stub).locator(f"button[data-what={what}]").click()
    expect(page.locator("#toasts .toast.ok").last).to_contain_text(said)


def test_each_lab_button_does_what_it_says(lab: Lab, page: Page) -> None:
    lab.start_stubs(3)
    lab.login(page, "/lab")
    page.click("#lab-start button[type=submit]")
    expect(page.locator("#lab-running")).to_be_visible()
    assert api_get(lab, "/api/lab")["running"]["id"] == "e1"

    press(page, "s1", "fail", "stub s1: 503")
    assert lab.stubs.behaviour("s1").status == 503
    wait_for(lambda: lab.states()["s1"] in ("unhealthy", "dead"), 10)
    press(page, "s1", "restore", "stub s1: 200")
    assert lab.stubs.behaviour("s1").status == 200
    wait_for(lambda: lab.states()["s1"] == "healthy", 10)

    press(page, "s2", "kill", "stub s2 killed")
    wait_for(lambda: "s2" not in lab.servers(), 10)  # it deregistered as it stopped
    page.fill("#lab-add-stub input[name=latency]", "2ms")
    page.click("#lab-add-stub button[type=submit]")
    expect(page.locator("#toasts .toast.ok").last).to_contain_text("joining pool default")
    wait_for(lambda: len(lab.servers()) == 3, 10)

    page.click("#lab-running button:has-text('Stop now')")
    expect(page.locator("#toasts .toast.ok").last).to_contain_text("experiment e1 stopped")
    overview = api_get(lab, "/api/lab")
    assert overview["running"] is None
    result = api_get(lab, "/api/lab/results/e1")
    assert result["why"] == "stopped"
    marked = [m["text"] for m in result["markers"]]
    assert "stub s1: 503" in marked
    assert "stub s2 killed" in marked
    assert page.errors == []  # type: ignore[attr-defined]
