"""`bunancer lab`: run an experiment of the algorithm lab on a running balancer (its API:
`/api/lab`) and print each arm's figures with rich, live while it runs, then the result."""

from __future__ import annotations

import sys
import time
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from .apicli import api_options, call, client_for

POLL = 1.0  # seconds between looks at the running experiment


def fmt_ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.1f} ms"


def arms_table(view: dict[str, Any]) -> Group:
    """Each arm's figures, then each server's share of each arm's requests."""
    state = "running" if view["running"] else view.get("why") or "ended"
    figures = Table(
        title=f"lab {view['id']} on pool {view['pool']}: {view['elapsed']:.0f}s of "
        f"{view['seconds']:g}s, split {view['split']} ({state})",
        title_justify="left",
    )
    figures.add_column("arm", no_wrap=True)
    for heading in ("requests", "req/s", "errors", "p50", "p90", "p99"):
        figures.add_column(heading, justify="right", no_wrap=True)
    for arm in view["arms"]:
        rate = arm["error_rate"]
        figures.add_row(
            arm["label"],
            f"{arm['requests']:,}",
            f"{arm['rps']:,.1f}",
            "—" if rate is None else f"{rate * 100:.1f}%",
            fmt_ms(arm["p50"]),
            fmt_ms(arm["p90"]),
            fmt_ms(arm["p99"]),
        )
    shares = Table(title="share of each arm's requests", title_justify="left")
    shares.add_column("server", no_wrap=True)
    servers = sorted({sid for arm in view["arms"] for sid in arm["shares"]})
    for arm in view["arms"]:
        shares.add_column(arm["label"], justify="right", no_wrap=True)
    for sid in servers:
        shares.add_row(sid, *(f"{arm['shares'].get(sid, 0.0) * 100:.0f}%" for arm in view["arms"]))
    return Group(figures, shares)


@click.command("lab")
@click.option("--pool", default="default", show_default=True)
@click.option(
    "--algorithms",
    required=True,
    help="Two to four, comma-separated; an option after a colon: hash:header:X-User "
    "(the hash key), sticky:p2c (the fallback).",
)
@click.option("--duration", type=click.FloatRange(5, 3600), default=60.0, show_default=True,
              help="Seconds; the experiment ends by itself.")  # fmt: skip
@click.option("--split", type=click.Choice(["random", "client"]), default="random",
              show_default=True, help="A request's arm: at random, or by its client.")  # fmt: skip
@api_options
def lab_command(
    pool: str,
    algorithms: str,
    duration: float,
    split: str,
    api_url: str,
    token: str | None,
    state_dir: str | None,
) -> None:
    """Split a pool's real traffic between algorithms for --duration seconds and compare
    them: requests/s, errors, p50/p90/p99 and each server's share, per algorithm."""
    client = client_for(api_url, token, state_dir)
    names = [name.strip() for name in algorithms.split(",") if name.strip()]
    body = {"pool": pool, "algorithms": names, "split": split, "seconds": duration}
    view = call(lambda: client.request("POST", "/api/lab", body))
    console = Console(highlight=False)
    try:
        with Live(arms_table(view), console=console, auto_refresh=False,
                  transient=True) if console.is_terminal else _Quiet() as live:  # fmt: skip
            while view["running"]:
                time.sleep(POLL)  # the experiment runs in the balancer; this only looks
                running = call(lambda: client.request("GET", "/api/lab"))["running"]
                if running is None or running["id"] != view["id"]:
                    break
                view = running
                live.update(arms_table(view), refresh=True)
    except KeyboardInterrupt:
        call(lambda: client.request("DELETE", "/api/lab"))
    result = call(lambda: client.request("GET", f"/api/lab/results/{view['id']}"))
    console.print(arms_table(result))
    sys.exit(0)


class _Quiet:
    """Live's stand-in when output is not a terminal: only the result is printed."""

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, table: Group, refresh: bool = False) -> None:
        return None
