"""How the dashboard writes figures, times and events: the templates' filters and helpers.

`static/dashboard.js` writes the live values with functions of the same names and rules,
so a figure reads the same before and after the first update.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from ...control.events import (
    FAULT_ADDED,
    FAULT_REMOVED,
    LAB_ENDED,
    LAB_STARTED,
    POOL_ADDED,
    POOL_REMOVED,
    POOL_UPDATED,
    SERVER_ADDED,
    SERVER_REMOVED,
    SERVER_STATE,
    Event,
)


def fmt_rps(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 10000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


def fmt_pct(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "0%"
    if value < 0.001:
        return "<0.1%"
    return f"{value * 100:.1f}%" if value < 0.1 else f"{value * 100:.0f}%"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "—"
    ms = value * 1000
    # Thresholds sit where rounding would carry over: 0.9996 ms is "1.0 ms", not "1000 µs".
    if ms < 0.9995:
        return f"{ms * 1000:.0f} µs"
    if ms < 9.95:
        return f"{ms:.1f} ms"
    if ms < 9999.5:
        return f"{ms:.0f} ms"
    return f"{ms / 1000:.1f} s"


def fmt_ago(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return "just now"
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def fmt_duration(seconds: float) -> str:
    """``12s``, ``3m 4s``, ``1.5h`` (as fmtFor in the script)."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{int(seconds)}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m {int(seconds % 60)}s"
    return f"{seconds / 3600:.1f}h"


def fmt_clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


def url_segment(value: str) -> str:
    """`value` quoted as one path segment of a URL (slashes included)."""
    return quote(value, safe="")


def event_text(event: Event) -> str:
    """One line for the activity feed (the script writes live lines the same way)."""
    data = event.data
    if event.kind == SERVER_STATE:
        return f"{data['pool']}/{data['id']}: {data['old']} → {data['new']} ({data['reason']})"
    if event.kind == SERVER_ADDED:
        return f"{data['pool']}/{data['id']} added at {data['address']}"
    if event.kind == SERVER_REMOVED:
        return f"{data['pool']}/{data['id']} removed ({data['reason']})"
    if event.kind == POOL_ADDED:
        return f"pool {data['name']} added ({data['algorithm']})"
    if event.kind == POOL_REMOVED:
        return f"pool {data['name']} removed"
    if event.kind == POOL_UPDATED:
        return f"pool {data['name']} updated: {data['algorithm']}, {data['routable']} routable"
    if event.kind == FAULT_ADDED:
        return f"fault {data['id']} set: {data['summary']}"
    if event.kind == FAULT_REMOVED:
        return f"fault {data['id']} {data['why']}: {data['summary']}"
    if event.kind in (LAB_STARTED, LAB_ENDED):
        arms = " against ".join(arm["label"] for arm in data["arms"])
        verb = "started" if event.kind == LAB_STARTED else data["why"]
        return f"lab {data['id']} on pool {data['pool']} {verb}: {arms}"
    return event.kind


def check_schedule(health: dict[str, Any]) -> str:
    """When checks run, in words: the interval depends on the state (states.py)."""
    return (
        f"every {health['interval']:g} s while healthy, {health['fast_interval']:g} s while a "
        f"rise or fall streak is under way; while down from {health['down_interval']:g} s, "
        f"x{health['backoff']:g} after each failure up to {health['max_down_interval']:g} s; "
        f"every {health['dead_interval']:g} s once dead (intervals +-"
        f"{health['jitter'] * 100:g}%)"
    )


def points(values: list[Any], width: float, height: float, top: float | None = None) -> list[str]:
    """SVG polyline `points` for a series scaled into width x height; a None value breaks
    the line, so the result is a list of segments (the script draws charts the same way)."""
    numbers = [v for v in values if v is not None]
    top = top if top is not None else max(numbers, default=0)
    scale = (height - 2) / top if top else 0.0
    step = width / max(len(values) - 1, 1)
    segments: list[str] = []
    current: list[str] = []
    for index, value in enumerate(values):
        if value is None:
            if current:
                segments.append(" ".join(current))
            current = []
            continue
        current.append(f"{index * step:.1f},{height - 1 - value * scale:.1f}")
    if current:
        segments.append(" ".join(current))
    return segments
