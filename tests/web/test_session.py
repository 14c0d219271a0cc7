"""Login sessions: absolute and idle expiry on a fake clock, and the cookie's attributes."""

from __future__ import annotations

import pytest

from bunancer.web.session import Sessions, over_https, set_cookie
from tests.helpers import FakeClock


def test_a_session_idle_for_longer_than_idle_is_gone() -> None:
    clock = FakeClock(0.0)
    sessions = Sessions(ttl=3600.0, idle=600.0, clock=clock)
    session = sessions.create()
    clock.now = 599.0
    assert sessions.get(session.id) is session  # the user loaded a page: idle time restarts
    clock.now = 1198.0
    assert sessions.get(session.id) is session
    clock.now = 1799.0
    assert sessions.get(session.id) is None  # 601 s without the user
    assert len(sessions) == 0


def test_a_pages_own_refresh_does_not_keep_the_session_alive() -> None:
    clock = FakeClock(0.0)
    sessions = Sessions(ttl=3600.0, idle=600.0, clock=clock)
    session = sessions.create()
    for clock.now in (200.0, 400.0, 599.0):
        assert sessions.get(session.id, touch=False) is session
    clock.now = 601.0
    assert sessions.get(session.id, touch=False) is None


def test_an_active_session_still_ends_at_its_ttl() -> None:
    clock = FakeClock(0.0)
    sessions = Sessions(ttl=1000.0, idle=600.0, clock=clock)
    session = sessions.create()
    for clock.now in (500.0, 999.0):
        assert sessions.get(session.id) is session
    clock.now = 1000.0
    assert sessions.get(session.id) is None


@pytest.mark.parametrize(
    ("headers", "https"),
    [
        ({}, False),
        ({"x-forwarded-proto": "https"}, True),
        ({"x-forwarded-proto": "http"}, False),
        ({"forwarded": "for=1.2.3.4;proto=https"}, True),
        ({"forwarded": "for=1.2.3.4; Proto=HTTPS, for=5.6.7.8;proto=http"}, True),
        ({"forwarded": "for=1.2.3.4;proto=http"}, False),
    ],
)
def test_https_as_a_tls_proxy_in_front_reports_it(headers: dict[str, str], https: bool) -> None:
    assert over_https(headers) is https


def test_the_cookie_is_secure_over_https_only() -> None:
    session = Sessions().create()
    plain = set_cookie("s", session, 60.0)
    assert plain == f"s={session.id}; Max-Age=60; Path=/; HttpOnly; SameSite=Strict"
    assert set_cookie("s", session, 60.0, secure=True) == plain + "; Secure"
