"""TLS on a listener: server contexts chosen by the client's server name (SNI), reloaded
from their files while the listener runs.

A listener with TLS is created with one `TlsTerminator.context`. Its SNI callback, which
OpenSSL runs for every handshake (with no name when the client sent none), hands the
handshake the context of the certificate whose names match: exact, then `*.parent`, else
the first certificate, the default. `load` builds new contexts from the files and swaps the
table in one assignment: new handshakes use them, open connections keep theirs.

The names each certificate serves are read from it by the control process (which may load
`cryptography`) and come here as plain strings: a worker loads only the `ssl` module.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from functools import cache
from typing import Any

log = logging.getLogger("bunancer")

# Mozilla's "intermediate" server profile (v5.7): TLS 1.2 and 1.3, and these TLS 1.2
# suites (TLS 1.3's are OpenSSL's own); the client's order of preference is kept.
INTERMEDIATE_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305",
))  # fmt: skip
HANDSHAKE_TIMEOUT = 10.0  # seconds a client has to finish its handshake


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    cert: str  # PEM: the certificate, then its chain
    key: str  # PEM: its private key
    names: tuple[str, ...] = ()  # the DNS names it serves, lower case (`*.x` for wildcards)
    not_after: float = 0.0  # when it expires (Unix time), for /metrics


@dataclass(frozen=True, slots=True)
class TlsSettings:
    certificates: tuple[CertificateFiles, ...]  # the first one is the default
    client_ca: str | None = None  # set: clients must present a certificate it signed
    # Changes when a file changed on disk: a snapshot carrying it makes a worker reload.
    version: str = ""


def server_context(files: CertificateFiles | None, client_ca: str | None) -> ssl.SSLContext:
    """A server context with the listener's protocol settings and one certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.set_alpn_protocols(["http/1.1"])
    context.options |= ssl.OP_NO_RENEGOTIATION
    if files is not None:
        context.load_cert_chain(files.cert, files.key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


class TlsTerminator:
    """The contexts of one TLS listener, by server name."""

    def __init__(self, settings: TlsSettings) -> None:
        self.settings = settings
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wildcard: dict[str, ssl.SSLContext] = {}  # by the parent domain of `*.parent`
        self._default: ssl.SSLContext
        # The handshake starts on this context (its protocol settings, session cache and
        # whether a client certificate is asked for) and takes a certificate's context, which
        # verifies the client's against `client_ca`, in the callback (OpenSSL calls it when
        # the client sent no name too).
        self.context = server_context(settings.certificates[0], settings.client_ca)
        self.context.sni_callback = self._choose
        self.load(settings)  # raises on a bad certificate: a listener must not start without

    def load(self, settings: TlsSettings) -> None:
        """Build the contexts for `settings` and use them for new handshakes; raises
        (ssl.SSLError, OSError) and keeps the current ones when a file is bad."""
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}
        default: ssl.SSLContext | None = None
        for files in settings.certificates:
            context = server_context(files, settings.client_ca)
            default = default or context
            for name in files.names:
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], context)
                else:
                    exact.setdefault(name, context)
        if default is None:
            raise ValueError("a TLS listener needs a certificate")
        self._exact, self._wildcard, self._default = exact, wildcard, default
        self.context.verify_mode = ssl.CERT_REQUIRED if settings.client_ca else ssl.CERT_NONE
        self.settings = settings

    def reload(self, settings: TlsSettings, where: str) -> bool:
        """`load`, logging a refused pair instead of raising; whether it was taken."""
        try:
            self.load(settings)
        except (OSError, ssl.SSLError, ValueError) as error:
            log.error("%s: new certificates refused, the current ones stay: %s", where, error)
            return False
        return True

    def choose(self, name: str | None) -> ssl.SSLContext:
        """The context for a handshake naming `name` (None: the client sent no name)."""
        if name:
            name = name.lower()
            context = self._exact.get(name)
            if context is not None:
                return context
            _, _, parent = name.partition(".")
            context = self._wildcard.get(parent)
            if context is not None:
                return context
        return self._default

    def _choose(self, ssl_object: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        ssl_object.context = self.choose(name)


# -- to the servers -------------------------------------------------------------------------------


@cache
def client_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """The context of a pool's TLS connections to its servers (shared: one per settings).
    Verified against `ca_file`, or the system's store (OpenSSL honours SSL_CERT_FILE and
    SSL_CERT_DIR there)."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def tls_problem(error: BaseException) -> str:
    """What went wrong in a TLS handshake, in a few words for a log line or a check."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS: certificate not accepted: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        return f"TLS: {error.reason or error}"
    return str(error)


# RFC 4514's short names for the attributes a subject usually has.
_SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "domainComponent": "DC",
    "userId": "UID",
    "emailAddress": "emailAddress",
}


def subject_text(certificate: dict[str, Any] | None) -> bytes:
    """A verified peer certificate's subject (`ssl`'s `getpeercert()` form) as an RFC 4514
    string, `CN=alice,O=Example`, safe in a header: a byte outside printable ASCII and the
    characters RFC 4514 escapes become `\\XX`."""
    if not certificate:
        return b""
    parts = []
    for attributes in reversed(certificate.get("subject", ())):
        for name, value in attributes:
            escaped = "".join(_escape(c) for c in value)
            parts.append(f"{_SHORT_NAMES.get(name, name)}={escaped}")
    return ",".join(parts).encode("ascii")


def _escape(char: str) -> str:
    if char in ',+"\\<>;=' or not " " <= char <= "~":
        return "".join(f"\\{byte:02X}" for byte in char.encode())
    return char
