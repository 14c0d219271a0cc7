"""Sans-I/O behaviour model of a stub backend: what it answers, how late, and how it fails.

A `Behaviour` is an immutable value (status, latency spec, failure rate and mode, body
size, health setting) with parse/format helpers for flags and JSON. `Behaviour.decide(rng,
path)` turns one request into an `Action` (respond, reset, hang, slow body, close
mid-body); the server only carries the action out, so every decision is testable with a
seeded RNG and no sockets.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

MODES = ("5xx", "reset", "hang", "slow", "close")
Mode = Literal["5xx", "reset", "hang", "slow", "close"]
# What /health answers: "auto" the traffic status (a balancer's active checks then see what
# traffic sees), "ok" / "fail" pinned to 200 / 503 whatever traffic gets.
HEALTHS = ("auto", "ok", "fail")
Health = Literal["auto", "ok", "fail"]
HEALTH_PATH = "/health"
FAIL_STATUS = 503  # what mode "5xx" answers: a status balancers treat as an upstream failure
MAX_SIZE = 64 * 1024 * 1024
MAX_DELAY = 300.0  # seconds; also caps long-tail samples
SLOW_PIECES = 10  # a slow body arrives in at most this many pieces...
SLOW_INTERVAL = 0.2  # ...one every this many seconds


class BehaviourError(ValueError):
    """A behaviour setting that cannot be used; the message names the setting."""


# -- latency -----------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|µs|ms|s)?\s*$")
_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, None: 1e-3}


def parse_duration(text: str) -> float:
    """``"50ms"``, ``"1.5s"``, ``"200us"`` or a bare number of milliseconds -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise BehaviourError(f"latency: expected a duration like 50ms or 1.5s, got {text!r}")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_DELAY:
        raise BehaviourError(f"latency: {text!r} is over the {MAX_DELAY:g}s limit")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds == 0:
        return "0"
    if seconds >= 1 and seconds == round(seconds, 3):
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"


@dataclass(frozen=True, slots=True)
class Latency:
    """How long a stub waits before answering.

    ``fixed``: always `low`; ``uniform``: between `low` and `high`; ``longtail``: lognormal
    with median `low` and shape `sigma` (sigma 1: p90 is 3.6x, p99 10x the median), capped.
    """

    kind: Literal["fixed", "uniform", "longtail"] = "fixed"
    low: float = 0.0
    high: float = 0.0
    sigma: float = 1.0

    @property
    def is_zero(self) -> bool:
        return self.kind == "fixed" and self.low == 0.0

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.low
        if self.kind == "uniform":
            return rng.uniform(self.low, self.high)
        return min(self.low * math.exp(self.sigma * rng.gauss(0.0, 1.0)), MAX_DELAY)

    def __str__(self) -> str:
        if self.kind == "fixed":
            return format_duration(self.low)
        if self.kind == "uniform":
            low, high = format_duration(self.low), format_duration(self.high)
            if low.endswith("ms") and high.endswith("ms"):
                low = low.removesuffix("ms")  # "20-80ms"
            return f"{low}-{high}"
        return f"longtail:{format_duration(self.low)}"


def parse_latency(text: str) -> Latency:
    """``"0"``, ``"50ms"`` (fixed), ``"20-80ms"`` (uniform), ``"longtail:20ms"`` (median)."""
    text = text.strip()
    if text.startswith("longtail:"):
        median = parse_duration(text.removeprefix("longtail:"))
        if median <= 0:
            raise BehaviourError("latency: a long tail needs a median above 0, e.g. longtail:20ms")
        return Latency("longtail", median, median)
    low_text, sep, high_text = text.partition("-")
    if sep:
        # "20-80ms": the unit of the upper bound applies to a bare lower bound.
        unit = re.search(r"(us|µs|ms|s)\s*$", high_text)
        if unit and not re.search(r"[a-zµ]\s*$", low_text):
            low_text += unit.group(1)
        low, high = parse_duration(low_text), parse_duration(high_text)
        if low > high:
            raise BehaviourError(f"latency: range {text!r} is reversed")
        return Latency("uniform", low, high)
    return Latency("fixed", parse_duration(text), parse_duration(text))


# -- actions the server carries out -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Respond:
    """A complete response after `delay` seconds."""

    status: int
    size: int
    delay: float = 0.0
    health: bool = False  # a /health answer (body "ok" or "fail", not the id)
    failed: bool = False  # an injected failure (mode "5xx"), counted as such


@dataclass(frozen=True, slots=True)
class Reset:
    """Read the request, wait, then reset the connection (TCP RST, no response)."""

    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Hang:
    """Read the request and never answer; the connection stays open until the client leaves."""


@dataclass(frozen=True, slots=True)
class SlowBody:
    """Send the head, then the body in `pieces` pieces `interval` seconds apart."""

    status: int
    size: int
    delay: float = 0.0
    pieces: int = SLOW_PIECES
    interval: float = SLOW_INTERVAL


@dataclass(frozen=True, slots=True)
class CloseMidBody:
    """Send the head with the full Content-Length, half the body, then close (FIN)."""

    status: int
    size: int
    delay: float = 0.0


Action = Respond | Reset | Hang | SlowBody | CloseMidBody


# -- the behaviour -----------------------------------------------------------------------------

FIELDS = ("status", "latency", "fail_rate", "mode", "size", "health")


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What a stub does with each request; immutable, replaced whole on every change."""

    status: int = 200
    latency: Latency = field(default_factory=Latency)
    fail_rate: float = 0.0  # share of requests that fail, 0..1
    mode: Mode = "5xx"  # what a failure does
    size: int = 0  # response body bytes (at least the id line)
    health: Health = "auto"  # what /health answers: the traffic status, or pinned

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise BehaviourError(f"status: expected 200-599, got {self.status}")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise BehaviourError(f"fail_rate: expected 0..1, got {self.fail_rate:g}")
        if self.mode not in MODES:
            raise BehaviourError(f"mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 <= self.size <= MAX_SIZE:
            raise BehaviourError(f"size: expected 0..{MAX_SIZE} bytes, got {self.size}")
        if self.health not in HEALTHS:
            raise BehaviourError(f"health: expected auto, ok or fail, got {self.health!r}")

    @property
    def is_plain(self) -> bool:
        """No latency and no failures: the server may answer with pre-built bytes."""
        return self.latency.is_zero and self.fail_rate == 0.0

    @property
    def health_status(self) -> int:
        """What /health answers: the traffic status under "auto", else 200 or 503."""
        if self.health == "auto":
            return self.status
        return 200 if self.health == "ok" else FAIL_STATUS

    def decide(self, rng: random.Random, path: str) -> Action:
        """The action for one request to `path` (query string already removed)."""
        if path == HEALTH_PATH:
            # No latency or injected failures: checks see the status, not the noise.
            return Respond(self.health_status, 0, 0.0, health=True)
        delay = self.latency.sample(rng)
        if self.fail_rate and rng.random() < self.fail_rate:
            return self._failure(delay)
        return Respond(self.status, self.size, delay)

    def _failure(self, delay: float) -> Action:
        if self.mode == "5xx":
            return Respond(FAIL_STATUS, self.size, delay, failed=True)
        if self.mode == "reset":
            return Reset(delay)
        if self.mode == "hang":
            return Hang()
        if self.mode == "slow":
            return SlowBody(self.status, self.size, delay)
        return CloseMidBody(self.status, self.size, delay)

    # -- conversions ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "latency": str(self.latency),
            "fail_rate": self.fail_rate,
            "mode": self.mode,
            "size": self.size,
            "health": self.health,
        }

    def with_changes(self, changes: dict[str, Any]) -> Behaviour:
        """A copy with `changes` applied; values may be text (flags) or typed (JSON)."""
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise BehaviourError(f"{unknown[0]}: unknown setting (expected {', '.join(FIELDS)})")
        typed: dict[str, Any] = {}
        for name, value in changes.items():
            if value is None:
                continue
            typed[name] = _convert(name, value)
        return replace(self, **typed)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Behaviour:
        return cls().with_changes(data)

    def describe(self) -> str:
        """A short human summary: ``200``, ``503 20-80ms``, ``200 10% reset, health fail``.

        The health setting shows only when checks and traffic can disagree: pinned to fail,
        or pinned ok while traffic gets a 5xx (``503, health ok``).
        """
        parts = [str(self.status)]
        if not self.latency.is_zero:
            parts.append(str(self.latency))
        if self.fail_rate:
            parts.append(f"{self.fail_rate * 100:g}% {self.mode}")
        if self.size:
            parts.append(f"{self.size}B")
        text = " ".join(parts)
        if self.health == "fail" or (self.health == "ok" and self.status >= 500):
            text += f", health {self.health}"
        return text


def _convert(name: str, value: Any) -> Any:
    """One setting from flag text or JSON into its typed value, or a BehaviourError."""
    try:
        if name in ("status", "size"):
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise TypeError
            return int(value)
        if name == "fail_rate":
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise TypeError
            text = str(value).strip()
            rate = float(text[:-1]) / 100 if text.endswith("%") else float(text)
            if not math.isfinite(rate):
                raise ValueError
            return rate
        if name == "latency":
            if isinstance(value, Latency):
                return value
            if isinstance(value, int | float) and not isinstance(value, bool):
                return parse_latency(f"{value}ms")
            if not isinstance(value, str):
                raise TypeError
            return parse_latency(value)
        if not isinstance(value, str):
            raise TypeError
        return value.strip().lower() if name in ("mode", "health") else value
    except (TypeError, ValueError) as error:
        if isinstance(error, BehaviourError):
            raise
        raise BehaviourError(f"{name}: invalid value {value!r}") from None
