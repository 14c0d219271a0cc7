"""What a config reload changes, from two configs (no I/O)."""

from __future__ import annotations

from typing import Any

from bunancer.config import Config
from bunancer.configfile import build_config
from bunancer.control.reload import plan, running


def config(**data: Any) -> Config:
    data.setdefault("listeners", [{"address": "127.0.0.1:8080"}])
    return build_config(data)


def pool(*servers: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {"servers": list(servers), **settings}


def test_nothing_changed() -> None:
    base = config(pools={"default": pool({"address": "127.0.0.1:9001"})})
    again = config(pools={"default": pool({"address": "127.0.0.1:9001"})})
    change = plan(base, again)
    assert change.changes() == []
    assert change.restart_needed == []


def test_pools_and_their_servers() -> None:
    old = config(
        pools={
            "default": pool(
                {"address": "127.0.0.1:9001"}, {"address": "127.0.0.1:9002", "id": "b"}
            ),
            "gone": pool({"address": "127.0.0.1:9100"}),
        }
    )
    new = config(
        pools={
            "default": pool(
                {"address": "127.0.0.1:9001", "weight": 5},  # re-weighted
                {"address": "127.0.0.1:9003", "id": "b"},  # moved: goes, then comes back
                {"address": "127.0.0.1:9004"},
                algorithm="round-robin",
            ),
            "new": pool({"address": "127.0.0.1:9200"}),
        }
    )
    change = plan(old, new)
    assert change.changes() == [
        "pool new added",
        "pool default changed",
        "pool gone removed",
        "server default/b added",
        "server default/127.0.0.1:9004 added",
        "server new/127.0.0.1:9200 added",
        "server default/b removed",
        "server default/127.0.0.1:9001 weight 5",
    ]


def test_listeners_routes_and_settings() -> None:
    old = config(
        listeners=[{"address": "127.0.0.1:8080"}, {"address": "127.0.0.1:8090"}],
        pools={"api": pool()},
    )
    new = config(
        listeners=[
            {"address": "127.0.0.1:8080", "default_pool": "api"},  # in place
            {"address": "127.0.0.1:8090", "mode": "tcp"},  # another mode: a new socket
            {"address": "127.0.0.1:8091"},
        ],
        pools={"api": pool()},
        routes=[{"path_prefix": "/v1/", "pool": "api"}],
        timeouts={"keepalive": 5.0},
    )
    change = plan(old, new)
    assert [x.address for x in change.listeners_added] == ["127.0.0.1:8090", "127.0.0.1:8091"]
    assert [x.address for x in change.listeners_removed] == ["127.0.0.1:8090"]
    assert change.routes
    assert change.listener_settings
    assert change.upstream_settings


def test_what_only_a_restart_applies_is_listed_and_keeps_running() -> None:
    old = config(api={"listen": "127.0.0.1:8081"}, state_dir="/a")
    new = config(api={"listen": "127.0.0.1:9081"}, state_dir="/b", timeouts={"connect": 1.0})
    change = plan(old, new)
    assert change.restart_needed == ["state_dir", "api"]
    kept = running(old, new)
    assert kept.api.listen == "127.0.0.1:8081"
    assert kept.state_dir == "/a"
    assert kept.timeouts.connect == 1.0
