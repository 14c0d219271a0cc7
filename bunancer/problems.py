"""Validation problems said the way people write keys: `pools.web.servers[0].weight: ...`,
for the config file (file: key: problem), API bodies (a JSON error naming the field) and
saved state alike."""

from __future__ import annotations

from pydantic_core import ErrorDetails


class KeyedError(ValueError):
    """A cross-field problem that knows the key it belongs to."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def field_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as people write keys: ``pools.web.servers[0].weight``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def describe_problem(item: ErrorDetails, unknown: str = "unknown key") -> tuple[str, str]:
    """One pydantic error as people say it: (the key, what is wrong with it)."""
    keyed = (item.get("ctx") or {}).get("error")
    if isinstance(keyed, KeyedError):
        return keyed.key, keyed.problem
    if item["type"] == "extra_forbidden":
        return field_path(tuple(item["loc"])), unknown
    return field_path(tuple(item["loc"])), item["msg"].removeprefix("Value error, ")
