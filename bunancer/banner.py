"""What `bunancer serve` prints once it is ready: a table for people, then plain `ready:`
lines that scripts and tests wait for."""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.table import Table

from . import __version__
from .core import NATIVE


def banner(balancer: object) -> None:
    """What `bunancer serve` prints once it is ready: its addresses, pools and token."""
    from .app import Balancer

    assert isinstance(balancer, Balancer)
    # soft_wrap: a line longer than the terminal (or than 80 columns when output is not a
    # terminal) is not broken mid-sentence; the token stays on one line to copy.
    console = Console(stderr=False, highlight=False, soft_wrap=True)
    table = Table(title=f"bunancer {__version__}", title_justify="left", show_edge=False)
    table.add_column("listener")
    table.add_column("address")
    table.add_column("default pool")
    for listener in balancer.listeners:
        pool = listener.ctx.pool if listener.mode == "tcp" else listener.ctx.routes.default  # type: ignore[union-attr]
        scheme = "tcp" if listener.mode == "tcp" else "http"
        if listener.tls is not None:
            scheme = "tls" if listener.mode == "tcp" else "https"
        table.add_row(f"proxy ({scheme})", f"{scheme}://{listener.bound}", pool.name)
    console.print(table)
    pools = Table(show_edge=False)
    pools.add_column("pool")
    pools.add_column("algorithm")
    pools.add_column("servers")
    for pool in balancer.pools.values():
        servers = ", ".join(s.address for s in pool.servers.values()) or "(empty)"
        pools.add_row(pool.name, pool.selector.name, servers)
    console.print(pools)
    token = balancer.token
    console.print(f"api:   http://{balancer.api_address}/api/pools")
    if balancer.dashboard_server is not None:
        console.print(f"dashboard: http://{balancer.dashboard_address}/")
    if token is not None:
        if token.created:
            console.print(f"token: {token.value}   (new; saved in {token.source.split(' ', 1)[1]})")
        else:
            console.print(f"token: from {token.source}")
    console.print(f"state: {balancer.config.state_dir}   stop: Ctrl-C (drains in-flight requests)")
    console.print(f"data plane: {NATIVE}")
    log = logging.getLogger("bunancer")
    # Plain lines for scripts and tests that wait for readiness.
    log.info("ready: api listening on %s", balancer.api_address)
    if balancer.dashboard_server is not None:
        log.info("ready: dashboard listening on %s", balancer.dashboard_address)
    for listener in balancer.listeners:
        log.info("ready: proxy listening on %s", listener.bound)
    sys.stdout.flush()
