"""The Lab page: start an experiment of the algorithm lab, watch its arms live, break one
of the pool's stubs with a click, and read (and download) the results of those that ended.

The experiments are control/lab.py's, started through the API's own checks (`web/lab.py`);
the stub buttons go through the stubs SDK as the dashboard's other stub actions do.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from ...config import ALGORITHMS
from ...control.lab import Lab
from ..app import JSON, HTTPError, Request, Response, validation_error
from ..lab import LabCreate, overview, start
from .forms import form_of
from .state import Dashboard
from .stubs import recheck_servers_of

ARMS = 4  # the form's algorithm fields: arm1 .. arm4
SLOWER = 10  # "slow" makes a stub this many times slower
SLOW_AT_LEAST = 0.01  # seconds: a stub answering at once is made this slow times SLOWER


class LabPage:
    """GET /lab and the results, and the lab's actions (run through `Actions.handler`)."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash
        self.lab = dash.context.lab
        self.restore: dict[str, dict[str, str]] = {}  # stub id: what "restore" sets back

    def book(self) -> Lab:
        if self.lab is None:
            raise HTTPError(404, "this balancer has no lab")
        return self.lab

    async def page(self, request: Request) -> Response:
        """GET /lab"""
        lab = self.book()
        state = overview(lab)
        timeline = lab.running.timeline if lab.running is not None else []
        running = state["running"]
        servers: list[dict[str, Any]] = []
        if running is not None and running["pool"] in self.dash.registry.pools:
            pool = self.dash.views.pool(running["pool"], await self.dash.stubs.by_address())
            servers = pool["servers"]
        return self.dash.render(
            request,
            "lab.html",
            title="Lab",
            page="lab",
            lab=state,
            running=running,
            timeline=timeline,
            servers=servers,
            pools=sorted(self.dash.registry.pools),
            algorithms=ALGORITHMS,
            # The script adds each second's point to the chart drawn from these.
            boot=self.dash.boot({"timeline": timeline}),
        )

    async def result_page(self, request: Request) -> Response:
        """GET /lab/results/{id}: an ended experiment's table and chart."""
        result = self.result_of(request)
        return self.dash.render(
            request, "lab_result.html", title=f"Lab {result['id']}", page="lab-result",
            result=result, timeline=result["timeline"], boot={"result": result},
        )  # fmt: skip

    async def result_json(self, request: Request) -> Response:
        """GET /lab/results/{id}/json: the result to keep (a file download)."""
        result = self.result_of(request)
        disposition = f'attachment; filename="bunancer-lab-{result["id"]}.json"'
        body = json.dumps(result, indent=2).encode()
        return Response(200, body, [("Content-Disposition", disposition)], JSON)

    def result_of(self, request: Request) -> dict[str, Any]:
        result = self.book().result(str(request.params["id"]))
        if result is None:
            raise HTTPError(404, f"no experiment result {request.params['id']!r}")
        return dict(result)

    # -- actions -----------------------------------------------------------------------------

    async def start(self, request: Request) -> str:
        """POST /actions/lab"""
        form = form_of(request)
        names = [
            ":".join(filter(None, (form[f"arm{i}"], form.get(f"arm{i}_option", "").strip())))
            for i in range(1, ARMS + 1)
            if form.get(f"arm{i}", "").strip()
        ]  # an algorithm, and its option after a colon (hash:header:X-User)
        values: dict[str, Any] = {"pool": form.get("pool", ""), "algorithms": names,
                                  "split": form.get("split", "random")}  # fmt: skip
        try:
            values["seconds"] = float(form.get("seconds", "60"))
        except ValueError:
            raise HTTPError(
                422, "validation failed", field="seconds", detail="not a number"
            ) from None
        try:
            body = LabCreate.model_validate(values)
        except ValidationError as error:
            raise validation_error(error) from None
        view = await start(self.book(), body)
        arms = " against ".join(arm["label"] for arm in view["arms"])
        return f"experiment {view['id']} started on pool {view['pool']}: {arms}"

    async def stop(self, request: Request) -> str:
        """POST /actions/lab/stop"""
        result = await self.book().stop()
        return f"experiment {result['id']} stopped"

    async def stub_fault(self, request: Request) -> str:
        """POST /actions/lab/stubs/{id}/{what}: slow (x10), fail (503), kill, restore."""
        stub_id, what = str(request.params["id"]), str(request.params["what"])
        stubs = self.dash.stubs
        if what == "kill":
            await stubs.run(stubs.manager.stop, stub_id)
            stubs.invalidate()
            return self._marked(f"stub {stub_id} killed")
        behaviour = await stubs.run(stubs.manager.behaviour, stub_id)
        if what == "slow":
            low = behaviour.latency.low or SLOW_AT_LEAST
            changes = {"latency": f"{low * SLOWER * 1000:g}ms"}
            self.restore.setdefault(stub_id, {"latency": str(behaviour.latency) or "0"})
        elif what == "fail":
            changes = {"status": "503"}
            self.restore.setdefault(stub_id, {"status": str(behaviour.status)})
        elif what == "restore":
            changes = self.restore.pop(stub_id, {"status": "200", "latency": "0"})
        else:
            raise HTTPError(404, f"no stub action {what!r}")
        changed = await stubs.run(stubs.manager.set, stub_id, **changes)
        stubs.invalidate()
        recheck_servers_of(self.dash.registry, await stubs.run(stubs.manager.get, stub_id))
        return self._marked(f"stub {stub_id}: {changed.describe()}")

    def _marked(self, said: str) -> str:
        """`said` as a marker on the running experiment's timeline too."""
        if self.lab is not None:
            self.lab.note(said)
        return said
