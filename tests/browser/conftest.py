"""Browser fixtures: Playwright for Python driving Debian's Chromium (no browser download),
and a balancer whose stubs the dashboard can start (its API port is fixed up front).

Tests are skipped, saying why, when /usr/bin/chromium is missing, and fail then when `CI`
is set; the system package is installed by scripts/install-system-deps.sh.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

from stubs.sdk import StubManager
from tests.conftest import Proxy, StartProxy
from tests.helpers import FAST_CHECKS, ROOT, free_port, require_tool, wait_for

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

SKIP_REASON = (
    None
    if CHROMIUM.exists()
    else "browser tests need Debian's Chromium at /usr/bin/chromium "
    "(scripts/install-system-deps.sh installs it: apt-get install chromium)"
)
# Fast checks: a killed stub is unhealthy after one failed check and dead after two more.
FAST = (
    FAST_CHECKS
    + """fall = 1
dead_after = 2

[pools.default.balancing]
retries = 0   # a 503 reaches the client, and counts against the server that sent it

[pools.default.outlier]
base_ejection_time = 0.5
"""
)


# Module scope, not session: while Playwright's sync API is open it keeps an event loop
# running in the main thread, and every later test calling asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require_tool(SKIP_REASON)  # skips, or fails when CI is set
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(15_000)
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # "Stop stub s1?" and the like
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors  # type: ignore[attr-defined]
    return page


@dataclass
class Lab:
    """A balancer, its dashboard's address, and the stubs of its state dir."""

    proxy: Proxy
    stubs: StubManager

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.dashboard_port}"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.proxy.api_port}"

    def start_stubs(self, count: int) -> None:
        self.stubs.start(count, register=True, api=self.api, token=self.proxy.token)
        ids = {s.id for s in self.stubs.list()}
        wait_for(lambda: self.states() == dict.fromkeys(ids, "healthy"), 10)

    def pool(self, pool: str = "default") -> dict[str, Any]:
        """The pool as the API shows it (GET /api/pools/<pool>): settings and servers."""
        conn = http.client.HTTPConnection("127.0.0.1", self.proxy.api_port, timeout=5)
        try:
            conn.request("GET", f"/api/pools/{pool}")
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        assert response.status == 200, (response.status, body)
        data: dict[str, Any] = json.loads(body)
        return data

    def servers(self, pool: str = "default") -> dict[str, dict[str, Any]]:
        """The pool's servers as the API shows them, by id."""
        return {s["id"]: s for s in self.pool(pool)["servers"]}

    def states(self, pool: str = "default") -> dict[str, str]:
        return {key: s["state"] for key, s in self.servers(pool).items()}

    def login(self, page: Page, next_path: str = "/") -> None:
        page.goto(f"{self.url}/login?next={next_path}")
        page.fill("input[name=token]", self.proxy.token)
        page.click("form[action='/login'] button[type=submit]")
        page.wait_for_url(f"{self.url}{next_path}")

    def screenshot(self, page: Page, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def lab(start_proxy: StartProxy) -> Iterator[Lab]:
    port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        # Stubs started by the dashboard register here (until the app passes api_url).
        patch.setenv("BUNANCER_API", f"http://127.0.0.1:{port}")
        proxy = start_proxy([], FAST + f'\n[api]\nlisten = "127.0.0.1:{port}"\n')
    lab = Lab(proxy, StubManager(proxy.state_dir))
    yield lab
    lab.stubs.stop_all(timeout=5)
    proxy.process.stop()


class Traffic:
    """Requests to the proxy from a thread, about 100 a second, until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stopping = threading.Event()
        self.answers: dict[int, int] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        while not self.stopping.is_set():
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                self.answers[response.status] = self.answers.get(response.status, 0) + 1
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            self.stopping.wait(0.01)  # pacing, not synchronisation
        conn.close()

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(10)
