"""The dashboard in Chromium: live badges and edges, actions from the page, login and CSRF.

Screenshots of every page go to tests/artifacts/ (git-ignored). The time from killing a
stub to its badge changing is printed and written to tests/artifacts/timings.txt.
"""

from __future__ import annotations

import os
import re
import signal
import time

from playwright.sync_api import Page, expect

from tests.browser.conftest import ARTIFACTS, Lab, Traffic
from tests.helpers import wait_for

expect.set_options(timeout=15_000)  # states change within a second; starting a stub takes more


def row(page: Page, key: str) -> str:
    return f'tr.server[data-key="{key}"]'


def badge(page: Page, key: str) -> str:
    return f"{row(page, key)} .badge"


def live(page: Page) -> None:
    expect(page.locator("#live")).to_have_attribute("data-state", "live")


def test_overview_shows_the_servers_and_every_page_renders(lab: Lab, page: Page) -> None:
    lab.start_stubs(2)
    page.goto(lab.url + "/")
    live(page)
    for key in ("default/s1", "default/s2"):
        expect(page.locator(badge(page, key))).to_have_text("healthy")
    expect(page.locator('[data-count="healthy"]')).to_have_text("2")
    expect(page.locator('[data-count="total"]')).to_have_text("2")
    expect(page.locator("text=Log in to act")).to_be_visible()
    lab.screenshot(page, "overview-read-only")

    with Traffic(lab.proxy.port):
        lab.login(page)
        expect(page.locator(".pool .add-stub button")).to_be_visible()
        # Figures move without a reload once traffic flows.
        # A figure above zero (not "0", nor "—" for no figure at all).
        expect(page.locator(f'{row(page, "default/s1")} [data-field="rps"]')).to_have_text(
            re.compile(r"^(?!0$)\d+(\.\d)?k?$")
        )
        lab.screenshot(page, "overview")
        page.goto(lab.url + "/flow")
        live(page)
        expect(page.locator('a.node.server[data-key="default/s1"]')).to_be_visible()
        page.wait_for_function("() => document.querySelectorAll('#dots circle').length > 3")
        lab.screenshot(page, "flow")
        page.click('a.node.server[data-key="default/s2"]')
        expect(page.locator("#panel")).to_be_visible()
        expect(page.locator("#panel h2")).to_have_text("s2")
        lab.screenshot(page, "flow-panel")
        page.goto(lab.url + "/servers/default/s1")
        live(page)
        expect(page.locator("#checks tr.ok").first).to_be_visible()
        page.wait_for_function("() => document.querySelector('#log').textContent.includes('GET /')")
        lab.screenshot(page, "server")
        page.goto(lab.url + "/settings")
        lab.screenshot(page, "settings")
        page.goto(lab.url + "/stubs/s1/log")
        lab.screenshot(page, "stub-log")
    response = page.goto(lab.url + "/servers/default/nope")
    assert response is not None
    assert response.status == 404
    expect(page.locator(".error-page h1")).to_have_text("404")
    lab.screenshot(page, "not-found")
    assert not page.errors  # type: ignore[attr-defined]


def test_killing_a_stub_turns_its_badge_dead_and_removes_its_edge_without_reload(
    lab: Lab, page: Page
) -> None:
    lab.start_stubs(2)
    flow = page.context.new_page()
    page.goto(lab.url + "/")
    flow.goto(lab.url + "/flow")
    live(page)
    live(flow)
    edge = flow.locator('path.server-edge[data-key="default/s2"]')
    expect(edge).to_be_visible()
    expect(page.locator(badge(page, "default/s2"))).to_have_text("healthy")
    for tab in (page, flow):
        tab.evaluate("window.__notReloaded = true")
    victim = next(s for s in lab.stubs.list() if s.id == "s2")
    page.bring_to_front()  # a background tab's timers are throttled to once a second

    started = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    # Live: the badge turns within 3 s (checks every 0.2 s, fall 1), with no reload.
    page.wait_for_function(
        "() => document.querySelector('tr.server[data-key=\"default/s2\"] .badge')"
        ".textContent !== 'healthy'",
        timeout=3_000,
    )
    seconds = time.monotonic() - started
    state = page.locator(badge(page, "default/s2")).text_content()
    assert state in ("unhealthy", "dead")
    # The edge goes dotted at once, then away once the server is declared dead.
    expect(edge).not_to_have_class(re.compile(r"state-healthy"))
    expect(page.locator(badge(page, "default/s2"))).to_have_text("dead")
    dead_after = time.monotonic() - started
    expect(edge).to_be_hidden()
    expect(flow.locator('a.node.server[data-key="default/s2"]')).to_have_class(
        re.compile(r"state-dead")
    )
    expect(page.locator('[data-count="dead"]')).to_have_text("1")
    expect(page.locator('[data-count="healthy"]')).to_have_text("1")
    expect(page.locator(badge(page, "default/s1"))).to_have_text("healthy")
    for tab in (page, flow):
        assert tab.evaluate("window.__notReloaded") is True
    lab.screenshot(page, "overview-stub-killed")
    lab.screenshot(flow, "flow-stub-killed")
    line = (
        f"stub kill -> badge {state}: {seconds:.2f}s; -> dead: {dead_after:.2f}s "
        "(checks every 0.2s, fall 1, dead_after 2)"
    )
    print(line)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with (ARTIFACTS / "timings.txt").open("a") as timings:
        timings.write(line + "\n")


def test_adding_a_stub_from_the_page_makes_it_appear_and_turn_healthy(lab: Lab, page: Page) -> None:
    lab.login(page)
    live(page)
    expect(page.locator('.pool[data-pool="default"] .empty')).to_be_visible()
    page.evaluate("window.__notReloaded = true")
    page.click('.pool[data-pool="default"] .add-stub button')
    expect(page.locator(".toast.ok", has_text="stub s1 started")).to_be_visible()
    expect(page.locator(badge(page, "default/s1"))).to_have_text("healthy")
    expect(page.locator('[data-count="healthy"]')).to_have_text("1")
    expect(page.locator(f"{row(page, 'default/s1')} .pill.stub")).to_be_visible()
    assert page.evaluate("window.__notReloaded") is True
    assert lab.states() == {"s1": "healthy"}
    lab.screenshot(page, "overview-stub-added")

    # Stopping it from the page: it deregisters and its row goes.
    page.click(f"{row(page, 'default/s1')} details.menu summary")
    page.click(f'{row(page, "default/s1")} button:has-text("Stop stub")')
    expect(page.locator(".toast.ok", has_text="stub s1 stopped")).to_be_visible()
    expect(page.locator(row(page, "default/s1"))).to_have_count(0)
    assert lab.states() == {}


def test_a_stub_set_to_503_from_the_page_is_taken_out_or_shows_its_errors(
    lab: Lab, page: Page
) -> None:
    lab.start_stubs(2)
    lab.login(page, "/servers/default/s1")
    live(page)
    errors = page.locator('.server-head [data-field="error_rate"]')
    badge = page.locator(".server-head .badge")
    with Traffic(lab.proxy.port) as traffic:
        expect(errors).to_have_text("0%")
        page.evaluate("window.__notReloaded = true")
        # Traffic and /health fail alike: its active checks take it out at once.
        page.click('button[value="503"]')
        expect(page.locator(".toast.ok", has_text="stub s1: 503")).to_be_visible()
        assert page.evaluate("window.__notReloaded") is True
        assert lab.stubs.get("s1").behaviour().status == 503
        expect(badge).to_have_text(re.compile(r"^(unhealthy|dead)$"))
        expect(page.locator('.server-head [data-field="reason"]')).to_contain_text("status 503")
        # Traffic fails while /health passes: only passive checks can see it, on real
        # answers, so its error rate rises (retries are off here: clients see them too).
        page.click('button[value="ok"]')  # back to normal
        expect(badge).to_have_text("healthy")
        form = page.locator("form.stub-form")
        form.locator('input[name="status"]').fill("503")
        form.locator('select[name="health"]').select_option("ok")
        form.locator("button", has_text="Apply").click()
        expect(page.locator(".toast.ok", has_text="503, health ok")).to_be_visible()
        assert lab.stubs.get("s1").behaviour().health == "ok"
        page.wait_for_function(
            "() => parseFloat(document.querySelector('.server-head [data-field=\"error_rate\"]')"
            ".textContent) > 0"
        )
        wait_for(lambda: traffic.answers.get(503, 0) > 0, 5)
        lab.screenshot(page, "server-503")
        page.goto(lab.url + "/")
        cell = page.locator(f'{row(page, "default/s1")} [data-field="error_rate"]')
        expect(cell).not_to_have_text(re.compile(r"^(0%|—)$"))
        lab.screenshot(page, "overview-503")


def test_login_and_csrf_are_enforced_in_the_browser(lab: Lab, page: Page) -> None:
    lab.start_stubs(1)
    page.goto(lab.url + "/")
    live(page)
    expect(page.locator(".add-stub")).to_have_count(0)  # read-only
    post = """async ([path, body, token]) => {
        const headers = {"Content-Type": "application/x-www-form-urlencoded",
                         "Accept": "application/json"};
        if (token) headers["X-CSRF-Token"] = token;
        const response = await fetch(path, {method: "POST", body, headers});
        return response.status;
    }"""
    weight = "/actions/servers/default/s1/weight"
    assert page.evaluate(post, [weight, "weight=2", ""]) == 403  # no session

    page.goto(lab.url + "/login")
    page.fill("input[name=token]", "wrong-token-wrong-token")
    page.click("form[action='/login'] button[type=submit]")
    expect(page.locator(".login .error")).to_have_text("That is not the admin token.")
    lab.screenshot(page, "login-refused")

    lab.login(page)
    expect(page.locator(".pool .add-stub button")).to_be_visible()
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies[f"bunancer_session_{lab.proxy.dashboard_port}"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # scripts cannot read it

    assert page.evaluate(post, [weight, "weight=2", ""]) == 403  # session, no CSRF token
    assert page.evaluate(post, [weight, "weight=2", "forged"]) == 403
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert lab.servers()["s1"]["weight"] == 1
    assert page.evaluate(post, [weight, "weight=2", token]) == 200
    assert lab.servers()["s1"]["weight"] == 2
    # The page learns of it by its events (this fetch was not a form: no toast, no refresh).
    expect(page.locator(f'{row(page, "default/s1")} [data-field="weight"]')).to_have_text("2")

    page.click("form.logout button")
    page.wait_for_url(lab.url + "/")
    expect(page.locator("text=Log in to act")).to_be_visible()
    assert page.evaluate(post, [weight, "weight=3", token]) == 403  # the session is gone
    assert lab.servers()["s1"]["weight"] == 2
