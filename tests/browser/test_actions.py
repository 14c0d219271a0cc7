"""Every action button and form of the dashboard, pressed in Chromium, checked through the API.

A bug shipped because no test pressed the admin buttons (a `<button name="action">` shadowed
`form.action`, and the script posted to "/[object RadioNodeList]"). So here each action is
pressed on every page that shows it (the same macro in other markup counts apart), and
`act` checks what the script did: one ok toast with the action's message, no error toast,
no page error, no page load. The result itself is then read from the balancer's API
(GET /api/pools/<pool>) or from the stub, not from the page.
"""

from __future__ import annotations

import http.client
import json
import re

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.browser.conftest import Lab
from tests.helpers import wait_for

expect.set_options(timeout=15_000)  # states change within a second; starting a stub takes more

STARTED = r"^stub (s\d+) started on 127\.0\.0\.1:\d+, joining pool default$"
# A 503 stub fails its checks ("auto" health follows the traffic status): unhealthy at once
# (fall 1), dead after two more.
DOWN = ("unhealthy", "dead")


MAIN = "#main > :first-child"  # the script fetches a page's content again after an action
PANEL = "#panel > .panel-body"  # in the flow view it reloads the side panel instead


@pytest.fixture
def lab(lab: Lab) -> Lab:
    """The conftest's lab, its dead servers checked every 0.3 s instead of every 10 s (set
    through the API before any server joins): a stub told to fail is dead within a second
    (dead_after 2), and is to be healthy again soon after it is told to answer 200."""
    conn = http.client.HTTPConnection("127.0.0.1", lab.proxy.api_port, timeout=5)
    try:
        conn.request(
            "PATCH",
            "/api/pools/default",
            json.dumps({"health": {"dead_interval": 0.3}}),
            {"Authorization": f"Bearer {lab.proxy.token}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        assert response.status == 200, response.read()
    finally:
        conn.close()
    assert lab.pool()["health"]["dead_interval"] == 0.3
    return lab


def act(
    page: Page, target: Locator, message: str | re.Pattern[str], redrawn: str | None = MAIN
) -> str:
    """Press `target` and check the script handled it: one ok toast saying `message` (its
    text is returned), no error toast, no page error, and the page was not loaded again.
    When `redrawn` is given, wait until the element it selects has been replaced (the page
    or panel fetched again), so that the next form filled in is not redrawn under the test's
    hands."""
    page.evaluate(
        """(redrawn) => {
            window.__notReloaded = true;
            document.querySelectorAll("#toasts .toast").forEach((t) => t.remove());
            if (redrawn) document.querySelector(redrawn).setAttribute("data-stale", "");
        }""",
        redrawn,
    )
    target.click()
    toast = page.locator("#toasts .toast.ok")
    expect(toast).to_have_text([message])
    said = toast.text_content() or ""
    expect(page.locator("#toasts .toast.error")).to_have_count(0)
    if redrawn:
        expect(page.locator("[data-stale]")).to_have_count(0)
    assert page.evaluate("window.__notReloaded") is True, "the page was loaded again"
    assert page.errors == []  # type: ignore[attr-defined]
    return said


def live(page: Page) -> None:
    assert page.errors == []  # type: ignore[attr-defined]
    expect(page.locator("#live")).to_have_attribute("data-state", "live")


def admin(scope: Locator, what: str) -> Locator:
    return scope.locator(f'form[action$="/admin"] button[value="{what}"]')


def button(scope: Locator, text: str) -> Locator:
    return scope.locator("button", has_text=re.compile(f"^{re.escape(text)}$"))


def behaviour(lab: Lab, stub_id: str) -> tuple[int, str, float]:
    """(status, latency, failure rate) of a stub, asked of the stub itself."""
    b = lab.stubs.get(stub_id).behaviour()
    return b.status, str(b.latency), b.fail_rate


def state_becomes(lab: Lab, server_id: str, *states: str) -> None:
    try:
        wait_for(lambda: lab.states().get(server_id) in states, 10)
    except AssertionError:
        server = lab.servers().get(server_id, {})
        raise AssertionError(
            f"{server_id} not {' or '.join(states)} within 10 s: "
            f"{server.get('state')} ({server.get('reason')})"
        ) from None


def gone(lab: Lab, server_id: str) -> None:
    wait_for(lambda: server_id not in lab.states(), 10)


def added_stub(lab: Lab, toast: str, before: set[str]) -> str:
    """The id of the stub the toast announced, once it is healthy in the pool."""
    match = re.match(STARTED, toast)
    assert match, toast
    stub_id = match.group(1)
    assert stub_id not in before
    state_becomes(lab, stub_id, "healthy")
    assert set(lab.states()) == before | {stub_id}
    return stub_id


# -- the overview: each row's Actions menu, and the pool header -----------------------------


def test_overview_row_menu_and_pool_header_actions(lab: Lab, page: Page) -> None:
    lab.start_stubs(2)
    lab.login(page)
    live(page)

    def menu(key: str) -> Locator:
        row = page.locator(f'tr.server[data-key="{key}"]')
        details = row.locator("details.menu")
        if details.get_attribute("open") is None:  # the script closes it after an action
            row.locator("details.menu summary").click()
        expect(details).to_have_attribute("open", "")
        return row.locator(".menu-body")

    s1 = page.locator('tr.server[data-key="default/s1"]')

    expect(admin(menu("default/s1"), "enable")).to_be_hidden()  # only for a server out of rotation
    act(page, admin(menu("default/s1"), "drain"), "default/s1: draining")
    assert lab.states()["s1"] == "draining"
    expect(s1.locator(".badge")).to_have_text("draining")
    expect(admin(menu("default/s1"), "drain")).to_be_hidden()

    act(page, admin(menu("default/s1"), "disable"), "default/s1: disabled")
    assert lab.states()["s1"] == "disabled"
    expect(s1.locator(".badge")).to_have_text("disabled")

    # Enable shows only while the server is disabled or draining.
    act(page, admin(menu("default/s1"), "enable"), "default/s1: enabled")
    assert lab.states()["s1"] in ("pending", "healthy")
    state_becomes(lab, "s1", "healthy")
    expect(page.locator("#feed")).to_contain_text(
        "default/s1: disabled → pending (enabled by admin)"
    )
    expect(page.locator("#feed")).to_contain_text("default/s1: pending → healthy")
    expect(s1.locator(".badge")).to_have_text("healthy")
    assert lab.states()["s2"] == "healthy"  # the other row was left alone

    # The stub toggle: "Answer 503", then (the page shows the new status) "Answer 200".
    act(page, button(menu("default/s1"), "Answer 503"), "stub s1: 503")
    assert behaviour(lab, "s1")[0] == 503
    state_becomes(lab, "s1", *DOWN)
    act(page, button(menu("default/s1"), "Answer 200"), "stub s1: 200")
    assert behaviour(lab, "s1")[0] == 200
    state_becomes(lab, "s1", "healthy")
    expect(button(menu("default/s1"), "Answer 503")).to_be_visible()

    add = page.locator('.pool[data-pool="default"] header .add-stub button')
    new = added_stub(lab, act(page, add, re.compile(STARTED)), {"s1", "s2"})
    expect(page.locator(f'tr.server[data-key="default/{new}"] .badge')).to_have_text("healthy")
    expect(page.locator('[data-count="total"]')).to_have_text("3")

    act(page, button(menu("default/s2"), "Stop stub"), "stub s2 stopped")
    gone(lab, "s2")
    assert "s2" not in {s.id for s in lab.stubs.list()}
    expect(page.locator('tr.server[data-key="default/s2"]')).to_have_count(0)
    assert lab.states() == {"s1": "healthy", new: "healthy"}
    lab.screenshot(page, "actions-overview")


# -- the flow view: the side panel of a server node and of a pool node -------------------------


def test_flow_panel_actions_for_a_server_and_a_pool(lab: Lab, page: Page) -> None:
    lab.start_stubs(2)
    lab.login(page, "/flow")
    live(page)
    panel = page.locator("#panel")

    def open_node(selector: str, title: str) -> None:
        if panel.is_visible():  # it lies over the nodes on the right: close it first
            panel.locator("[data-close-panel]").click()
            expect(panel).to_be_hidden()
        page.click(selector)
        expect(panel).to_be_visible()
        expect(panel.locator("h2")).to_have_text(title)

    open_node('a.node.server[data-key="default/s1"]', "s1")
    node = page.locator('a.node.server[data-key="default/s1"]')

    act(page, admin(panel, "drain"), "default/s1: draining", PANEL)
    assert lab.states()["s1"] == "draining"
    expect(panel.locator(".badge")).to_have_text("draining")
    expect(node).to_have_class(re.compile(r"\bstate-draining\b"))

    act(page, admin(panel, "disable"), "default/s1: disabled", PANEL)
    assert lab.states()["s1"] == "disabled"
    expect(panel.locator(".badge")).to_have_text("disabled")

    act(page, admin(panel, "enable"), "default/s1: enabled", PANEL)
    assert lab.states()["s1"] in ("pending", "healthy")
    state_becomes(lab, "s1", "healthy")
    expect(panel.locator(".badge")).to_have_text("healthy")

    weight = panel.locator('form[action$="/weight"]')
    weight.locator("input[name=weight]").fill("5")
    act(page, button(weight, "Set"), "default/s1: weight 5", PANEL)
    assert lab.servers()["s1"]["weight"] == 5
    assert lab.servers()["s2"]["weight"] == 1
    expect(panel.locator('dd[data-field="weight"]')).to_have_text("5")

    form = panel.locator("form.stub-form")
    form.locator("input[name=status]").fill("500")
    act(page, button(form, "Apply"), "stub s1: 500", PANEL)
    assert behaviour(lab, "s1") == (500, "0", 0.0)
    state_becomes(lab, "s1", *DOWN)

    act(page, button(panel, "Answer 503"), "stub s1: 503", PANEL)
    assert behaviour(lab, "s1") == (503, "0", 0.0)
    act(page, button(panel, "Slow down"), "stub s1: 503 200-400ms", PANEL)
    assert behaviour(lab, "s1") == (503, "200-400ms", 0.0)
    act(page, button(panel, "Back to normal"), "stub s1: 200", PANEL)
    assert behaviour(lab, "s1") == (200, "0", 0.0)
    state_becomes(lab, "s1", "healthy")

    open_node('a.node.server[data-key="default/s2"]', "s2")
    act(page, button(panel, "Stop stub"), "stub s2 stopped", PANEL)
    gone(lab, "s2")
    expect(page.locator('a.node.server[data-key="default/s2"]')).to_have_count(0)

    open_node('a.node.pool[data-pool="default"]', "pool default")
    toast = act(page, panel.locator(".add-stub button"), re.compile(STARTED), PANEL)
    new = added_stub(lab, toast, {"s1"})
    expect(page.locator(f'a.node.server[data-key="default/{new}"]')).to_be_visible()

    assert lab.pool()["algorithm"] != "least-connections"
    settings = panel.locator('form[action$="/settings"]')
    settings.locator("select[name=algorithm]").select_option("least-connections")
    act(page, button(settings, "Set"), "pool default: algorithm least-connections", PANEL)
    assert lab.pool()["algorithm"] == "least-connections"
    expect(page.locator('a.node.pool [data-pool-field="algorithm"]')).to_have_text(
        "least-connections"
    )
    lab.screenshot(page, "actions-flow")


# -- a server's page ---------------------------------------------------------------------------


def test_server_page_actions(lab: Lab, page: Page) -> None:
    lab.start_stubs(2)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))  # the fixture accepts
    lab.login(page, "/servers/default/s1")
    live(page)
    actions = page.locator("section.actions")
    head = page.locator("section.server-head")

    act(page, admin(actions, "drain"), "default/s1: draining")
    assert lab.states()["s1"] == "draining"
    expect(head.locator(".badge")).to_have_text("draining")

    act(page, admin(actions, "disable"), "default/s1: disabled")
    assert lab.states()["s1"] == "disabled"
    expect(head.locator(".badge")).to_have_text("disabled")

    act(page, admin(actions, "enable"), "default/s1: enabled")
    assert lab.states()["s1"] in ("pending", "healthy")
    state_becomes(lab, "s1", "healthy")
    expect(page.locator("#feed")).to_contain_text(
        "default/s1: disabled → pending (enabled by admin)"
    )
    expect(head.locator(".badge")).to_have_text("healthy")

    form = actions.locator("form.stub-form")
    form.locator("input[name=status]").fill("502")
    act(page, button(form, "Apply"), "stub s1: 502")
    assert behaviour(lab, "s1") == (502, "0", 0.0)
    state_becomes(lab, "s1", *DOWN)
    act(page, button(actions, "Answer 503"), "stub s1: 503")
    assert behaviour(lab, "s1") == (503, "0", 0.0)
    act(page, button(actions, "Slow down"), "stub s1: 503 200-400ms")
    assert behaviour(lab, "s1") == (503, "200-400ms", 0.0)
    act(page, button(actions, "Back to normal"), "stub s1: 200")
    assert behaviour(lab, "s1") == (200, "0", 0.0)
    state_becomes(lab, "s1", "healthy")

    # After the stub's forms: the weight's change comes back as an event that redraws the
    # page again, which would wipe a form being filled in.
    weight = actions.locator('form[action$="/weight"]')
    weight.locator("input[name=weight]").fill("3")
    act(page, button(weight, "Set"), "default/s1: weight 3")
    assert lab.servers()["s1"]["weight"] == 3
    expect(head.locator('[data-field="weight"]')).to_have_text("3")

    act(page, button(actions, "Remove from pool"), "default/s1: removed", None)
    assert dialogs[-1] == "Remove s1 from pool default? It drains first."
    gone(lab, "s1")
    assert lab.states() == {"s2": "healthy"}
    expect(page.locator(".banner")).to_have_text("This server is no longer in the pool.")

    page.goto(lab.url + "/servers/default/s2")
    live(page)
    act(page, button(actions, "Stop stub"), "stub s2 stopped", None)
    assert dialogs[-1] == "Stop stub s2? It leaves the pool, then exits."
    gone(lab, "s2")
    assert "s2" not in {s.id for s in lab.stubs.list()}
    assert lab.states() == {}
    expect(page.locator(".banner")).to_have_text("This server is no longer in the pool.")


# -- settings ----------------------------------------------------------------------------------


def test_settings_save_changes_algorithm_health_and_weight(lab: Lab, page: Page) -> None:
    lab.start_stubs(2)
    lab.login(page, "/settings")
    live(page)
    before = lab.pool()
    assert before["algorithm"] != "weighted-round-robin"
    assert before["health"]["interval"] != 0.3
    form = page.locator('form.settings[data-pool="default"]')
    form.locator("select[name=algorithm]").select_option("weighted-round-robin")
    form.locator('input[name="health.interval"]').fill("0.3")
    form.locator('input[name="weight.s2"]').fill("4")

    act(
        page,
        button(form, "Save default"),
        "pool default: algorithm weighted-round-robin, health checks, s2 weight 4",
    )
    after = lab.pool()
    assert after["algorithm"] == "weighted-round-robin"
    assert after["health"]["interval"] == 0.3
    assert after["health"] == {**before["health"], "interval": 0.3}  # nothing else moved
    assert {s["id"]: s["weight"] for s in after["servers"]} == {"s1": 1, "s2": 4}
    # The page, fetched again, shows what was saved.
    expect(form.locator("select[name=algorithm]")).to_have_value("weighted-round-robin")
    expect(form.locator('input[name="health.interval"]')).to_have_value("0.3")
    expect(form.locator('input[name="weight.s2"]')).to_have_value("4")
