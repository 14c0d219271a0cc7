"""The algorithm lab over the API (`/api/lab`): start an experiment, follow it, stop it,
and read the results of those that ended. Starting or stopping one needs the token; the
experiments themselves are control/lab.py's."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..config import NAME_PATTERN
from ..control.commands import Invalid
from ..control.lab import Lab
from ..control.records import NotFound
from .app import Request, Response, json_response
from .router import Router

MIN_SECONDS, MAX_SECONDS = 5.0, 3600.0


class LabCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    pool: str = Field(default="default", pattern=NAME_PATTERN)
    # Each an algorithm, with its option after a colon: hash:header:X-User, sticky:p2c.
    algorithms: list[str] = Field(min_length=2, max_length=4)
    split: Literal["random", "client"] = "random"
    seconds: float = Field(default=60.0, ge=MIN_SECONDS, le=MAX_SECONDS)


async def start(lab: Lab, body: LabCreate) -> dict[str, Any]:
    """Start `body`'s experiment (Invalid names the field of a refused value); its view."""
    try:
        run = await lab.start(body.pool, list(body.algorithms), body.split, body.seconds)
    except ValueError as error:
        field, _, detail = str(error).partition(": ")
        raise Invalid(field, detail) from None
    return run.view(lab.clock())


def overview(lab: Lab) -> dict[str, Any]:
    """The running experiment (or None), and the results kept, without their timelines."""
    running = lab.running.view(lab.clock()) if lab.running is not None else None
    results = [{k: v for k, v in r.items() if k != "timeline"} for r in lab.results]
    return {"running": running, "results": results}


def lab_routes(router: Router[Any], lab: Lab) -> None:
    @router.get("/api/lab")
    async def lab_overview(request: Request) -> Response:
        return json_response(overview(lab))

    @router.post("/api/lab", body=LabCreate)
    async def lab_start(request: Request) -> Response:
        return json_response(await start(lab, request.data), 201)

    @router.delete("/api/lab")
    async def lab_stop(request: Request) -> Response:
        return json_response(await lab.stop())

    @router.get("/api/lab/results/{id}")
    async def lab_result(request: Request) -> Response:
        result = lab.result(str(request.params["id"]))
        if result is None:
            raise NotFound(f"no experiment result {request.params['id']!r}")
        return json_response(result)
