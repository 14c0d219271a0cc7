"""A TLS listener's certificate files, read and checked by the control process.

`read_pair` loads a certificate/key pair the way a listener will (so a key that does not
match, or an unreadable file, fails here first), and reads from the certificate, with
`cryptography`, the names it serves (its DNS subject alternative names, else its common
name) and when it expires. `tls_settings` turns a listener's `tls` table into the plain
settings the data plane takes; `files_version` says when any of those files changed.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import Config, ConfigError, ListenerConfig, TlsConfig
from ..core.tls import CertificateFiles, TlsSettings, server_context

if TYPE_CHECKING:
    from cryptography import x509

log = logging.getLogger("bunancer")


@dataclass(frozen=True)
class Certificate:
    files: CertificateFiles
    subject: str
    not_after: datetime.datetime  # UTC

    def days_left(self, now: datetime.datetime | None = None) -> float:
        now = now or datetime.datetime.now(datetime.UTC)
        return (self.not_after - now).total_seconds() / 86400


def read_pair(cert: str, key: str, where: str) -> Certificate:
    """The pair at `cert` and `key`; a ConfigError naming `where` and the problem."""
    from cryptography import x509  # here: a balancer without TLS does not load it (4 MiB)

    try:
        with open(cert, "rb") as handle:
            loaded = x509.load_pem_x509_certificate(handle.read())
        server_context(CertificateFiles(cert, key), None)  # readable, and the key matches
    except FileNotFoundError as error:  # (ssl names no file: then it is the key)
        raise ConfigError(f"{where}: {error.filename or key}: file not found") from None
    except PermissionError as error:
        raise ConfigError(f"{where}: {error.filename or key}: permission denied") from None
    except ssl.SSLError as error:
        problem = "the key does not match the certificate" if "MISMATCH" in str(error) else error
        raise ConfigError(f"{where}: {cert}, {key}: {problem}") from None
    except ValueError as error:
        raise ConfigError(f"{where}: {cert}: not a PEM certificate ({error})") from None
    not_after = loaded.not_valid_after_utc
    if not_after <= datetime.datetime.now(datetime.UTC):
        raise ConfigError(f"{where}: {cert}: expired on {not_after:%Y-%m-%d %H:%M} UTC")
    files = CertificateFiles(cert, key, _names(loaded), not_after.timestamp())
    return Certificate(files, loaded.subject.rfc4514_string(), not_after)


def _names(certificate: x509.Certificate) -> tuple[str, ...]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = extension.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if not names:  # an old-style certificate: its common name is the name
        common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        names = [str(attribute.value) for attribute in common]
    return tuple(name.lower() for name in names)


def read_listener(listener: ListenerConfig, index: int) -> list[Certificate]:
    """Every certificate of `listeners[index]`'s tls table, checked (ConfigError if not)."""
    return [] if listener.tls is None else read_tls(listener.tls, f"listeners[{index}].tls")


def read_tls(tls: TlsConfig, where: str) -> list[Certificate]:
    """Every certificate of the tls table at `where`, checked (ConfigError if not)."""
    if tls.client_ca is not None and not os.access(tls.client_ca, os.R_OK):
        raise ConfigError(f"{where}.client_ca: {tls.client_ca}: cannot read")
    return [read_pair(pair.cert, pair.key, where) for pair in tls.pairs()]


def check_certificates(config: Config) -> list[tuple[str, Certificate]]:
    """Every listener's certificates, read and checked, with where each is configured, and
    the CA files the pools verify their servers with; a ConfigError names the first bad one."""
    for name, pool in config.pools.items():
        tls = pool.upstream_tls
        if tls is not None and not tls.verify:
            log.warning("pool %s: TLS to its servers is not verified (tls.verify = false)", name)
        if tls is not None and tls.ca_file is not None:
            try:
                ssl.create_default_context(cafile=tls.ca_file)
            except (OSError, ssl.SSLError) as error:
                problem = getattr(error, "strerror", None) or error
                raise ConfigError(f"pools.{name}.tls.ca_file: {tls.ca_file}: {problem}") from None
    found = [
        (f"listeners[{index}].tls", certificate)
        for index, listener in enumerate(config.listeners)
        for certificate in read_listener(listener, index)
    ]
    for section, admin in (("api", config.api), ("dashboard", config.dashboard)):
        if admin.tls is not None:
            found += [(f"[{section}].tls", c) for c in read_tls(admin.tls, f"[{section}].tls")]
    return found


def tls_settings(listener: ListenerConfig, index: int) -> TlsSettings | None:
    """The data plane's settings for a listener's tls table (None without one)."""
    if listener.tls is None:
        return None
    certificates = tuple(c.files for c in read_listener(listener, index))
    return TlsSettings(certificates, listener.tls.client_ca, files_version(listener.tls))


def files_version(tls: TlsConfig | None) -> str:
    """A digest of the tls table's files' identity (size, modification time, inode): it
    changes when a file is rewritten or replaced."""
    if tls is None:
        return ""
    digest = hashlib.sha256()
    paths = [p for pair in tls.pairs() for p in (pair.cert, pair.key)]
    for path in [*paths, *([tls.client_ca] if tls.client_ca else [])]:
        try:
            info = os.stat(path)
            digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\0{info.st_ino}\0".encode())
        except OSError:
            digest.update(f"{path}\0missing\0".encode())
    return digest.hexdigest()[:16]
