"""Dashboard login sessions and CSRF tokens, kept in memory.

Logging in with the admin token creates a session: a random id in a cookie (HttpOnly, so
scripts cannot read it; SameSite=Strict, so other sites' pages cannot send it; Path=/) and
a random CSRF token tied to that session, which every mutating request must echo in a form
field or an `X-CSRF-Token` header. Both are compared in constant time. Sessions expire after
`ttl` seconds, or `idle` seconds without a page or action of the user's (a page's own live
refresh does not count), and vanish when the balancer restarts (logging in again is one form
away). The cookie is `Secure` when the dashboard is reached over HTTPS (a TLS proxy in front
says so with `X-Forwarded-Proto` or `Forwarded`).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE = "bunancer_session"
TTL = 12 * 3600.0
IDLE = 30 * 60.0
MAX_SESSIONS = 1000  # beyond this the oldest session is forgotten


@dataclass(slots=True)
class Session:
    id: str
    csrf: str
    expires: float
    seen: float  # when the user last loaded a page or acted
    flashes: list[tuple[str, str]] = field(default_factory=list)  # (level, message)

    def flash(self, message: str, level: str = "ok") -> None:
        """A message for the next page this session sees (after a form's redirect)."""
        self.flashes.append((level, message))
        del self.flashes[:-5]

    def take_flashes(self) -> list[tuple[str, str]]:
        flashes, self.flashes = self.flashes, []
        return flashes


class Sessions:
    def __init__(
        self,
        ttl: float = TTL,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
        idle: float = IDLE,
    ) -> None:
        self.ttl = ttl
        self.idle = idle
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self) -> Session:
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now + self.ttl, now)
        self._sessions[session.id] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None, touch: bool = True) -> Session | None:
        """The live session `session_id` names; `touch`: the user is active (not a page's
        own refresh), which restarts its idle time."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self.clock()
        if session.expires <= now or now - session.seen > self.idle:
            del self._sessions[session_id]
            return None
        if touch:
            session.seen = now
        return session

    def delete(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)

    @staticmethod
    def csrf_ok(session: Session | None, presented: str | None) -> bool:
        if session is None or not presented:
            return False
        return hmac.compare_digest(presented.encode(), session.csrf.encode())


def cookie_name(host_header: str | None) -> str:
    """Cookies ignore ports: two balancers on one host would log each other out with one
    name, so the dashboard's port is part of it (`bunancer_session_8082`)."""
    port = (host_header or "").rpartition(":")[2]
    return f"{COOKIE}_{port}" if port.isdigit() and len(port) <= 5 else COOKIE


def over_https(headers: dict[str, str]) -> bool:
    """Whether the browser reached us over HTTPS, as a TLS proxy in front reports it."""
    if headers.get("x-forwarded-proto", "").strip().lower() == "https":
        return True
    forwarded = headers.get("forwarded", "").lower().replace(" ", "")
    return "proto=https" in forwarded.split(",")[0].split(";")


def set_cookie(name: str, session: Session, ttl: float, secure: bool = False) -> str:
    cookie = f"{name}={session.id}; Max-Age={int(ttl)}; Path=/; HttpOnly; SameSite=Strict"
    return cookie + "; Secure" if secure else cookie


def clear_cookie(name: str) -> str:
    return f"{name}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"
