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
    values = values[-width:]
    top = max(values, default=0)
    if not top:
        return _SPARKS[0] * len(values)
    return "".join(_SPARKS[min(len(_SPARKS) - 1, v * (len(_SPARKS) - 1) // top)] for v in values)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def fetch(client: ApiClient) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    return client.pools(), client.request("GET", "/api/stats")


def render(pools: list[dict[str, Any]], stats: dict[str, Any], *, sparklines: bool) -> Group:
    tables: list[Any] = []
    for pool in pools:
        pool_stats = stats["pools"].get(pool["name"], {})
        title = (
            f"pool [bold]{pool['name']}[/] ({pool['algorithm']}) "
            f"{pool['routable']}/{len(pool['servers'])} routable   "
            f"{pool_stats.get('rps', 0):.0f} req/s   "
            f"errors {_percent(pool_stats.get('error_rate_10s'))}   "
            f"p99 {_ms(pool_stats.get('p99_10s'))} ms"
        )
        table = Table(title=title, title_justify="left", expand=False)
        table.add_column("server")
        table.add_column("state")
        table.add_column("reason", overflow="fold", max_width=34)
        table.add_column("req/s", justify="right")
        table.add_column("err %", justify="right")
        table.add_column("p99 ms", justify="right")
        table.add_column("in flight", justify="right")
        table.add_column("last check", overflow="fold", max_width=22)
        if sparklines:
            table.add_column("req/s, last 30 s")
        for server in pool["servers"]:
            figures = pool_stats.get("servers", {}).get(server["id"], {})
            last = server.get("last_check")
            row = [
                f"{server['id']}\n[dim]{server['address']}[/]"
                if server["id"] != server["address"]
                else server["id"],
                Text(server["state"], style=STATE_STYLES.get(server["state"], "")),
                server["reason"],
                f"{figures.get('rps', 0):.0f}",
                _percent(figures.get("error_rate_10s")),
                _ms(figures.get("p99_10s")),
                str(figures.get("in_flight", server.get("in_flight", 0))),
                "-" if not last else ("ok " if last["ok"] else "FAIL ") + last["detail"],
            ]
            if sparklines:
                row.append(sparkline(figures.get("history", [])))
            table.add_row(*row)
        if not pool["servers"]:
            table.add_row("[dim](no servers)[/]", *[""] * (len(table.columns) - 1))
        tables.append(table)
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
    console.print(render(pools, stats, sparklines=False))


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
            live.update(Group(header, render(pools, stats, sparklines=True)), refresh=True)
            deadline = time.monotonic() + interval
            while (left := deadline - time.monotonic()) > 0:
                if fd is None:
                    time.sleep(left)
                    break
                ready, _, _ = select.select([fd], [], [], left)
                if ready and os.read(fd, 1) in (b"q", b"Q"):
                    return
