"""The Host allow-list against DNS rebinding, and which listen addresses count as loopback."""

from __future__ import annotations

import logging

import pytest

from bunancer.admin import exposure
from bunancer.config import ApiConfig, DashboardConfig
from bunancer.web.app import Request
from bunancer.web.hosts import HostCheck, host_name, is_loopback


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:8081", "127.0.0.1"),
        ("[::1]:8081", "::1"),
        ("[::1]", "::1"),
        ("LocalHost:8082", "localhost"),
        ("lb.example.com.", "lb.example.com"),
        ("  evil.example:80 ", "evil.example"),
    ],
)
def test_host_name_is_the_header_without_port_case_or_final_dot(header: str, name: str) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("lb.example.com", False),
    ],
)
def test_loopback_listen_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_rebinding_names_are_refused_and_addresses_loopback_names_and_configured_ones_pass() -> (
    None
):
    check = HostCheck("0.0.0.0", ["LB.example.com"], "[api] allowed_hosts")
    for header in ("127.0.0.1:8081", "[::1]:8081", "localhost:8081", "10.0.0.5", "lb.example.com"):
        assert check.allows(header), header
    assert check.allows(None)  # HTTP/1.0 without Host: no browser
    for header in ("evil.example:8081", "127.0.0.1.evil.example", "localhost.evil.example", ""):
        assert not check.allows(header), header
    refusal = check.refusal(Request("GET", "/api/pools", headers={"host": "evil.example:8081"}))
    assert refusal is not None
    assert refusal.status == 421
    assert refusal.extra == {"detail": "add it to [api] allowed_hosts to allow it"}


def test_the_listen_name_is_allowed() -> None:
    check = HostCheck("admin.internal", [], "[dashboard] allowed_hosts")
    assert check.allows("admin.internal:8082")
    assert not check.allows("other.internal:8082")


def test_public_reads_default_to_on_only_on_loopback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bunancer"):
        assert exposure(ApiConfig(), "api", "127.0.0.1")[0] is True
        assert exposure(ApiConfig(listen="0.0.0.0:8081"), "api", "0.0.0.0")[0] is False
        assert exposure(DashboardConfig(listen="[::]:8082"), "dashboard", "::")[0] is False
        assert exposure(ApiConfig(public_reads=False), "api", "127.0.0.1")[0] is False
    assert caplog.records == []
    # Set explicitly beyond loopback: on, with a warning saying what anyone can read.
    with caplog.at_level(logging.WARNING, logger="bunancer"):
        config = ApiConfig(listen="0.0.0.0:8081", public_reads=True)
        assert exposure(config, "api", "0.0.0.0")[0] is True
    (record,) = caplog.records
    assert record.getMessage().startswith("[api] public_reads = true on 0.0.0.0:8081: anyone")
