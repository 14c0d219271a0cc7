"""The API's and the dashboard's listeners: who may read without the token, the Host names
they answer, the caps on what clients hold open, and TLS."""

from __future__ import annotations

import logging
from typing import Any

from .config import ApiConfig, DashboardConfig
from .control.certificates import read_tls
from .core.tls import TlsSettings, TlsTerminator
from .web.hosts import HostCheck, is_loopback

log = logging.getLogger("bunancer")


def exposure(
    listener: ApiConfig | DashboardConfig, section: str, host: str
) -> tuple[bool, HostCheck]:
    """Whether reads need no token on an admin listener (unset: only on loopback), and the
    Host names it answers; a warning when reads are public beyond this machine."""
    loopback = is_loopback(host)
    public = listener.public_reads if listener.public_reads is not None else loopback
    if public and not loopback:
        log.warning(
            "[%s] public_reads = true on %s: anyone who can reach it reads the pools, servers, "
            "check results, figures and events without the token",
            section,
            listener.listen,
        )
    return public, HostCheck(host, listener.allowed_hosts, f"[{section}] allowed_hosts")


def serve_options(listener: ApiConfig | DashboardConfig, section: str) -> dict[str, Any]:
    """`web.server.serve`'s options for an admin listener: its caps, and its TLS context
    (its certificates read at start: a restart takes new ones)."""
    options: dict[str, Any] = {
        "max_connections": listener.max_connections,
        "max_per_client": listener.max_connections_per_client,
    }
    if listener.tls is not None:
        files = tuple(c.files for c in read_tls(listener.tls, f"[{section}].tls"))
        options["tls"] = TlsTerminator(TlsSettings(files, listener.tls.client_ca)).context
    return options
