"""Reading a config: a TOML file (or the embedded defaults) into a validated `Config`, and
command-line flags on top of it (`apply_overrides`: flags win over the file).

Every problem is one `ConfigError` line naming the file, the key and the problem.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .config import Config, ConfigError
from .problems import describe_problem


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key, message = describe_problem(item)
        lines.append(f"{source}: {key or '(top level)'}: {message}")
    return "\n".join(lines)


def build_config(data: dict[str, Any], source: str = "<defaults>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def load_config(path: str | Path | None) -> Config:
    """Read a TOML file, or return the embedded defaults when `path` is None."""
    if path is None:
        return build_config({})
    source = str(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except OSError as error:
        raise ConfigError(f"{source}: cannot read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: invalid TOML: {error}") from None
    return build_config(data, source)


def apply_overrides(
    config: Config,
    *,
    listen: str | None = None,
    mode: str | None = None,
    backends: tuple[str, ...] = (),
    state_dir: str | None = None,
    api_listen: str | None = None,
    dashboard_listen: str | None = None,
    token_file: str | None = None,
    store: str | None = None,
    access_log: str | None = None,
    access_log_format: str | None = None,
    statsd: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    workers: str | None = None,
) -> Config:
    """Apply command-line flags on top of a loaded config: flags win over the file."""
    # Only what the file set (defaults are filled in again), so that derived defaults such
    # as a TCP pool's connect checks follow the flags too.
    data = config.model_dump(exclude_none=True, exclude_unset=True)
    if not data.get("listeners"):
        data["listeners"] = [{}]
    for section in ("api", "dashboard", "access_log", "stats"):
        data.setdefault(section, {})
    data.setdefault("pools", {})
    if listen is not None:
        data["listeners"][0]["address"] = listen
    if mode is not None:
        data["listeners"][0]["mode"] = mode
    if tls_cert is not None or tls_key is not None:
        if tls_cert is None or tls_key is None:
            raise ConfigError("command line: --tls-cert and --tls-key go together")
        data["listeners"][0]["tls"] = {"cert": tls_cert, "key": tls_key}
    if api_listen is not None:
        data["api"]["listen"] = api_listen
    if dashboard_listen is not None:
        data["dashboard"]["listen"] = dashboard_listen
    if token_file is not None:
        data["api"]["token_file"] = token_file
    if store is not None:
        data["store"] = store
    if access_log is not None:
        data["access_log"]["path"] = access_log
    if access_log_format is not None:
        data["access_log"]["format"] = access_log_format
    if statsd is not None:
        data["stats"]["statsd"] = statsd
    if workers is not None:
        data["workers"] = int(workers) if workers.isdigit() else workers
    if backends:
        pool_name = config.listeners[0].default_pool
        data["pools"].setdefault(pool_name, {})["servers"] = [{"address": b} for b in backends]
    if state_dir is not None:
        data["state_dir"] = state_dir
    return build_config(data, "command line")
