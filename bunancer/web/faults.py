"""The lab's fault rules over the API (`/api/faults`): the body a new rule is read from,
shared with the dashboard's form, and the routes. Setting or removing one needs the token,
as every change does; the rules themselves are control/faults.py's."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import NAME_PATTERN
from ..control.commands import Invalid
from ..control.faults import FaultBook
from ..core.faults import FaultRule
from .app import HTTPError, Request, Response, json_response, validation_error
from .router import Router

HOST_NAME = r"^(\*\.)?[A-Za-z0-9.-]{1,253}$"  # a name, or `*.parent` (as a route's host)
HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$"  # an HTTP token (RFC 9110 5.6.2)
MAX_DELAY_MS = 60_000
MAX_SECONDS = 3600.0  # an experiment, not a setting: an hour at most


class FaultCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    pool: str = Field(pattern=NAME_PATTERN)
    kind: Literal["delay", "abort", "reset"]
    percent: float = Field(default=100.0, gt=0, le=100)
    delay_ms: int | None = Field(default=None, ge=0, le=MAX_DELAY_MS)
    delay_max_ms: int | None = Field(default=None, ge=0, le=MAX_DELAY_MS)
    status: int = Field(default=503, ge=400, le=599)
    header: str | None = Field(default=None, pattern=HEADER_NAME)
    path_prefix: str | None = Field(default=None, pattern=r"^/\S*$", max_length=256)
    host: str | None = Field(default=None, pattern=HOST_NAME)
    seconds: float = Field(default=60.0, gt=0, le=MAX_SECONDS)

    def rule(self) -> FaultRule:
        """The data plane's rule (its id is given when it is set); Invalid (422) for a
        delay without its length, or delay fields on another kind."""
        low = high = 0
        if self.kind == "delay":
            if self.delay_ms is None:
                raise Invalid("delay_ms", "a delay rule needs its length in ms")
            low = self.delay_ms
            high = low if self.delay_max_ms is None else self.delay_max_ms
            if high < low:
                raise Invalid("delay_max_ms", "must be at least delay_ms")
        elif self.delay_ms is not None or self.delay_max_ms is not None:
            raise Invalid("delay_ms", f"only a delay rule has one, not {self.kind}")
        return FaultRule(
            "",
            self.kind,
            self.percent,
            low / 1000,
            high / 1000,
            self.status,
            (self.header or "").lower().encode(),
            (self.path_prefix or "").encode(),
            (self.host or "").lower().encode(),
        )


# The dashboard form's number fields, and their types (a blank one is left out).
FORM_NUMBERS = {"percent": float, "delay_ms": int, "delay_max_ms": int, "status": int,
                "seconds": float}  # fmt: skip


def fault_from_form(form: dict[str, str]) -> FaultCreate:
    """The Faults page's form as the API's body (a 422 naming the field if it is not one)."""
    values: dict[str, Any] = {key: form.get(key, "").strip() for key in ("pool", "kind")}
    for key in ("header", "path_prefix", "host"):
        if form.get(key, "").strip():
            values[key] = form[key].strip()
    for key, kind in FORM_NUMBERS.items():
        raw = form.get(key, "").strip()
        if not raw:
            continue
        try:
            values[key] = kind(raw)
        except ValueError:
            raise HTTPError(422, "validation failed", field=key, detail="not a number") from None
    if values["kind"] != "abort":
        values.pop("status", None)  # (the form always has one)
    try:
        return FaultCreate.model_validate(values)
    except ValidationError as error:
        raise validation_error(error) from None


def fault_routes(router: Router[Any], faults: FaultBook) -> None:
    @router.get("/api/faults")
    async def list_faults(request: Request) -> Response:
        return json_response(faults.views())

    @router.post("/api/faults", body=FaultCreate)
    async def add_fault(request: Request) -> Response:
        body: FaultCreate = request.data
        return json_response(await faults.add(body.pool, body.rule(), body.seconds), 201)

    @router.delete("/api/faults/{id}")
    async def remove_fault(request: Request) -> Response:
        return json_response(await faults.remove(str(request.params["id"])))
