"""Big pools in Chromium: the flow view stays one screen tall (a big pool is one node, and
the graph zooms and pans), and the overview filters and sorts its tables.

The lab: one stub listening on every loopback address, so one process stands for many
servers (127.0.0.1, 127.0.0.2, ... at its port); a few servers at ports where nothing
listens (dead), some disabled or draining. "default" (the listener's pool, which gets the
traffic) has 60 servers; four pools have 10 each. Screenshots go to tests/artifacts/:
flow-large.png, flow-large-expanded.png and overview-filtered.png.
"""

from __future__ import annotations

import re
import socket
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Lab, Traffic
from tests.helpers import wait_for
from tests.web.test_dashboard import api

expect.set_options(timeout=15_000)

SMALL_POOLS = ("web", "auth", "search", "media")
HEALTH = {  # quick to settle, without a check every 0.2 s on 100 servers
    "interval": 1.0,
    "fast_interval": 0.1,
    "down_interval": 0.2,
    "max_down_interval": 0.4,
    "rise": 1,
    "fall": 1,
    "dead_after": 2,
}
# "default": 52 healthy, 4 dead, 2 disabled, 2 draining; "search": 8 healthy, 2 dead.
DEFAULT_COUNTS = {"healthy": 52, "dead": 4, "disabled": 2, "draining": 2}
NOT_HEALTHY = 4 + 2 + 2 + 2


def closed_ports(n: int) -> list[int]:
    probes = [socket.socket() for _ in range(n)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def crowd(lab: Lab) -> None:
    """Registers the 100 servers and waits until their states settle."""
    (stub,) = lab.stubs.start(1, host="0.0.0.0")  # answers on 127.0.0.N for every N
    dead = iter(closed_ports(6))
    api(lab.proxy, "PATCH", "/api/pools/default", {"health": HEALTH})
    for number in range(1, 61):
        server: dict[str, Any] = {"id": f"d{number:02d}", "host": f"127.0.0.{number}"}
        server["port"] = stub.port
        if number in (13, 27, 41, 55):
            server.update(host="127.0.0.1", port=next(dead))
        api(lab.proxy, "POST", "/api/pools/default/servers", server)
    for number, admin in ((20, "disabled"), (33, "disabled"), (8, "draining"), (46, "draining")):
        api(lab.proxy, "PATCH", f"/api/pools/default/servers/d{number:02d}", {"admin": admin})
    for pool in SMALL_POOLS:
        api(lab.proxy, "POST", "/api/pools", {"name": pool, "health": HEALTH})
        for number in range(1, 11):
            server = {"id": f"{pool}-{number:02d}", "host": f"127.0.0.{number}", "port": stub.port}
            if pool == "search" and number in (4, 9):
                server.update(host="127.0.0.1", port=next(dead))
            api(lab.proxy, "POST", f"/api/pools/{pool}/servers", server)

    def settled() -> bool:
        counts: dict[str, int] = {}
        for state in lab.states().values():
            counts[state] = counts.get(state, 0) + 1
        search = sorted(lab.states("search").values())
        others = all(
            set(lab.states(pool).values()) == {"healthy"}
            for pool in SMALL_POOLS
            if pool != "search"
        )
        return counts == DEFAULT_COUNTS and search == ["dead"] * 2 + ["healthy"] * 8 and others

    wait_for(settled, 20)


def live(page: Page) -> None:
    expect(page.locator("#live")).to_have_attribute("data-state", "live")


def view_box(page: Page) -> list[float]:
    return [float(n) for n in page.locator("#flow").get_attribute("viewBox").split()]  # type: ignore[union-attr]


def count_summaries(page: Page) -> None:
    """Counts the page's live summaries in window.__summaries (a second connection, the
    same events)."""
    page.evaluate(
        """() => { window.__summaries = 0;
        new EventSource('/events').addEventListener('summary', () => window.__summaries++); }"""
    )


def test_flow_view_of_big_pools_fits_the_window_zooms_pans_and_expands(
    lab: Lab, page: Page
) -> None:
    crowd(lab)
    partials: list[str] = []
    page.on("request", lambda r: partials.append(r.url) if "partial=1" in r.url else None)
    with Traffic(lab.proxy.port):
        page.goto(lab.url + "/flow")
        live(page)
        # 100 servers in all: every pool of more than a handful is one node.
        groups = page.locator("a.node.group")
        expect(groups).to_have_count(5)
        expect(page.locator("a.node.server")).to_have_count(0)
        big = page.locator('a.node.group[data-group="default"]')
        for state, number in DEFAULT_COUNTS.items():
            expect(big.locator(f'[data-group-count="{state}"]')).to_have_text(str(number))
        expect(
            page.locator('a.node.group[data-group="search"] [data-group-count="dead"]')
        ).to_have_text("2")
        # The traffic's dots fly into the collapsed pool, and its share spread is live.
        page.wait_for_function("() => document.querySelectorAll('#dots circle').length > 3")
        expect(big.locator("[data-group-spread]")).to_contain_text("busiest")
        height = page.evaluate("document.documentElement.scrollHeight")
        assert height < 1500, f"the flow page is {height} px tall"
        lab.screenshot(page, "flow-large")

        # No refresh over and over although no server row is on the page; the collapsed
        # node's figures come from each live summary (a wrong one is put right in place).
        count_summaries(page)
        healthy = big.locator('[data-group-count="healthy"]')
        healthy.evaluate("element => { element.textContent = '0'; }")
        page.wait_for_function("() => window.__summaries >= 3")
        expect(healthy).to_have_text("52")
        assert partials == []

        # The wheel zooms in around the pointer (here on the "auth" node): a smaller
        # viewBox, the graph point under the pointer kept there.
        svg = page.locator("#flow")
        box = svg.bounding_box()
        auth = page.locator('a.node.group[data-group="auth"]')
        node = auth.bounding_box()
        assert box is not None
        assert node is not None
        before = view_box(page)
        scale = float(svg.get_attribute("data-scale") or 0)
        x, y = node["x"] + node["width"] / 2, node["y"] + node["height"] / 2
        page.mouse.move(x, y)
        page.mouse.wheel(0, -400)
        page.wait_for_function(
            "scale => parseFloat(document.querySelector('#flow').dataset.scale) > scale", arg=scale
        )
        zoomed = view_box(page)
        assert zoomed[2] < before[2]
        assert zoomed[3] < before[3]

        def graph_x(vb: list[float]) -> float:  # the graph point under the pointer
            return vb[0] + (x - box["x"]) / box["width"] * vb[2]

        assert graph_x(zoomed) == pytest.approx(graph_x(before), abs=2)

        # A drag pans (the same zoom, another place), even one starting on a node (still
        # under the pointer): it neither expands that node nor opens a panel.
        start = (x, y)
        assert page.evaluate(
            "([x, y]) => !!document.elementFromPoint(x, y).closest('[data-group=auth]')", [x, y]
        )
        page.mouse.down()
        page.mouse.move(start[0] - 60, start[1] - 80, steps=5)
        page.mouse.move(start[0] - 120, start[1] - 160, steps=5)
        page.mouse.up()
        panned = view_box(page)
        assert panned[2:] == pytest.approx(zoomed[2:])
        assert panned[0] > zoomed[0]
        assert panned[1] > zoomed[1]
        assert "expand" not in page.url
        expect(page.locator("#panel")).to_be_hidden()

        # The buttons: zoom out, and fit (the whole graph again).
        page.click('[data-zoom="out"]')
        assert view_box(page)[2] > panned[2]
        page.click('[data-zoom="fit"]')
        fitted = view_box(page)
        assert fitted[2] == pytest.approx(before[2], rel=0.01)

        # A click on the collapsed node draws its 60 servers, in place (no page load).
        page.evaluate("window.__notReloaded = true")
        big.click()
        expect(page).to_have_url(re.compile(r"/flow\?expand=default$"))
        expect(page.locator('a.node.server[data-key^="default/"]')).to_have_count(60)
        expect(groups).to_have_count(4)
        expect(page.locator('a.node.server[data-key="default/d01"]')).to_be_visible()
        page.wait_for_function(
            "() => document.querySelectorAll('#dots circle').length > 3"
        )  # dots now go to each server
        assert page.evaluate("window.__notReloaded") is True
        height = page.evaluate("document.documentElement.scrollHeight")
        assert height < 1500, f"the expanded flow page is {height} px tall"
        lab.screenshot(page, "flow-large-expanded")

        # A server node still opens its panel.
        page.click('a.node.server[data-key="default/d02"]')
        expect(page.locator("#panel")).to_be_visible()
        expect(page.locator("#panel h2")).to_have_text("d02")
        page.click("#panel [data-close-panel]")

        # A reload shows the same; "collapse" draws the pool as one node again.
        page.reload()
        live(page)
        expect(page.locator('a.node.server[data-key^="default/"]')).to_have_count(60)
        page.click("a.node.toggle")
        expect(page).to_have_url(lab.url + "/flow")
        expect(groups).to_have_count(5)
    assert not page.errors  # type: ignore[attr-defined]


def test_overview_filter_by_state_hides_healthy_rows_and_survives_a_reload(
    lab: Lab, page: Page
) -> None:
    crowd(lab)
    page.goto(lab.url + "/")
    live(page)
    default = page.locator('section.pool[data-pool="default"] tr.server')
    # 60 servers: the 12 worst first, the rest behind a link.
    expect(default).to_have_count(12)
    expect(default.first).not_to_have_class(re.compile(r"state-healthy"))
    expect(page.locator('section.pool[data-pool="default"] .more a')).to_have_text("Show all 60")

    partials: list[str] = []
    page.on("request", lambda r: partials.append(r.url) if "partial=1" in r.url else None)
    page.evaluate("window.__notReloaded = true")
    page.select_option("#view-state", "not-healthy")
    expect(page).to_have_url(lab.url + "/?state=not-healthy")
    expect(page.locator("tr.server")).to_have_count(NOT_HEALTHY)
    expect(page.locator("tr.server.state-healthy")).to_have_count(0)
    expect(page.locator('section.pool[data-pool="web"] .empty')).to_contain_text(
        "None of its 10 servers match"
    )
    assert page.evaluate("window.__notReloaded") is True  # applied in place
    # Live updates go on without refreshing again and again (fewer rows than servers).
    settled = len(partials)
    count_summaries(page)
    page.wait_for_function("() => window.__summaries >= 3")
    assert len(partials) == settled
    lab.screenshot(page, "overview-filtered")

    page.reload()
    live(page)
    expect(page.locator("#view-state")).to_have_value("not-healthy")
    expect(page.locator("tr.server")).to_have_count(NOT_HEALTHY)
    expect(page.locator("tr.server.state-healthy")).to_have_count(0)
    page.evaluate("window.__notReloaded = true")

    # The text filter and the sort go in the URL too; the typing field keeps its focus.
    page.select_option("#view-state", "all")
    page.select_option("#view-sort", "name")
    page.locator("#view-q").press_sequentially("d1")
    expect(page).to_have_url(lab.url + "/?q=d1&sort=name")
    expect(page.locator("tr.server")).to_have_count(10)  # d10..d19
    keys = page.locator("tr.server").evaluate_all("rows => rows.map(r => r.dataset.key)")
    assert keys == [f"default/d{n}" for n in range(10, 20)]
    assert page.evaluate("document.activeElement.id") == "view-q"

    # "Show all" lists every row of the pool; the live refresh keeps it.
    page.fill("#view-q", "")
    expect(page).to_have_url(lab.url + "/?sort=name")
    expect(default).to_have_count(12)
    page.click('section.pool[data-pool="default"] .more a')
    expect(page).to_have_url(re.compile(r"/\?sort=name&all=default"))
    expect(default).to_have_count(60)
    assert page.evaluate("window.__notReloaded") is True
    assert not page.errors  # type: ignore[attr-defined]
