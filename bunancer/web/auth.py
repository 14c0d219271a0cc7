"""The admin token: where it comes from, and the middleware that asks for it.

Order of sources: the config's `[api] token`, then `--token-file` / `[api] token_file`, then
the `BUNANCER_TOKEN` environment variable, else `<state-dir>/token`, generated at first
start with mode 0600 (and printed once). A token file others can read is made 0600 (or,
when that is not ours to do, warned about). Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from .app import Admission, HTTPError, Request
from .attempts import FailedAttempts

log = logging.getLogger("bunancer")

TOKEN_FILE = "token"
READ_METHODS = frozenset({"GET", "HEAD"})


class TokenError(Exception):
    """The token cannot be read or written (phrased for the user)."""


@dataclass(frozen=True)
class Token:
    value: str
    source: str  # "config", "file /path", "environment", "generated /path", "state /path"
    created: bool = False  # generated just now: show it once


def _read_token_file(path: Path) -> str:
    try:
        value = path.read_text().strip()
        _tighten(path)
    except OSError as error:
        raise TokenError(f"token file {path}: {error.strerror}") from None
    if len(value) < 16:
        raise TokenError(f"token file {path}: a token needs at least 16 characters")
    return value


def _tighten(path: Path) -> None:
    """Make a token file others can read 0600, or warn when we may not."""
    mode = path.stat().st_mode & 0o777
    if not mode & 0o077:
        return
    try:
        path.chmod(0o600)
    except OSError:
        log.warning("token file %s is readable by others (mode %03o): chmod 600 it", path, mode)
    else:
        log.warning("token file %s was readable by others (mode %03o); now 600", path, mode)


def load_token(
    state_dir: Path,
    *,
    configured: str | None = None,
    token_file: str | None = None,
    environ: dict[str, str] | None = None,
) -> Token:
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    if configured:
        return Token(configured, "config")
    if token_file:
        return Token(_read_token_file(Path(token_file)), f"file {token_file}")
    from_env = environ.get("BUNANCER_TOKEN", "").strip()
    if from_env:
        if len(from_env) < 16:
            raise TokenError("BUNANCER_TOKEN: a token needs at least 16 characters")
        return Token(from_env, "environment")
    path = state_dir / TOKEN_FILE
    if path.exists():
        return Token(_read_token_file(path), f"state {path}")
    value = secrets.token_urlsafe(32)
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # O_EXCL: never overwrite a token another process wrote a moment ago.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return Token(_read_token_file(path), f"state {path}")
    except OSError as error:
        raise TokenError(f"token file {path}: {error.strerror}") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return Token(value, f"generated {path}", created=True)


def token_matches(expected: str, header: str | None) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time."""
    if not header:
        return False
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer":  # scheme names are case-insensitive (RFC 9110 11.1)
        return False
    return hmac.compare_digest(credentials.strip().encode(), expected.encode())


def token_check(
    token: str, public_reads: bool, attempts: FailedAttempts | None = None
) -> Admission:
    """The 401 for a request that needs the token and lacks it: changes always need it,
    reads too unless `public_reads`. Also `App.admission`: such a body is never read.
    A client that sent wrong tokens waits as `attempts` says (429 meanwhile)."""

    def check(request: Request) -> HTTPError | None:
        if public_reads and request.method in READ_METHODS:
            return None
        if request.route in ("/healthz",):
            return None
        client = request.client_ip
        if attempts is not None and (refusal := too_many_attempts(attempts, client)):
            return refusal
        header = request.headers.get("authorization")
        if token_matches(token, header):
            if attempts is not None:
                attempts.succeeded(client)
            return None
        if header is not None and attempts is not None:
            attempts.failed(client, "API")
        return HTTPError(
            401,
            "missing or wrong token: send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": 'Bearer realm="bunancer"'},
        )

    return check


def too_many_attempts(attempts: FailedAttempts, client: str) -> HTTPError | None:
    """The 429 for a client that must still wait after wrong tokens, or None."""
    wait = attempts.wait(client)
    if not wait:
        return None
    seconds = math.ceil(wait)
    return HTTPError(
        429,
        "too many wrong tokens: wait before trying again",
        headers={"Retry-After": str(seconds)},
        retry_after=seconds,
    )
