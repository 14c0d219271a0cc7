"""`bunancer faults ...`: set, list and remove the lab's fault rules on a running balancer
(its API: `/api/faults`). Each rule ends by itself after --for seconds."""

from __future__ import annotations

from typing import Any

import click

from .apicli import api_options, call, client_for


@click.group("faults")
def faults_group() -> None:
    """Inject faults into real traffic: delay, abort or reset a share of a pool's requests."""


def _describe(rule: dict[str, Any]) -> str:
    return f"{rule['id']}: {rule['summary']}; ends in {rule['seconds_left']:.0f}s"


@faults_group.command("add")
@click.argument("kind", type=click.Choice(["delay", "abort", "reset"]))
@click.option("--pool", default="default", show_default=True)
@click.option("--percent", type=click.FloatRange(0, 100, min_open=True), default=100.0,
              show_default=True, help="Share of the matching requests hit.")  # fmt: skip
@click.option("--delay", "delay_ms", type=click.IntRange(0, 60_000), help="Delay in ms.")
@click.option("--delay-max", "delay_max_ms", type=click.IntRange(0, 60_000),
              help="With --delay: a random delay between the two, in ms.")  # fmt: skip
@click.option("--status", type=click.IntRange(400, 599), default=503, show_default=True,
              help="The answer of an abort.")  # fmt: skip
@click.option("--header", help="Only requests carrying this header.")
@click.option("--path-prefix", help="Only requests whose path starts with this.")
@click.option("--host", help="Only requests for this host (*.example.com: its subdomains).")
@click.option("--for", "seconds", type=click.FloatRange(0, 3600, min_open=True), default=60.0,
              show_default=True, help="Seconds until the rule ends by itself.")  # fmt: skip
@api_options
def faults_add(
    kind: str,
    pool: str,
    percent: float,
    delay_ms: int | None,
    delay_max_ms: int | None,
    status: int,
    header: str | None,
    path_prefix: str | None,
    host: str | None,
    seconds: float,
    api_url: str,
    token: str | None,
    state_dir: str | None,
) -> None:
    """Set a rule: KIND is delay (needs --delay), abort (--status) or reset (the client's
    connection is reset)."""
    body: dict[str, Any] = {"pool": pool, "kind": kind, "percent": percent, "seconds": seconds}
    optional = {"delay_ms": delay_ms, "delay_max_ms": delay_max_ms, "header": header,
                "path_prefix": path_prefix, "host": host}  # fmt: skip
    body.update({key: value for key, value in optional.items() if value is not None})
    if kind == "abort":
        body["status"] = status
    client = client_for(api_url, token, state_dir)
    rule = call(lambda: client.request("POST", "/api/faults", body))
    click.echo(f"set {_describe(rule)}")


@faults_group.command("list")
@api_options
def faults_list(api_url: str, token: str | None, state_dir: str | None) -> None:
    """The active rules, and when each ends."""
    client = client_for(api_url, token, state_dir)
    rules = call(lambda: client.request("GET", "/api/faults"))
    if not rules:
        click.echo("no fault rules: traffic flows untouched")
    for rule in rules:
        click.echo(_describe(rule))


@faults_group.command("remove")
@click.argument("rule_id", required=False)
@click.option("--all", "remove_all", is_flag=True, help="Remove every rule.")
@api_options
def faults_remove(
    rule_id: str | None,
    remove_all: bool,
    api_url: str,
    token: str | None,
    state_dir: str | None,
) -> None:
    """End RULE_ID now (or every rule with --all)."""
    if (rule_id is None) == (not remove_all):
        raise click.UsageError("give a RULE_ID or --all, not both")
    client = client_for(api_url, token, state_dir)
    listed = [] if rule_id else call(lambda: client.request("GET", "/api/faults"))
    ids = [rule_id] if rule_id else [rule["id"] for rule in listed]
    for each in ids:
        call(lambda each=each: client.request("DELETE", f"/api/faults/{each}"))
        click.echo(f"removed {each}")
