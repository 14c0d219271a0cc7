"""Terminal views of a running balancer: `bunancer status` (once) and `bunancer top` (live).

Both read the API (`/api/pools` for states and checks, `/api/stats` for traffic) and
render rich tables; `top` redraws once a second with sparklines of requests/s and quits
on `q` or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .client import ApiClient

STATE_STYLES = {
    "healthy": "green",
    "pending": "cyan",
    "unhealthy": "yellow",
    "dead": "red",
    "draining": "magenta",
    "disabled": "dim",
}
_SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[int], width: int = 30) -> str:
    """The newest `width` values as block characters, scaled to their maximum."""
    values = values[-width:] if width > 0 else []
    top = max(values, default=0)
    if not top:
        return _SPARKS[0] * len(values)
    return "".join(_SPARKS[min(len(_SPARKS) - 1, v * (len(_SPARKS) - 1) // top)] for v in values)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _rate(figures: dict[str, Any]) -> str:
    """The last second's requests/s beside the last 10 s's, so a short burst still shows."""
    return f"{figures.get('rps', 0):.0f} (10 s: {figures.get('rps_10s', 0):.1f})"


def fetch(client: ApiClient) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    return client.pools(), client.request("GET", "/api/stats")


# Seconds a sparkline shows, as the terminal's width allows (fewer columns below WANTED).
SPARK_MIN, SPARK_WANTED, SPARK_MAX = 8, 20, 30


def _pool_title(pool: dict[str, Any], stats: dict[str, Any]) -> str:
    title = (
        f"pool [bold]{pool['name']}[/] ({pool['algorithm']}) "
        f"{pool['routable']}/{len(pool['servers'])} routable   "
        f"req/s {_rate(stats)}   requests {stats.get('requests', 0)}   "
        f"errors {_percent(stats.get('error_rate_10s'))}   "
        f"retried {stats.get('retried_10s', 0)}   "
        f"p99 {_ms(stats.get('p99_10s'))} ms"
    )
    if stats.get("rejected"):
        # Answered by the balancer itself (503: no server to send it to), counted as errors.
        title += f"   [yellow]{stats['rejected']} with no server[/]"
    return title


def _server_table(
    pool: dict[str, Any], stats: dict[str, Any], spark_width: int | None, compact: bool = False
) -> Table:
    """`compact` (a narrow terminal): no total or last check, a narrower reason."""
    table = Table(expand=False, box=box.SIMPLE_HEAD)
    table.add_column("server", no_wrap=True)
    table.add_column("state, reason", overflow="fold", max_width=20 if compact else 30)
    table.add_column("req/s\n1s/10s", justify="right", no_wrap=True)
    if not compact:
        table.add_column("total", justify="right")
    table.add_column("err %\n10s", justify="right")
    table.add_column("retried\n10s", justify="right")
    table.add_column("p99 ms\n10s", justify="right")
    table.add_column("in\nflight", justify="right")
    if not compact:
        table.add_column("last check", overflow="fold", max_width=20)
    if spark_width:
        table.add_column(f"req/s, last {spark_width} s", no_wrap=True, min_width=spark_width)
    for server in pool["servers"]:
        figures = stats.get("servers", {}).get(server["id"], {})
        last = server.get("last_check")
        style = STATE_STYLES.get(server["state"], "")
        row: list[Any] = [
            f"{server['id']}\n[dim]{server['address']}[/]"
            if server["id"] != server["address"]
            else server["id"],
            Text.assemble((server["state"], style), "\n", (server["reason"], "dim")),
            f"{figures.get('rps', 0):.0f}/{figures.get('rps_10s', 0):.1f}",
        ]
        if not compact:
            row.append(str(figures.get("requests", 0)))
        row += [
            _percent(figures.get("error_rate_10s")),
            str(figures.get("retried_10s", 0)),
            _ms(figures.get("p99_10s")),
            str(figures.get("in_flight", server.get("in_flight", 0))),
        ]
        if not compact:
            row.append("-" if not last else ("ok " if last["ok"] else "FAIL ") + last["detail"])
        if spark_width:
            row.append(sparkline(figures.get("history", []), spark_width))
        table.add_row(*row)
    if not pool["servers"]:
        table.add_row("[dim](no servers)[/]", *[""] * (len(table.columns) - 1))
    return table


def render(
    pools: list[dict[str, Any]],
    stats: dict[str, Any],
    *,
    sparklines: bool,
    width: int = 200,
    console: Console | None = None,
) -> Group:
    """Tables of pools and servers (and listeners). With `sparklines`, each server's last
    seconds fit in `width` columns: fewer seconds on a narrow terminal, the newest kept."""
    tables: list[Any] = []
    measure = console or Console(width=width)
    for pool in pools:
        pool_stats = stats["pools"].get(pool["name"], {})
        spark: int | None = None
        compact = False
        if sparklines:
            # The sparkline takes what the other columns leave; on a narrow terminal the
            # total and the last check (both on `bunancer status`) make room for it.
            options = measure.options.update_width(10_000)
            for compact in (False, True):
                bare = _server_table(pool, pool_stats, None, compact)
                used = measure.measure(bare, options=options).maximum
                if width - used - 3 >= SPARK_WANTED:
                    break
            spark = max(SPARK_MIN, min(SPARK_MAX, width - used - 3))
        # The pool's line above its table, not as its title: a title wider than the table
        # would be cut short.
        tables.append(Text.from_markup(_pool_title(pool, pool_stats)))
        tables.append(_server_table(pool, pool_stats, spark, compact))
    if not tables:
        tables.append(Text("no pools"))
    listeners = stats.get("listeners") or []
    if listeners:
        table = Table(title="listeners", title_justify="left")
        for column in ("address", "mode", "connections", "tunnels", "tunnel bytes in/out"):
            table.add_column(column)
        for listener in listeners:
            table.add_row(
                listener["address"],
                listener["mode"],
                str(listener["connections"]),
                str(listener["tunnels"]),
                f"{listener['tunnel_bytes_in']} / {listener['tunnel_bytes_out']}",
            )
        tables.insert(0, table)
    return Group(*tables)


def show_status(client: ApiClient, console: Console) -> None:
    pools, stats = fetch(client)
    console.print(render(pools, stats, sparklines=False, width=console.width))


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """Read single keys without echo (when stdin is a terminal)."""
    if not sys.stdin.isatty():
        yield None
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_top(
    client: ApiClient, console: Console, interval: float = 1.0, frames: int | None = None
) -> None:
    """Redraw every `interval` seconds until `q` or Ctrl-C (or after `frames` frames)."""
    with _keys() as fd, Live(console=console, auto_refresh=False, screen=False) as live:
        drawn = 0
        while frames is None or drawn < frames:
            drawn += 1
            pools, stats = fetch(client)
            header = Text(
                f"bunancer top — {client.base_url} — {time.strftime('%H:%M:%S')} — q quits",
                style="bold",
            )
            body = render(pools, stats, sparklines=True, width=console.width, console=console)
            live.update(Group(header, body), refresh=True)
            deadline = time.monotonic() + interval
            while (left := deadline - time.monotonic()) > 0:
                if fd is None:
                    time.sleep(left)
                    break
                ready, _, _ = select.select([fd], [], [], left)
                if ready and os.read(fd, 1) in (b"q", b"Q"):
                    return
