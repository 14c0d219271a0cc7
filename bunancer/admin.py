"""The API's and the dashboard's listeners: who may read without the token, the Host names
they answer, the caps on what clients hold open, and TLS."""

from __future__ import annotations

import logging
from typing import Any

from .config import ApiConfig, ConfigError, DashboardConfig
from .control.certificates import files_version, read_tls
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


class AdminTls:
    """An admin listener's certificates: read at start, and again when their files change
    on disk (the balancer's certificate watch asks); new handshakes take the new ones."""

    def __init__(self, listener: ApiConfig | DashboardConfig, section: str) -> None:
        assert listener.tls is not None
        self.tls = listener.tls
        self.label = section  # its listener's name in /metrics (a data-plane one: its address)
        self.where = f"[{section}].tls"
        self.version = files_version(self.tls)
        self.settings = self._read()
        self.terminator = TlsTerminator(self.settings)

    def _read(self) -> TlsSettings:
        files = tuple(c.files for c in read_tls(self.tls, self.where))
        return TlsSettings(files, self.tls.client_ca, self.version)

    def refresh(self) -> None:
        version = files_version(self.tls)
        if version == self.version:
            return
        self.version = version  # a refused pair is said once, not at every look
        try:
            settings = self._read()
        except ConfigError as error:
            log.error("changed certificate files refused, the current ones stay: %s", error)
            return
        if self.terminator.reload(settings, self.where):
            self.settings = settings
            log.info("%s: new certificates for new handshakes", self.where)


def serve_options(
    listener: ApiConfig | DashboardConfig, section: str
) -> tuple[dict[str, Any], AdminTls | None]:
    """`web.server.serve`'s options for an admin listener (its caps, and its TLS context),
    and its certificates to refresh (None without TLS)."""
    options: dict[str, Any] = {
        "max_connections": listener.max_connections,
        "max_per_client": listener.max_connections_per_client,
    }
    if listener.tls is None:
        return options, None
    tls = AdminTls(listener, section)
    options["tls"] = tls.terminator.context
    return options, tls
