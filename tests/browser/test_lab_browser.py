"""The Lab in Chromium: round-robin against peak-ewma on three stubs, one of them slowed ten
times with the page's own button while the experiment runs under load. The result page shows
peak-ewma's p99 well under round-robin's, as `python -m bench.algorithms` measures it (the
same stubs: 2 ms, one 20 ms); the screenshot and the PNG the page downloads go to
tests/artifacts/."""

from __future__ import annotations

import asyncio
import re
import threading

from playwright.sync_api import Page, expect

from bench.algorithms import drive
from tests.browser.conftest import ARTIFACTS, Lab

SECONDS = 10


def ms(text: str) -> float:
    """A figure as the page shows it ("2.4 ms", "812 µs") in milliseconds."""
    value, unit = text.split()
    return float(value) * (0.001 if unit == "µs" else 1000.0 if unit == "s" else 1.0)


def test_peak_ewma_keeps_a_slowed_stub_out_of_its_tail_and_round_robin_does_not(
    lab: Lab, page: Page
) -> None:
    lab.start_stubs(3)
    for stub in lab.stubs.list():
        lab.stubs.set(stub.id, latency="2ms")
    lab.login(page, "/lab")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    page.fill("input[name=seconds]", str(SECONDS))
    load = threading.Thread(
        target=lambda: asyncio.run(drive(lab.proxy.port, "lab", SECONDS + 1, 16)), daemon=True
    )
    page.click("#lab-start button[type=submit]")
    load.start()
    expect(page.locator("#toasts .toast.ok").last).to_contain_text(
        "experiment e1 started on pool default: round-robin against peak-ewma"
    )
    slow = page.locator("tr", has_text="s3").locator("button[data-what=slow]")
    slow.click()
    expect(page.locator("#toasts .toast.ok").last).to_contain_text("stub s3: 200 20ms")
    expect(page.locator("#lab-arms [data-arm=peak-ewma] [data-field=requests]")).not_to_have_text(
        "0"
    )  # live figures arrive
    lab.screenshot(page, "lab-running")

    expect(page.locator("a[href='/lab/results/e1']")).to_be_visible(timeout=(SECONDS + 5) * 1000)
    load.join(10)
    page.click("a[href='/lab/results/e1']")
    expect(page.locator("h1")).to_have_text("Experiment e1 on pool default")
    rr = ms(page.locator("[data-arm=round-robin] [data-field=p99]").inner_text())
    ewma = ms(page.locator("[data-arm=peak-ewma] [data-field=p99]").inner_text())
    expect(page.locator("#lab-result .feed-list")).to_contain_text("stub s3: 200 20ms")  # marked
    lab.screenshot(page, "lab-result-round-robin-against-peak-ewma")
    assert rr >= 18, rr  # a third of its requests met the 20 ms stub
    assert ewma < 0.5 * rr, (ewma, rr)  # bench.algorithms: 4.4 ms against 21.1 ms
    shares = page.locator("[data-arm=peak-ewma] [data-field=shares]").inner_text()
    slow_share = (
        re.search(r":(\d+) (\d+)%", shares.split(",")[2]) if shares.count(",") == 2 else None
    )
    assert slow_share is None or int(slow_share.group(2)) < 20

    with page.expect_download() as download:
        page.click("#lab-png")
    path = ARTIFACTS / "lab-result-chart.png"
    download.value.save_as(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.errors == []  # type: ignore[attr-defined]
