"""Which addresses a registration may name: link-local refused by default, allow/deny lists."""

from __future__ import annotations

import asyncio

import pytest

from bunancer.control.addresses import AddressPolicy, AddressRefused


def refused(policy: AddressPolicy, host: str) -> str | None:
    """The refusal's detail, or None when `host` may be registered."""
    try:
        asyncio.run(policy.check(host))
    except AddressRefused as error:
        return f"{error.status} {error.field}: {error.detail}"
    return None


@pytest.mark.parametrize(
    "host", ["169.254.169.254", "fe80::1", "fe80::1%eth0", "::ffff:169.254.169.254"]
)
def test_link_local_is_refused_by_default(host: str) -> None:
    detail = refused(AddressPolicy(), host)
    assert detail is not None
    assert detail.startswith("403 host: ")
    assert detail.endswith("(registration_deny)")


@pytest.mark.parametrize("host", ["127.0.0.1", "10.1.2.3", "::1", "203.0.113.9", "localhost"])
def test_other_addresses_pass_by_default(host: str) -> None:
    assert refused(AddressPolicy(), host) is None


def test_an_allow_list_refuses_everything_outside_it_names_included() -> None:
    policy = AddressPolicy(allow=["10.0.0.0/8"], deny=[])
    assert refused(policy, "10.9.9.9") is None
    assert refused(policy, "192.168.1.1") == "403 host: 192.168.1.1 is outside registration_allow"
    # A name is checked by what it resolves to.
    detail = refused(policy, "localhost")
    assert detail is not None
    assert detail.startswith("403 host: localhost: ")
    assert detail.endswith("is outside registration_allow")


def test_deny_wins_over_allow_and_an_unresolvable_name_passes() -> None:
    policy = AddressPolicy(allow=["10.0.0.0/8"], deny=["10.6.0.0/16"])
    assert refused(policy, "10.6.1.1") == "403 host: 10.6.1.1 is in 10.6.0.0/16 (registration_deny)"
    assert refused(policy, "no-such-host.invalid") is None  # nothing can be reached there
