"""`bunancer status` and `top` rendered from API data, at the widths terminals have."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from bunancer.console import SPARK_MIN, render, sparkline


def pools_and_stats() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    servers = [
        {
            "id": f"s{n}",
            "address": f"127.0.0.1:{9000 + n}",
            "state": "healthy",
            "reason": "2 passing checks, ejection over",
            "in_flight": 0,
            "last_check": {"ok": True, "detail": "200 in 0.4 ms"},
        }
        for n in (1, 2, 3)
    ]
    history = [0] * 50 + list(range(1, 11))  # busiest in the newest seconds
    figures = {
        f"s{n}": {
            "rps": 40,
            "rps_10s": 4.0,
            "requests": 40,
            "error_rate_10s": 0.0,
            "retried_10s": 0,
            "p99_10s": 0.0012,
            "in_flight": 0,
            "history": history,
        }
        for n in (1, 2, 3)
    }
    pool = {"name": "default", "algorithm": "peak-ewma", "routable": 3, "servers": servers}
    stats = {
        "pools": {
            "default": {
                "rps": 0,
                "rps_10s": 12.0,
                "requests": 121,
                "rejected": 1,
                "error_rate_10s": 0.0,
                "p99_10s": 0.0012,
                "servers": figures,
            }
        },
        "listeners": [],
    }
    return [pool], stats


def text_of(width: int, sparklines: bool) -> str:
    console = Console(width=width, record=True, force_terminal=False)
    pools, stats = pools_and_stats()
    console.print(render(pools, stats, sparklines=sparklines, width=width, console=console))
    return console.export_text()


@pytest.mark.parametrize("width", [100, 120, 200])
def test_top_keeps_the_newest_end_of_every_sparkline(width: int) -> None:
    text = text_of(width, sparklines=True)
    newest = sparkline(list(range(1, 11)), 10)[-4:]  # the rising end, ending in the top block
    rows = [line for line in text.splitlines() if "127.0.0.1:900" in line or line.startswith("│ s")]
    spark_rows = [line for line in text.splitlines() if newest in line]
    assert len(spark_rows) == 3, text
    assert all(len(line) <= width for line in text.splitlines())
    assert rows


def test_sparkline_keeps_the_newest_values() -> None:
    assert sparkline([1, 2, 3, 4], 2) == sparkline([3, 4], 2)
    assert sparkline([0, 0], 5) == "▁▁"
    assert len(sparkline(list(range(60)), SPARK_MIN)) == SPARK_MIN


def test_status_shows_totals_and_the_10_second_rate_beside_the_last_second() -> None:
    text = text_of(200, sparklines=False)
    assert "req/s 0 (10 s: 12.0)" in text  # the pool: nothing in the last second, 12/s over 10 s
    assert "requests 121" in text
    assert "40/4.0" in text  # each server: last second / 10 s
    assert "1 with no server" in text  # why the pool may show errors its servers do not
