"""The saved shape: `SavedState` (pools, revision), `SavedPool`, `SavedServer`, as JSON
with a format number, validated on load (a bad document is a `StoreCorrupt` naming where).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import StoreCorrupt

FORMAT = 1  # bumped when the saved shape changes incompatibly
ADMIN_STATES = ("enabled", "disabled", "draining")
SOURCES = ("config", "api")


@dataclass
class SavedServer:
    id: str
    host: str
    port: int
    weight: int = 1
    admin: str = "enabled"  # "enabled" | "disabled" | "draining"
    source: str = "api"  # "config" | "api"
    health: dict[str, Any] = field(default_factory=dict)  # per-server overrides, opaque here


@dataclass
class SavedPool:
    name: str
    algorithm: str = "round-robin"
    health: dict[str, Any] = field(default_factory=dict)  # pool health settings, opaque here
    servers: list[SavedServer] = field(default_factory=list)
    outlier: dict[str, Any] = field(default_factory=dict)  # passive ejection, opaque here
    balancing: dict[str, Any] = field(default_factory=dict)  # algorithm options, opaque here


@dataclass
class SavedState:
    pools: dict[str, SavedPool] = field(default_factory=dict)
    revision: int = 0  # bumped on every save

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT,
            "revision": self.revision,
            "pools": [
                {
                    "name": pool.name,
                    "algorithm": pool.algorithm,
                    "health": pool.health,
                    "outlier": pool.outlier,
                    "balancing": pool.balancing,
                    "servers": [dataclasses.asdict(server) for server in pool.servers],
                }
                for pool in self.pools.values()
            ],
        }
        # Indented: state.json is small, rarely written and read by people.
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)

    @classmethod
    def from_json(cls, data: bytes) -> SavedState:
        """Parse and validate; raise `StoreCorrupt` naming the first bad key."""
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as error:
            raise StoreCorrupt(f"not valid JSON ({error})") from None
        return _parse_state(doc)


def _fail(where: str, problem: str) -> StoreCorrupt:
    return StoreCorrupt(f"{where}: {problem}" if where else problem)


def _object(value: Any, where: str, required: set[str], optional: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"expected an object, got {type(value).__name__}")
    for key in value:
        if key not in required and key not in optional:
            raise _fail(where, f"unknown key {key!r}")
    for key in sorted(required):
        if key not in value:
            raise _fail(where, f"missing key {key!r}")
    return value


def _integer(value: Any, where: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise _fail(where, f"expected an integer {bound}, got {value}")
    return value


def _text(value: Any, where: str, choices: tuple[str, ...] = ()) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(where, f"expected a non-empty string, got {value!r}")
    if choices and value not in choices:
        raise _fail(where, f"expected one of {', '.join(choices)}, got {value!r}")
    return value


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"expected an object, got {type(value).__name__}")
    return value


def _parse_state(doc: Any) -> SavedState:
    _object(doc, "", {"format", "revision", "pools"}, set())
    if doc["format"] != FORMAT:
        raise _fail("format", f"expected {FORMAT}, got {doc['format']!r} (another version?)")
    revision = _integer(doc["revision"], "revision", 0)
    if not isinstance(doc["pools"], list):
        raise _fail("pools", "expected a list")
    pools: dict[str, SavedPool] = {}
    for index, item in enumerate(doc["pools"]):
        where = f"pools[{index}]"
        _object(item, where, {"name"}, {"algorithm", "health", "outlier", "balancing", "servers"})
        name = _text(item["name"], f"{where}.name")
        if name in pools:
            raise _fail(f"{where}.name", f"duplicate pool {name!r}")
        servers_doc = item.get("servers", [])
        if not isinstance(servers_doc, list):
            raise _fail(f"{where}.servers", "expected a list")
        servers = [_parse_server(s, f"{where}.servers[{i}]") for i, s in enumerate(servers_doc)]
        seen: set[str] = set()
        for i, server in enumerate(servers):
            if server.id in seen:
                raise _fail(f"{where}.servers[{i}].id", f"duplicate server {server.id!r}")
            seen.add(server.id)
        pools[name] = SavedPool(
            name=name,
            algorithm=_text(item.get("algorithm", "round-robin"), f"{where}.algorithm"),
            health=_mapping(item.get("health", {}), f"{where}.health"),
            servers=servers,
            outlier=_mapping(item.get("outlier", {}), f"{where}.outlier"),
            balancing=_mapping(item.get("balancing", {}), f"{where}.balancing"),
        )
    return SavedState(pools=pools, revision=revision)


def _parse_server(item: Any, where: str) -> SavedServer:
    _object(item, where, {"id", "host", "port"}, {"weight", "admin", "source", "health"})
    return SavedServer(
        id=_text(item["id"], f"{where}.id"),
        host=_text(item["host"], f"{where}.host"),
        port=_integer(item["port"], f"{where}.port", 1, 65535),
        weight=_integer(item.get("weight", 1), f"{where}.weight", 0),
        admin=_text(item.get("admin", "enabled"), f"{where}.admin", ADMIN_STATES),
        source=_text(item.get("source", "api"), f"{where}.source", SOURCES),
        health=_mapping(item.get("health", {}), f"{where}.health"),
    )


# -- the interface ------------------------------------------------------------------------------
