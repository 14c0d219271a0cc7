"""The saved shape: `SavedState` (pools, revision), `SavedPool`, `SavedServer`, as JSON
with a format number, validated on load with the rules the config file and the API hold
their values to (names, hosts, weights, algorithms, every setting): a bad document is a
`StoreCorrupt` naming the record and the key, never a value that fails later.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from ...config import (
    ALGORITHMS,
    NAME_PATTERN,
    WEIGHT_MAX,
    BalancingConfig,
    HealthConfig,
    OutlierConfig,
    check_host,
)
from ...problems import describe_problem
from .errors import StoreCorrupt

FORMAT = 1  # bumped when the saved shape changes incompatibly
ADMIN_STATES = ("enabled", "disabled", "draining")
SOURCES = ("config", "api")
_NAME = re.compile(NAME_PATTERN)
# A server id is a chosen name, or the address it was registered under: HOST:PORT, [V6]:PORT.
_ADDRESS_ID = re.compile(r"^(\[[0-9A-Fa-f:.%a-z]+\]|[^:\[\]]+):[0-9]{1,5}$")


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


def _settings(model: type[BaseModel], value: Any, where: str, base: dict[str, Any]) -> Any:
    """`value` (over `base`) as the config file and the API accept it: the model's rules."""
    mapping = _mapping(value, where)
    try:
        return model.model_validate({**base, **mapping})
    except ValidationError as error:
        key, problem = describe_problem(error.errors()[0])
        raise _fail(f"{where}.{key}", problem) from None


def _name(value: Any, where: str) -> str:
    text = _text(value, where)
    if not _NAME.match(text):
        raise _fail(where, f"expected letters, digits, '.', '_' or '-' (1-64), got {text!r}")
    return text


def _server_id(value: Any, where: str) -> str:
    text = _text(value, where)
    if _NAME.match(text):
        return text
    if not _ADDRESS_ID.match(text):
        raise _fail(where, f"expected a name or the server's HOST:PORT, got {text!r}")
    _host(text.rpartition(":")[0].strip("[]"), where)
    return text


def _host(value: Any, where: str) -> str:
    text = _text(value, where)
    try:
        return check_host(text)
    except ValueError as error:
        raise _fail(where, f"{error}, got {text!r}") from None


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
        name = _name(item["name"], f"{where}.name")
        if name in pools:
            raise _fail(f"{where}.name", f"duplicate pool {name!r}")
        servers_doc = item.get("servers", [])
        if not isinstance(servers_doc, list):
            raise _fail(f"{where}.servers", "expected a list")
        health = _settings(HealthConfig, item.get("health", {}), f"{where}.health", {})
        servers = [
            _parse_server(server, f"{where}.servers[{i}]", health)
            for i, server in enumerate(servers_doc)
        ]
        seen: set[str] = set()
        for i, server in enumerate(servers):
            if server.id in seen:
                raise _fail(f"{where}.servers[{i}].id", f"duplicate server {server.id!r}")
            seen.add(server.id)
        pools[name] = SavedPool(
            name=name,
            algorithm=_text(item.get("algorithm", "round-robin"), f"{where}.algorithm", ALGORITHMS),
            health=item.get("health", {}),
            servers=servers,
            outlier=_checked(OutlierConfig, item.get("outlier", {}), f"{where}.outlier"),
            balancing=_checked(BalancingConfig, item.get("balancing", {}), f"{where}.balancing"),
        )
    return SavedState(pools=pools, revision=revision)


def _checked(model: type[BaseModel], value: Any, where: str) -> dict[str, Any]:
    _settings(model, value, where, {})
    return value  # type: ignore[no-any-return]  # (a mapping: _settings checked it)


def _parse_server(item: Any, where: str, pool_health: HealthConfig) -> SavedServer:
    _object(item, where, {"id", "host", "port"}, {"weight", "admin", "source", "health"})
    health = item.get("health", {})
    _settings(HealthConfig, health, f"{where}.health", pool_health.model_dump())
    return SavedServer(
        id=_server_id(item["id"], f"{where}.id"),
        host=_host(item["host"], f"{where}.host"),
        port=_integer(item["port"], f"{where}.port", 1, 65535),
        weight=_integer(item.get("weight", 1), f"{where}.weight", 1, WEIGHT_MAX),
        admin=_text(item.get("admin", "enabled"), f"{where}.admin", ADMIN_STATES),
        source=_text(item.get("source", "api"), f"{where}.source", SOURCES),
        health=health,
    )


# -- the interface ------------------------------------------------------------------------------
