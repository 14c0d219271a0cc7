"""What the commands that talk to a running balancer share: the --api, --token and
--state-dir options, a client for them, and one way to report a failed call."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from .client import ApiClient, ApiError, BalancerUnreachable, find_token


def api_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--api, --token and --state-dir, shared by the commands that call the API."""
    command = click.option(
        "--state-dir",
        metavar="DIR",
        help="The balancer's state dir, to read its token (default ./.bunancer).",
    )(command)
    command = click.option(
        "--token", envvar="BUNANCER_TOKEN", help="API token (default: the state dir's token)."
    )(command)
    command = click.option(
        "--api",
        "api_url",
        default="http://127.0.0.1:8081",
        envvar="BUNANCER_API",
        show_default=True,
        help="The balancer's API address.",
    )(command)
    return command


def client_for(api_url: str, token: str | None, state_dir: str | None) -> ApiClient:
    return ApiClient(api_url, find_token(token, state_dir=state_dir))


def call(function: Callable[[], Any]) -> Any:
    """Run an API call; turn failures into one clear line and exit code 1."""
    try:
        return function()
    except BalancerUnreachable as error:
        click.echo(f"bunancer: {error}", err=True)
        sys.exit(1)
    except ApiError as error:
        hint = ""
        if error.status == 401:
            hint = " (pass --token, set BUNANCER_TOKEN, or --state-dir of the balancer)"
        click.echo(f"bunancer: {error}{hint}", err=True)
        sys.exit(1)
