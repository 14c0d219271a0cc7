"""Command line: ``bunancer serve``, ``bunancer config check``.

Problems the user can fix (bad config, port in use) print one clear line and exit with
code 2; nothing prints a traceback for them.
"""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

import click
from rich.console import Console
from rich.table import Table

from . import __version__
from .config import (
    Config,
    ConfigError,
    apply_overrides,
    load_config,
    parse_backend_url,
    parse_hostport,
)

EXIT_USAGE = 2


def _fail(message: str) -> NoReturn:
    click.echo(f"bunancer: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _check_listen(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            parse_hostport(value)
        except ValueError as error:
            raise click.BadParameter(str(error)) from None
    return value


def _check_backends(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    for backend in value:
        try:
            parse_backend_url(backend)
        except ValueError as error:
            raise click.BadParameter(str(error)) from None
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bunancer")
def cli() -> None:
    """bunancer: an HTTP/1.1 load balancer you can watch at work."""


@cli.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="TOML config file (embedded defaults without it).",
)
@click.option(
    "--listen",
    callback=_check_listen,
    metavar="HOST:PORT",
    help="Proxy listener address (default 127.0.0.1:8080).",
)
@click.option(
    "-b",
    "--backend",
    "backends",
    multiple=True,
    callback=_check_backends,
    metavar="URL",
    help="Upstream server for the default pool, e.g. http://127.0.0.1:9001 (repeatable).",
)
@click.option("--state-dir", metavar="DIR", help="Where state lives (default ./.bunancer).")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def serve(
    config_path: str | None,
    listen: str | None,
    backends: tuple[str, ...],
    state_dir: str | None,
    log_level: str,
) -> None:
    """Run the load balancer until Ctrl-C or SIGTERM (then drain gracefully)."""
    from .app import StartupError
    from .app import serve as run

    config = _load(config_path, listen=listen, backends=backends, state_dir=state_dir)
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        run(config, on_ready=_banner)
    except StartupError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        pass


def _load(path: str | None, **overrides: object) -> Config:
    try:
        config = load_config(path)
        return apply_overrides(config, **overrides)  # type: ignore[arg-type]
    except ConfigError as error:
        _fail(str(error))


def _banner(balancer: object) -> None:
    from .app import Balancer

    assert isinstance(balancer, Balancer)
    console = Console(stderr=False, highlight=False)
    table = Table(title=f"bunancer {__version__}", title_justify="left", show_edge=False)
    table.add_column("listener")
    table.add_column("address")
    table.add_column("default pool")
    for listener in balancer.listeners:
        table.add_row("proxy (http)", f"http://{listener.bound}", listener.ctx.routes.default.name)
    console.print(table)
    pools = Table(show_edge=False)
    pools.add_column("pool")
    pools.add_column("algorithm")
    pools.add_column("servers")
    for pool in balancer.pools.values():
        servers = ", ".join(s.address for s in pool.servers.values()) or "(empty)"
        pools.add_row(pool.name, pool.selector.name, servers)
    console.print(pools)
    console.print(f"state: {balancer.config.state_dir}   stop: Ctrl-C (drains in-flight requests)")
    for listener in balancer.listeners:
        # A plain line for scripts and tests that wait for readiness.
        logging.getLogger("bunancer").info("ready: proxy listening on %s", listener.bound)
    sys.stdout.flush()


@cli.group()
def config() -> None:
    """Work with config files."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def config_check(file: str) -> None:
    """Validate FILE without starting; exit 2 with file: key: problem on error."""
    loaded = _load(file)
    servers = sum(len(p.servers) for p in loaded.pools.values())
    click.echo(
        f"{file}: ok ({len(loaded.listeners)} listener(s), {len(loaded.pools)} pool(s), "
        f"{servers} server(s), {len(loaded.routes)} route(s))"
    )


def main() -> None:
    cli(prog_name="bunancer")
