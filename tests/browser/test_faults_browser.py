"""The Faults page in Chromium: a rule set from its form hits the traffic, and a page open
elsewhere shows the banner and the feed line within a second (over SSE, without a reload);
ending the rule takes both away. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import re

from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.conftest import Lab, Traffic
from tests.browser.test_lab_buttons_browser import api_get
from tests.helpers import wait_for

SET = re.compile(r"^fault f1 set for 60 s: abort with 503 for 50% of pool default's requests$")


def test_a_rule_set_from_the_faults_page_shows_everywhere_and_ends(
    lab: Lab, page: Page, context: BrowserContext
) -> None:
    lab.start_stubs(2)
    watcher = context.new_page()  # another tab, left on the overview
    watcher.goto(lab.url)
    banner = watcher.locator("#fault-banner")
    expect(banner).to_be_hidden()
    expect(watcher.locator("#live")).to_have_attribute("data-state", "live")

    lab.login(page, "/faults")
    expect(page.locator("#main")).to_contain_text("No fault rules: traffic flows untouched.")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    with Traffic(lab.proxy.port) as traffic:
        page.select_option("select[name=kind]", "abort")
        page.fill("input[name=percent]", "50")
        page.fill("input[name=status]", "503")
        page.click("#new-fault button[type=submit]")
        expect(page.locator("#toasts .toast.ok").last).to_have_text(SET)
        expect(page.locator("tr[data-fault=f1]")).to_contain_text("abort with 503 for 50%")
        (rule,) = api_get(lab, "/api/faults")  # what the form set, as the API has it
        assert (rule["id"], rule["kind"], rule["status"], rule["percent"]) == (
            "f1",
            "abort",
            503,
            50.0,
        )
        expect(banner).to_be_visible(timeout=2_000)  # live: no reload of the watcher
        expect(banner).to_contain_text("1 rule(s) in effect")
        expect(watcher.locator("#feed")).to_contain_text("fault f1 set: abort with 503")
        wait_for(lambda: traffic.answers.get(503, 0) >= 5 and traffic.answers.get(200, 0) >= 5)
        lab.screenshot(watcher, "faults-banner-on-the-overview")
        lab.screenshot(page, "faults-page-with-a-rule")

        page.click("tr[data-fault=f1] button[type=submit]")
        expect(page.locator("#toasts .toast.ok").last).to_contain_text("fault f1 removed")
        expect(banner).to_be_hidden(timeout=2_000)
        expect(watcher.locator("#feed")).to_contain_text("fault f1 removed: abort with 503")
        expect(page.locator("#main")).to_contain_text("No fault rules")
        assert api_get(lab, "/api/faults") == []
    assert page.errors == []  # type: ignore[attr-defined]
    assert watcher.url == f"{lab.url}/"  # never reloaded
