"""The Lab page of a real `bunancer serve`: an experiment started from its form, its arms on
the page while it runs, the stub buttons, and the result's page and JSON once it ends."""

from __future__ import annotations

import html
import json
from collections.abc import Iterator

import pytest

from stubs.sdk import StubManager
from tests.conftest import Proxy, StartProxy
from tests.web.test_dashboard import Client

pytestmark = pytest.mark.slow

START = {"pool": "default", "arm1": "round-robin", "arm2": "peak-ewma", "arm3": "", "arm4": "",
         "split": "random", "seconds": "30"}  # fmt: skip


@pytest.fixture
def stubs(proxy: Proxy) -> Iterator[StubManager]:
    manager = StubManager(proxy.state_dir)
    api = f"http://127.0.0.1:{proxy.api_port}"
    manager.start(2, register=True, api=api, token=proxy.token, behaviour={"latency": "2ms"})
    yield manager
    manager.stop_all(timeout=5)


@pytest.fixture
def proxy(start_proxy: StartProxy) -> Proxy:
    return start_proxy([])


def test_an_experiment_runs_from_the_lab_page_and_its_result_can_be_downloaded(
    proxy: Proxy, stubs: StubManager
) -> None:
    admin = Client(proxy.dashboard_port)
    admin.login(proxy.token)
    page = admin.get("/lab")
    assert page.status == 200
    assert 'id="lab-start"' in page.text
    assert "No experiment has ended yet." in page.text

    started = admin.post("/actions/lab", START)
    assert started.status == 200, started.text
    assert started.json["message"] == (
        "experiment e1 started on pool default: round-robin against peak-ewma"
    )
    running = html.unescape(admin.get("/lab").text)
    assert 'id="lab-running" data-id="e1"' in running
    assert 'data-arm="round-robin"' in running
    assert 'data-arm="peak-ewma"' in running
    assert 'action="/actions/lab/stubs/s1/slow"' in running

    slowed = admin.post("/actions/lab/stubs/s1/slow")
    assert slowed.status == 200, slowed.text
    assert str(stubs.behaviour("s1").latency) == "20ms"  # ten times its 2 ms
    restored = admin.post("/actions/lab/stubs/s1/restore")
    assert restored.status == 200, restored.text
    assert str(stubs.behaviour("s1").latency) == "2ms"
    assert admin.post("/actions/lab", START).status == 409  # one at a time
    killed = admin.post("/actions/lab/stubs/s2/kill")
    assert killed.json["message"] == "stub s2 killed"
    assert [stub.id for stub in stubs.list()] == ["s1"]
    assert 'id="lab-add-stub"' in admin.get("/lab").text
    added = admin.post("/actions/pools/default/stubs", {"latency": "2ms"})
    assert added.status == 200, added.text
    assert len(stubs.list()) == 2  # another in its place

    assert admin.post("/actions/lab/stop").json["message"] == "experiment e1 stopped"
    listed = admin.get("/lab").text
    assert 'href="/lab/results/e1"' in listed
    result = admin.get("/lab/results/e1")
    assert result.status == 200
    assert 'id="lab-png"' in result.text
    download = admin.get("/lab/results/e1/json")
    assert download.header("Content-Disposition") == ('attachment; filename="bunancer-lab-e1.json"')
    data = json.loads(download.body)
    assert [arm["label"] for arm in data["arms"]] == ["round-robin", "peak-ewma"]
    assert data["why"] == "stopped"


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"arm2": ""}, "algorithms: "),
        ({"arm2": "psychic"}, "algorithms: unknown 'psychic'"),
        ({"arm2_option": "fast"}, "algorithms: peak-ewma takes no option"),
        ({"seconds": "2"}, "seconds: "),
        ({"seconds": "soon"}, "seconds: not a number"),
        ({"pool": "nope"}, "no pool 'nope'"),
    ],
)
def test_a_bad_experiment_form_is_refused_naming_the_field(
    proxy: Proxy, change: dict[str, str], said: str
) -> None:
    admin = Client(proxy.dashboard_port)
    admin.login(proxy.token)
    refused = admin.post("/actions/lab", {**START, **change})
    assert refused.status in (404, 422), refused.text
    assert said in refused.json["message"]
    assert 'id="lab-start"' in admin.get("/lab").text  # nothing started


def test_without_a_login_the_lab_reads_but_starts_nothing(proxy: Proxy) -> None:
    anonymous = Client(proxy.dashboard_port)
    assert "<fieldset disabled>" in anonymous.get("/lab").text
    assert anonymous.post("/actions/lab", START).status == 403
