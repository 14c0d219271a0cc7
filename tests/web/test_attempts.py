"""Wrong tokens per client address and the waits they earn, on a fake clock."""

from __future__ import annotations

import logging

import pytest

from bunancer.web.attempts import FailedAttempts
from tests.helpers import FakeClock


def test_five_wrong_tokens_are_free_then_each_doubles_the_wait_up_to_the_longest() -> None:
    clock = FakeClock()
    attempts = FailedAttempts(clock, free=5, base=1.0, longest=8.0)
    for _ in range(4):
        attempts.failed("10.0.0.1", "API")
        assert attempts.wait("10.0.0.1") == 0.0
    waits = []
    for _ in range(6):
        attempts.failed("10.0.0.1", "API")
        waits.append(attempts.wait("10.0.0.1"))
        clock.now += waits[-1]  # it waits its turn, then tries (wrongly) again
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert attempts.wait("10.0.0.2") == 0.0  # others are not held back


def test_a_right_token_or_a_quiet_spell_resets_the_count() -> None:
    clock = FakeClock()
    attempts = FailedAttempts(clock, free=1, forget_after=600.0)
    attempts.failed("a", "API")
    assert attempts.wait("a") == 1.0
    attempts.succeeded("a")
    assert attempts.wait("a") == 0.0
    attempts.failed("a", "API")
    clock.now += 601.0
    assert attempts.wait("a") == 0.0
    attempts.failed("a", "API")  # counted from one again
    assert attempts.wait("a") == 1.0


def test_memory_is_bounded_by_dropping_the_oldest_address() -> None:
    attempts = FailedAttempts(FakeClock(), free=0, max_addresses=3)
    for client in ("a", "b", "c", "d"):
        attempts.failed(client, "API")
    assert attempts.wait("a") == 0.0  # dropped
    assert all(attempts.wait(client) > 0 for client in ("b", "c", "d"))


def test_the_first_wrong_token_and_each_wait_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    attempts = FailedAttempts(FakeClock(), free=3)
    with caplog.at_level(logging.WARNING, logger="bunancer.web"):
        for _ in range(4):
            attempts.failed("10.0.0.1", "dashboard login")
    assert [record.getMessage() for record in caplog.records] == [
        "wrong token from 10.0.0.1 (dashboard login)",
        "3 wrong tokens in a row from 10.0.0.1 (dashboard login): it waits 1 s before trying again",
        "4 wrong tokens in a row from 10.0.0.1 (dashboard login): it waits 2 s before trying again",
    ]
