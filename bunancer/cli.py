"""Command line: ``bunancer serve``, ``bunancer config check``, ``bunancer compile``, ...

Problems the user can fix (bad config, port in use) print one clear line and exit with
code 2; nothing prints a traceback for them.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from . import __version__
from .apicli import api_options, call, client_for
from .client import ApiError
from .config import Config, ConfigError, parse_backend_url, parse_hostport
from .configfile import apply_overrides, load_config
from .console import STATE_STYLES
from .faultcli import faults_group
from .labcli import lab_command

if TYPE_CHECKING:
    from .control.certificates import Certificate

EXIT_USAGE = 2
EXIT_NOT_DRAINED = 3  # serve stopped, but the drain timeout cut requests or tunnels


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
    "--mode",
    type=click.Choice(["http", "tcp"]),
    help="Mode of the --listen listener: http (default) or tcp (a byte tunnel per connection).",
)
@click.option(
    "-b",
    "--backend",
    "backends",
    multiple=True,
    callback=_check_backends,
    metavar="URL",
    help="Upstream server for the default pool: http://HOST:PORT, tcp://HOST:PORT (repeatable).",
)
@click.option("--state-dir", metavar="DIR", help="Where state lives (default ./.bunancer).")
@click.option(
    "--api-listen",
    callback=_check_listen,
    metavar="HOST:PORT",
    help="Registry/admin API listener (default 127.0.0.1:8081).",
)
@click.option(
    "--dashboard-listen",
    callback=_check_listen,
    metavar="HOST:PORT",
    help="Dashboard listener (default 127.0.0.1:8082).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    help="File holding the API token (default: BUNANCER_TOKEN, else <state-dir>/token).",
)
@click.option(
    "--store",
    metavar="file|redis://HOST:PORT/DB",
    help="Where registrations are saved (default: file, <state-dir>/state.json).",
)
@click.option("--access-log", metavar="PATH|-", help="Write one line per request (off by default).")
@click.option(
    "--access-log-format",
    type=click.Choice(["combined", "json"]),
    help="Access log format (default combined).",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False),
    help="Serve --listen over TLS (HTTPS) with this PEM certificate (and its chain).",
)
@click.option("--tls-key", type=click.Path(dir_okay=False), help="The --tls-cert's private key.")
@click.option(
    "--workers",
    metavar="N|auto",
    help="Data-plane processes (0: serve in this process, the default; auto: one per core).",
)
@click.option(
    "--statsd",
    callback=_check_listen,
    metavar="HOST:PORT",
    help="Send StatsD metrics over UDP once a second.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def serve(
    config_path: str | None,
    listen: str | None,
    mode: str | None,
    backends: tuple[str, ...],
    state_dir: str | None,
    api_listen: str | None,
    dashboard_listen: str | None,
    token_file: str | None,
    store: str | None,
    access_log: str | None,
    access_log_format: str | None,
    statsd: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    workers: str | None,
    log_level: str,
) -> None:
    """Run the load balancer until Ctrl-C or SIGTERM (then drain gracefully; exit code 3 when
    the drain timeout cut what was still open). SIGHUP reloads the config file."""
    from .app import StartupError
    from .app import serve as run
    from .banner import banner

    overrides: dict[str, Any] = {
        "listen": listen,
        "mode": mode,
        "backends": backends,
        "state_dir": state_dir,
        "api_listen": api_listen,
        "dashboard_listen": dashboard_listen,
        "token_file": token_file,
        "store": store,
        "access_log": access_log,
        "access_log_format": access_log_format,
        "statsd": statsd,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "workers": workers,
    }
    config, _ = _load(config_path, **overrides)

    def config_source() -> Config:  # the file read again, the flags on top (as at start)
        return apply_overrides(load_config(config_path), **overrides)

    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    source = config_source if config_path else None
    try:
        drained = run(config, on_ready=banner, config_source=source)
    except StartupError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        return
    if not drained:
        sys.exit(EXIT_NOT_DRAINED)


@cli.command("compile")
@click.option("--force", is_flag=True, help="Rebuild even when the build matches the source.")
@click.option("-q", "--quiet", is_flag=True, help="Say nothing when there is nothing to do.")
def compile_command(force: bool, quiet: bool) -> None:
    """Compile the per-request modules with mypyc (35-40% of the instructions a request).

    For a checkout (pip install -e); an installed wheel carries its build. The same Python
    source runs either way; a build is used only while it matches the source, so an edited
    module runs as Python until the next compile. Needs a C compiler and mypy (pip install
    'bunancer[native]'). BUNANCER_PURE_PYTHON=1 runs the source instead of any build.
    """
    from .native import CompileError, compile_core

    try:
        if not compile_core(force=force) and not quiet:
            click.echo("the compiled data plane matches the source: nothing to do")
    except CompileError as error:
        click.echo(f"bunancer compile: {error}", err=True)
        sys.exit(1)


def _load(path: str | None, **overrides: object) -> tuple[Config, list[tuple[str, Certificate]]]:
    """The config and its certificates (read and checked, with where each is configured);
    exit 2 with the problem if either is bad."""
    from .control.certificates import check_certificates

    try:
        config = apply_overrides(load_config(path), **overrides)  # type: ignore[arg-type]
        return config, check_certificates(config)
    except ConfigError as error:
        _fail(str(error))


# -- talking to a running balancer --------------------------------------------------------


@cli.command("reload")
@api_options
def reload_command(api_url: str, token: str | None, state_dir: str | None) -> None:
    """Re-read the running balancer's config file and apply it without a restart (as SIGHUP
    does). A file that does not load is refused and the running config stays."""
    client = client_for(api_url, token, state_dir)
    client.timeout = 60.0  # servers the file dropped drain first (up to timeouts.drain)

    def reload() -> dict[str, Any]:
        try:
            return client.reload()
        except ApiError as error:
            if error.status == 400:
                _fail(error.message)  # the file's problem, as `config check` says it (exit 2)
            raise

    result = call(reload)
    for line in result["changes"] or ["nothing changed"]:
        click.echo(line)
    for key in result["restart_needed"]:
        click.echo(f"[{key}] changed: it applies at the next restart")
    for line in result["problems"]:
        click.echo(f"not applied: {line}", err=True)
    sys.exit(1 if result["problems"] else 0)


@cli.command("pools")
@api_options
def pools_command(api_url: str, token: str | None, state_dir: str | None) -> None:
    """Pools and their servers, from a running balancer."""
    pools = call(lambda: client_for(api_url, token, state_dir).pools())
    console = Console(highlight=False)
    if not pools:
        console.print("no pools")
        return
    for pool in pools:
        table = Table(
            title=f"pool {pool['name']} ({pool['algorithm']}, "
            f"{pool['routable']}/{len(pool['servers'])} routable)",
            title_justify="left",
        )
        for column in ("id", "address", "weight", "state", "reason", "last check"):
            table.add_column(column)
        for server in pool["servers"]:
            style = STATE_STYLES.get(server["state"], "")
            last = server["last_check"]
            table.add_row(
                server["id"],
                server["address"],
                str(server["weight"]),
                f"[{style}]{server['state']}[/]",
                server["reason"],
                "-" if last is None else last["detail"],
            )
        if not pool["servers"]:
            table.add_row("(empty)", "", "", "", "", "")
        console.print(table)


@cli.command("status")
@api_options
def status_command(api_url: str, token: str | None, state_dir: str | None) -> None:
    """Pools and servers with state, reason, req/s, error rate, p99 and last check."""
    from .console import show_status

    client = client_for(api_url, token, state_dir)
    call(lambda: show_status(client, Console(highlight=False)))


@cli.command("top")
@click.option("--interval", type=click.FloatRange(0.2, 60), default=1.0, show_default=True)
@click.option("--frames", type=click.IntRange(1), hidden=True, help="Stop after N redraws.")
@api_options
def top_command(
    interval: float,
    frames: int | None,
    api_url: str,
    token: str | None,
    state_dir: str | None,
) -> None:
    """A live view of the balancer (q or Ctrl-C quits)."""
    from .console import run_top

    client = client_for(api_url, token, state_dir)
    try:
        call(lambda: run_top(client, Console(highlight=False), interval, frames))
    except KeyboardInterrupt:
        pass


@cli.group("servers")
def servers_group() -> None:
    """Add, remove, drain, enable, disable servers and set weights."""


def _show(server: dict[str, Any], verb: str) -> None:
    click.echo(
        f"{verb} {server['pool']}/{server['id']} ({server['address']}): "
        f"{server['state']}, weight {server['weight']}"
    )


@servers_group.command("add")
@click.argument("address")
@click.option("--pool", default="default", show_default=True)
@click.option("--id", "server_id", help="Server id (default: HOST:PORT).")
@click.option("--weight", type=click.IntRange(1, 10000), default=1, show_default=True)
@click.option("--health-path", help="Health check path for this server.")
@api_options
def servers_add(
    address: str,
    pool: str,
    server_id: str | None,
    weight: int,
    health_path: str | None,
    api_url: str,
    token: str | None,
    state_dir: str | None,
) -> None:
    """Register ADDRESS (HOST:PORT or http://HOST:PORT) in a pool."""
    try:
        host, port = parse_backend_url(address)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="ADDRESS") from None
    health = {"path": health_path} if health_path else None
    client = client_for(api_url, token, state_dir)
    server = call(
        lambda: client.register(pool, host, port, server_id=server_id, weight=weight, health=health)
    )
    _show(server, "added")


@servers_group.command("remove")
@click.argument("server_id")
@click.option("--pool", default="default", show_default=True)
@api_options
def servers_remove(
    server_id: str, pool: str, api_url: str, token: str | None, state_dir: str | None
) -> None:
    """Drain SERVER_ID (requests in flight finish), then remove it."""
    client = client_for(api_url, token, state_dir)
    call(lambda: client.deregister(pool, server_id))
    click.echo(f"removed {pool}/{server_id}")


def _admin_command(name: str, admin: str, done: str, help_text: str) -> None:
    @servers_group.command(name, help=help_text)
    @click.argument("server_id")
    @click.option("--pool", default="default", show_default=True)
    @api_options
    def command(
        server_id: str, pool: str, api_url: str, token: str | None, state_dir: str | None
    ) -> None:
        client = client_for(api_url, token, state_dir)
        _show(call(lambda: client.update_server(pool, server_id, admin=admin)), done)


_admin_command(
    "drain", "draining", "drained", "Stop routing new requests to SERVER_ID (it stays listed)."
)
_admin_command("enable", "enabled", "enabled", "Route to SERVER_ID again once its check passes.")
_admin_command(
    "disable", "disabled", "disabled", "Stop routing to SERVER_ID (still health-checked)."
)


@servers_group.command("weight")
@click.argument("server_id")
@click.argument("weight", type=click.IntRange(1, 10000))
@click.option("--pool", default="default", show_default=True)
@api_options
def servers_weight(
    server_id: str,
    weight: int,
    pool: str,
    api_url: str,
    token: str | None,
    state_dir: str | None,
) -> None:
    """Set the weight of SERVER_ID."""
    client = client_for(api_url, token, state_dir)
    _show(call(lambda: client.update_server(pool, server_id, weight=weight)), "weighted")


@cli.group()
def config() -> None:
    """Work with config files."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def config_check(file: str) -> None:
    """Validate FILE without starting; exit 2 with file: key: problem on error."""
    loaded, certificates = _load(file)
    servers = sum(len(p.servers) for p in loaded.pools.values())
    click.echo(
        f"{file}: ok ({len(loaded.listeners)} listener(s), {len(loaded.pools)} pool(s), "
        f"{servers} server(s), {len(loaded.routes)} route(s))"
    )
    for where, certificate in certificates:
        names = ", ".join(certificate.files.names) or "(no names)"
        click.echo(
            f"{where}: {certificate.files.cert}: {names}; expires "
            f"{certificate.not_after:%Y-%m-%d} ({certificate.days_left():.0f} days left)"
        )


def _add_stubs() -> None:
    # The stubs live in their own package (stubs/) and are shipped beside bunancer.
    from stubs.cli import stubs_group

    cli.add_command(stubs_group, "stubs")


cli.add_command(faults_group, "faults")
cli.add_command(lab_command, "lab")


_add_stubs()


def main() -> None:
    cli(prog_name="bunancer")
