"""``bunancer stubs``: click commands and the interactive menu for stub backends.

A thin layer over the SDK (stubs/sdk.py): it parses flags, prints rich tables and turns SDK
errors into one line and an exit code (1: unknown stub, refused registration, a stub that
did not start; 2: bad flags, a port in use). With no subcommand it opens a menu.
``python -m stubs.cli`` runs the same group standalone.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.prompt import Confirm, IntPrompt, Prompt
from rich.table import Table

from .behaviour import FIELDS, HEALTHS, MODES, Behaviour, BehaviourError
from .sdk import PortInUse, Stub, StubError, StubManager

EXIT_ERROR = 1
EXIT_USAGE = 2
PROG = "bunancer stubs"


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"{PROG}: {message}", err=True)
    sys.exit(code)


def _run(function: Callable[[], Any]) -> Any:
    """Call the SDK; its errors become one line and an exit code."""
    try:
        return function()
    except PortInUse as error:
        _fail(f"{error}; pick another --port or stop what uses it", EXIT_USAGE)
    except StubError as error:
        _fail(str(error))


def _console() -> Console:
    # Made per command: click's test runner swaps stdout, and rich must write to that one.
    return Console(highlight=False)


def _manager(ctx: click.Context, state_dir: str | None) -> StubManager:
    return StubManager(state_dir or ctx.meta.get("stubs.state_dir"))


def _check_setting(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            try:
                Behaviour().with_changes({name: value})
            except BehaviourError as error:
                raise click.BadParameter(str(error).split(": ", 1)[-1]) from None
        return value

    return check


def state_dir_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--state-dir",
        metavar="DIR",
        help="State dir holding the stubs (default: the group's, else ./.bunancer).",
    )(command)


def behaviour_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--status, --latency, --fail-rate, --mode, --size, --health (start and set)."""
    options = [
        click.option(
            "--health",
            type=click.Choice(HEALTHS),
            help="What /health answers: auto (default) the --status; ok or fail pin 200 or 503.",
        ),
        click.option("--size", type=click.IntRange(0), help="Response body bytes."),
        click.option(
            "--mode", type=click.Choice(MODES), help="What a failure does (default 5xx: a 503)."
        ),
        click.option(
            "--fail-rate",
            callback=_check_setting("fail_rate"),
            metavar="RATE",
            help="Share of requests that fail: 0..1 or 10%.",
        ),
        click.option(
            "--latency",
            callback=_check_setting("latency"),
            metavar="SPEC",
            help="0, 50ms (fixed), 20-80ms (uniform) or longtail:20ms (median).",
        ),
        click.option("--status", type=click.IntRange(200, 599), help="Response status."),
    ]
    for option in options:
        command = option(command)
    return command


def _changes(**values: Any) -> dict[str, Any]:
    return {name: values[name] for name in FIELDS if values.get(name) is not None}


# -- the group ----------------------------------------------------------------------------------


@click.group(
    "stubs",
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--state-dir",
    envvar="BUNANCER_STATE_DIR",
    metavar="DIR",
    help="State dir holding the stubs (default ./.bunancer, the balancer's, for its token).",
)
@click.pass_context
def stubs_group(ctx: click.Context, state_dir: str | None) -> None:
    """Fake backends that fail on demand. With no subcommand: an interactive menu."""
    ctx.meta["stubs.state_dir"] = state_dir
    if ctx.invoked_subcommand is None:
        run_menu(StubManager(state_dir), _console())


@stubs_group.command("start")
@click.option(
    "--count", type=click.IntRange(1, 100), default=1, show_default=True, help="How many."
)
@click.option("--port", type=click.IntRange(1, 65535), help="First port (then +1 each).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--pool", default="default", show_default=True, help="Pool to register in.")
@behaviour_options
@click.option("--register", is_flag=True, help="Join the balancer's pool; leave it on stop.")
@click.option(
    "--api",
    default="http://127.0.0.1:8081",
    envvar="BUNANCER_API",
    show_default=True,
    help="The balancer's API address.",
)
@click.option("--token", envvar="BUNANCER_TOKEN", help="API token (default: <state-dir>/token).")
@state_dir_option
@click.pass_context
def start_command(
    ctx: click.Context,
    /,
    count: int,
    port: int | None,
    host: str,
    pool: str,
    register: bool,
    api: str,
    token: str | None,
    state_dir: str | None,
    **behaviour: Any,
) -> None:
    """Start --count stubs in the background (ids: the next free s1, s2, ...)."""
    manager = _manager(ctx, state_dir)
    stubs: list[Stub] = _run(
        lambda: manager.start(
            count,
            port=port,
            host=host,
            behaviour=_changes(**behaviour),
            register=register,
            pool=pool,
            api=api,
            token=token,
        )
    )
    console = _console()
    for stub in stubs:
        console.print(f"started {stub.id}  pid {stub.pid}  {stub.url}")
    if register:
        _report_registration(stubs, pool, api)


def _report_registration(stubs: list[Stub], pool: str, api: str) -> None:
    waiting = [s for s in stubs if s.registration()["state"] != "registered"]
    if not waiting:
        click.echo(f"registered in pool {pool} at {api}")
        return
    detail = waiting[0].registration()["detail"]
    click.echo(
        f"{PROG}: warning: {detail}\n"
        f"{PROG}: {', '.join(s.id for s in waiting)} keep trying to register "
        "(backoff up to 5s); see `bunancer stubs logs ID`",
        err=True,
    )


def _uptime(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def stubs_table(stubs: list[Stub], numbered: bool = False) -> Table:
    table = Table(show_edge=False)
    if numbered:
        table.add_column("#", justify="right")
    for column in ("id", "pid", "port", "pool", "behaviour", "uptime", "requests"):
        table.add_column(
            column, justify="right" if column in ("pid", "port", "requests") else "left"
        )
    for number, stub in enumerate(stubs, 1):
        try:
            info = stub.info()
            behaviour = Behaviour.from_dict(info["behaviour"]).describe()
            requests = str(info["stats"]["requests"])
            state = info["registration"]["state"]
        except StubError:
            behaviour, requests, state = "(not answering)", "?", "off"
        pool = "-" if stub.pool is None else stub.pool
        if stub.pool is not None and state != "registered":
            pool += f" ({state})"
        row = [stub.id, str(stub.pid), str(stub.port), pool, behaviour, _uptime(stub.uptime)]
        table.add_row(*([str(number)] if numbered else []), *row, requests)
    return table


@stubs_group.command("list")
@state_dir_option
@click.pass_context
def list_command(ctx: click.Context, state_dir: str | None) -> None:
    """Running stubs: id, pid, port, pool, behaviour, uptime, requests served."""
    manager = _manager(ctx, state_dir)
    stubs = _run(manager.list)
    console = _console()
    if not stubs:
        console.print(f"no stubs running in {manager.directory}")
        return
    console.print(stubs_table(stubs))


@stubs_group.command("logs")
@click.argument("stub_id", metavar="ID")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until it stops.")
@click.option("-n", "--lines", type=click.IntRange(0), default=20, show_default=True)
@state_dir_option
@click.pass_context
def logs_command(
    ctx: click.Context, stub_id: str, follow: bool, lines: int, state_dir: str | None
) -> None:
    """Print the access log of stub ID (time, method, path, status, latency)."""
    manager = _manager(ctx, state_dir)
    if not follow:
        for line in _run(lambda: manager.tail(stub_id, lines)):
            click.echo(line)
        return
    _run(lambda: manager.log_path(stub_id))  # an unknown id fails here, with one line
    try:
        for line in manager.follow(stub_id, lines):
            click.echo(line)
    except KeyboardInterrupt:
        pass


@stubs_group.command("set")
@click.argument("stub_id", metavar="ID")
@behaviour_options
@state_dir_option
@click.pass_context
def set_command(ctx: click.Context, /, stub_id: str, state_dir: str | None, **values: Any) -> None:
    """Change the behaviour of stub ID while it runs."""
    changes = _changes(**values)
    if not changes:
        raise click.UsageError("nothing to change: pass --status, --latency, --fail-rate, ...")
    manager = _manager(ctx, state_dir)
    behaviour: Behaviour = _run(lambda: manager.set(stub_id, **changes))
    click.echo(f"{stub_id}: {behaviour.describe()}")


@stubs_group.command("stop")
@click.argument("stub_ids", metavar="[ID]...", nargs=-1)
@click.option("--all", "stop_all", is_flag=True, help="Stop every stub of the state dir.")
@state_dir_option
@click.pass_context
def stop_command(
    ctx: click.Context, stub_ids: tuple[str, ...], stop_all: bool, state_dir: str | None
) -> None:
    """Stop stubs (registered ones leave their pool first)."""
    if not stub_ids and not stop_all:
        raise click.UsageError("name the stubs to stop, or pass --all")
    manager = _manager(ctx, state_dir)
    if stop_all:
        stopped = _run(manager.stop_all)
        if not stopped:
            click.echo(f"no stubs running in {manager.directory}")
    else:
        for stub_id in stub_ids:
            _run(partial(manager.get, stub_id))  # every id is checked before anything stops
        stopped = [_run(partial(manager.stop, stub_id)) for stub_id in stub_ids]
    for stub in stopped:
        click.echo(f"stopped {stub.id} (pid {stub.pid})")


# -- the interactive menu -------------------------------------------------------------------------


def run_menu(manager: StubManager, console: Console) -> None:
    """Pick a stub (then logs / set behaviour / stop / back), add new, stop all, quit.

    Enter redraws the list (uptimes, requests); only q, Ctrl-C or end of input quit.
    """
    try:
        while True:
            stubs = manager.list()
            console.print()
            if stubs:
                console.print(stubs_table(stubs, numbered=True))
            else:
                console.print(f"no stubs running in {manager.directory}")
            choices = [str(n) for n in range(1, len(stubs) + 1)] + [s.id for s in stubs]
            choices += ["a", "s", "q"] if stubs else ["a", "q"]
            pick = "[b]number[/] or [b]id[/] to pick a stub, " if stubs else ""
            stop_all = "[b]s[/] stop all, " if stubs else ""
            # Default "": rich returns it unvalidated, so Enter redraws rather than quits.
            choice = Prompt.ask(
                f"{pick}[b]a[/] add, {stop_all}[b]Enter[/] refresh, [b]q[/] quit",
                console=console,
                choices=choices,
                show_choices=False,
                default="",
                show_default=False,
            )
            if choice == "":
                continue
            if choice == "q":
                return
            try:
                if choice == "a":
                    _menu_add(manager, console)
                elif choice == "s":
                    for stub in manager.stop_all():
                        console.print(f"stopped {stub.id} (pid {stub.pid})")
                else:
                    stub = stubs[int(choice) - 1] if choice.isdigit() else manager.get(choice)
                    _menu_stub(manager, stub, console)
            except StubError as error:
                console.print(f"[red]{error}[/]")
    except (EOFError, KeyboardInterrupt):
        console.print()


def _menu_stub(manager: StubManager, stub: Stub, console: Console) -> None:
    while True:
        try:
            info = stub.info()
        except StubError:
            console.print(f"[red]{stub.id} is no longer running[/]")
            return
        behaviour = Behaviour.from_dict(info["behaviour"])
        console.print(
            f"\n[b]{stub.id}[/]  pid {stub.pid}  {stub.url}  {behaviour.describe()}  "
            f"requests {info['stats']['requests']}"
        )
        action = Prompt.ask(
            "[b]l[/] logs, [b]f[/] follow logs, [b]s[/] set behaviour, [b]p[/] stop, [b]b[/] back",
            console=console,
            choices=["l", "f", "s", "p", "b"],
            show_choices=False,
            default="b",
        )
        try:
            if action == "b":
                return
            if action == "l":
                for line in manager.tail(stub.id, 20):
                    console.print(line, markup=False)
            elif action == "f":
                console.print("(Ctrl-C returns to the menu)")
                try:
                    for line in manager.follow(stub.id, 10):
                        console.print(line, markup=False)
                except KeyboardInterrupt:
                    pass
            elif action == "s":
                changed = manager.set(stub.id, **_ask_behaviour(behaviour, console))
                console.print(f"{stub.id}: {changed.describe()}")
            else:
                manager.stop(stub.id)
                console.print(f"stopped {stub.id} (pid {stub.pid})")
                return
        except (StubError, BehaviourError) as error:
            console.print(f"[red]{error}[/]")


def _ask_text(label: str, default: str, check: str, console: Console) -> str:
    """Ask until the value passes the behaviour's own validation."""
    while True:
        value = Prompt.ask(label, console=console, default=default)
        try:
            Behaviour().with_changes({check: value})
            return value
        except BehaviourError as error:
            console.print(f"[red]{error}[/]")


def _ask_behaviour(current: Behaviour, console: Console) -> dict[str, Any]:
    status = IntPrompt.ask("status", console=console, default=current.status)
    latency = _ask_text(
        "latency (0, 50ms, 20-80ms, longtail:20ms)", str(current.latency), "latency", console
    )
    fail_rate = _ask_text("fail rate (0..1)", f"{current.fail_rate:g}", "fail_rate", console)
    mode = Prompt.ask("failure mode", console=console, choices=list(MODES), default=current.mode)
    health = Prompt.ask(
        "health (auto: the status, ok: 200, fail: 503)",
        console=console,
        choices=list(HEALTHS),
        default=current.health,
    )
    return {
        "status": status,
        "latency": latency,
        "fail_rate": fail_rate,
        "mode": mode,
        "health": health,
    }


def _menu_add(manager: StubManager, console: Console) -> None:
    count = IntPrompt.ask("how many", console=console, default=1)
    status = IntPrompt.ask("status", console=console, default=200)
    # Yes by default: a stub added from the menu is almost always meant to take traffic.
    register = Confirm.ask("register with the balancer", console=console, default=True)
    pool = Prompt.ask("pool", console=console, default="default") if register else "default"
    try:
        stubs = manager.start(
            max(count, 1), behaviour={"status": status}, register=register, pool=pool
        )
    except (StubError, BehaviourError) as error:
        console.print(f"[red]{error}[/]")
        return
    for stub in stubs:
        console.print(f"started {stub.id}  pid {stub.pid}  {stub.url}")
    for stub in stubs:
        registration = stub.registration()
        if register and registration["state"] != "registered":
            console.print(f"[yellow]{stub.id}: {registration['detail']}[/]")


def main() -> None:
    stubs_group(prog_name=PROG)


if __name__ == "__main__":
    main()
