"""Trie router for the web apps: typed path parameters, declared body models, start-up checks.

Sans-I/O: `Router.match(method, path)` maps a method and a path to a handler, its typed
parameters and the pydantic model its body must satisfy; it never sees a socket. Patterns
are checked as they are added, so routes that would be ambiguous (the same method and
pattern twice, two parameter names or types at one position under one prefix) or a
malformed pattern fail at start-up rather than on the first request that meets them.

Patterns are `/`-separated segments; `{name}` or `{name:str}` captures a non-empty segment
as a string, `{name:int}` one that is a decimal integer. At each position a static segment
is tried before the parameter; when the static branch leads nowhere the parameter branch is
tried. A match walks one node per segment in the usual case, never visits a trie node twice
(the trie is a tree) and never scans the list of routes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import unquote

from pydantic import BaseModel

ParamValue = str | int
Handler = Callable[..., Any]
H = TypeVar("H", bound=Handler)


class RouteConflict(ValueError):
    """A route that cannot be added: a duplicate, an ambiguous parameter, a bad pattern."""


class NotFound(LookupError):
    """No pattern matches the path."""

    status = 404


class MethodNotAllowed(LookupError):
    """The path matches, the method does not; `allowed` lists the methods that would."""

    status = 405

    def __init__(self, allowed: list[str]) -> None:
        super().__init__(f"allowed: {', '.join(allowed)}")
        self.allowed = allowed


@dataclass(frozen=True, slots=True)
class Match(Generic[H]):
    handler: H
    params: dict[str, ParamValue]
    body_model: type[BaseModel] | None
    pattern: str  # as registered: a stable label for logs and metrics


def _to_str(segment: str) -> str | None:
    return segment or None  # an empty segment ("//") is not a value


def _to_int(segment: str) -> int | None:
    digits = segment[1:] if segment[:1] == "-" else segment
    # isdigit() alone accepts non-ASCII digits, and int() also takes "+", "_" and spaces.
    if not (digits.isascii() and digits.isdigit()):
        return None
    try:
        return int(segment)
    except ValueError:  # over the interpreter's digit limit for int()
        return None


_CONVERTERS: dict[str, Callable[[str], ParamValue | None]] = {"str": _to_str, "int": _to_int}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    kind: str


@dataclass(frozen=True, slots=True)
class _Route:
    handler: Any
    body_model: type[BaseModel] | None
    pattern: str
    param_names: tuple[str, ...]


class _Node:
    __slots__ = ("convert", "param", "param_kind", "param_name", "param_origin", "routes", "static")

    def __init__(self) -> None:
        self.static: dict[str, _Node] = {}
        self.routes: dict[str, _Route] = {}  # by method; non-empty only where a pattern ends
        # The one parameter edge below this node, and the pattern that first declared it.
        self.param: _Node | None = None
        self.param_name = ""
        self.param_kind = ""
        self.param_origin = ""
        self.convert: Callable[[str], ParamValue | None] = _to_str


def _parse_pattern(pattern: str) -> list[str | _Param]:
    if not pattern.startswith("/"):
        raise RouteConflict(f"invalid pattern {pattern!r}: must start with '/'")
    body = pattern[1:]
    if body.endswith("/"):
        body = body[:-1]  # "/a/" is the same route as "/a"
    if not body:
        return []
    parts: list[str | _Param] = []
    seen: set[str] = set()
    for segment in body.split("/"):
        if not segment:
            raise RouteConflict(f"invalid pattern {pattern!r}: empty segment")
        if "{" not in segment and "}" not in segment:
            parts.append(segment)
            continue
        if not (segment.startswith("{") and segment.endswith("}")):
            raise RouteConflict(
                f"invalid pattern {pattern!r}: a parameter must be a whole segment, got {segment!r}"
            )
        name, colon, kind = segment[1:-1].partition(":")
        if not colon:
            kind = "str"
        if not _NAME.fullmatch(name):
            raise RouteConflict(f"invalid pattern {pattern!r}: bad parameter name {name!r}")
        if kind not in _CONVERTERS:
            raise RouteConflict(
                f"invalid pattern {pattern!r}: unknown parameter type {kind!r} "
                f"(known: {', '.join(_CONVERTERS)})"
            )
        if name in seen:
            raise RouteConflict(f"invalid pattern {pattern!r}: parameter {name!r} appears twice")
        seen.add(name)
        parts.append(_Param(name, kind))
    return parts


def _split_path(path: str) -> list[str] | None:
    """Path segments, percent-decoded after splitting (so "%2F" stays inside a segment)."""
    if not path.startswith("/"):
        return None
    parts = path[1:].split("/")
    if parts[-1] == "":
        parts.pop()  # trailing slash, or the root
    return [unquote(part) if "%" in part else part for part in parts]


class Router(Generic[H]):
    """Routes by method and path; `H` is the handler type the application uses."""

    __slots__ = ("_depth", "_root")

    def __init__(self) -> None:
        self._root = _Node()
        self._depth = 0  # the most segments in any pattern: longer paths cannot match

    # -- registration -------------------------------------------------------------------------

    def add(
        self, method: str, pattern: str, handler: H, *, body: type[BaseModel] | None = None
    ) -> None:
        method = method.upper()
        if not method.isalpha():
            raise RouteConflict(f"invalid method {method!r} for {pattern!r}")
        parts = _parse_pattern(pattern)
        # Check everything first so a rejected route leaves the trie as it was.
        node: _Node | None = self._root
        for part in parts:
            if node is None:
                break
            if isinstance(part, str):
                node = node.static.get(part)
                continue
            if node.param is not None and (
                node.param_name != part.name or node.param_kind != part.kind
            ):
                raise RouteConflict(
                    f"{pattern!r}: parameter {{{part.name}:{part.kind}}} conflicts with "
                    f"{{{node.param_name}:{node.param_kind}}} of {node.param_origin!r} "
                    "at the same position"
                )
            node = node.param
        if node is not None and method in node.routes:
            existing = node.routes[method].pattern
            raise RouteConflict(f"{method} {pattern!r} is already routed (as {existing!r})")

        node = self._root
        for part in parts:
            if isinstance(part, str):
                node = node.static.setdefault(part, _Node())
                continue
            if node.param is None:
                node.param = _Node()
                node.param_name = part.name
                node.param_kind = part.kind
                node.param_origin = pattern
                node.convert = _CONVERTERS[part.kind]
            node = node.param
        names = tuple(part.name for part in parts if isinstance(part, _Param))
        node.routes[method] = _Route(handler, body, pattern, names)
        self._depth = max(self._depth, len(parts))

    def route(
        self, method: str, pattern: str, body: type[BaseModel] | None = None
    ) -> Callable[[H], H]:
        def register(handler: H) -> H:
            self.add(method, pattern, handler, body=body)
            return handler

        return register

    def get(self, pattern: str, body: type[BaseModel] | None = None) -> Callable[[H], H]:
        return self.route("GET", pattern, body)

    def post(self, pattern: str, body: type[BaseModel] | None = None) -> Callable[[H], H]:
        return self.route("POST", pattern, body)

    def put(self, pattern: str, body: type[BaseModel] | None = None) -> Callable[[H], H]:
        return self.route("PUT", pattern, body)

    def patch(self, pattern: str, body: type[BaseModel] | None = None) -> Callable[[H], H]:
        return self.route("PATCH", pattern, body)

    def delete(self, pattern: str, body: type[BaseModel] | None = None) -> Callable[[H], H]:
        return self.route("DELETE", pattern, body)

    def routes(self) -> list[tuple[str, str]]:
        """Every (method, pattern) registered, sorted: for listings and tests."""
        found: list[tuple[str, str]] = []
        stack = [self._root]
        while stack:
            node = stack.pop()
            found.extend((method, route.pattern) for method, route in node.routes.items())
            stack.extend(node.static.values())
            if node.param is not None:
                stack.append(node.param)
        return sorted(found)

    # -- matching -----------------------------------------------------------------------------

    def match(self, method: str, path: str) -> Match[H]:
        """The route for `method` and `path` (no query); raises NotFound or MethodNotAllowed."""
        segments = _split_path(path)
        if segments is None or len(segments) > self._depth:
            raise NotFound(path)
        method = method.upper()
        values: list[ParamValue] = []

        def has_method(node: _Node) -> bool:
            routes = node.routes
            return method in routes or (method == "HEAD" and "GET" in routes)

        node = _search(self._root, segments, 0, values, has_method)
        if node is not None:
            routes = node.routes
            route = routes.get(method) or routes["GET"]  # HEAD falls back to GET
            params = dict(zip(route.param_names, values, strict=True))
            return Match(route.handler, params, route.body_model, route.pattern)

        # Rare path: collect what every route matching this path would allow.
        allowed: set[str] = set()

        def collect(node: _Node) -> bool:
            allowed.update(node.routes)
            return False

        _search(self._root, segments, 0, [], collect)
        if not allowed:
            raise NotFound(path)
        if "GET" in allowed:
            allowed.add("HEAD")
        raise MethodNotAllowed(sorted(allowed))


def _search(
    node: _Node,
    segments: list[str],
    index: int,
    values: list[ParamValue],
    accept: Callable[[_Node], bool],
) -> _Node | None:
    """The first node, static branches before parameters, where the path ends and `accept`
    holds. `values` holds the parameter values along the way; it is left holding the
    winner's. Depth is bounded by the longest pattern (checked by the caller)."""
    if index == len(segments):
        return node if node.routes and accept(node) else None
    segment = segments[index]
    child = node.static.get(segment)
    if child is not None:
        found = _search(child, segments, index + 1, values, accept)
        if found is not None:
            return found
    child = node.param
    if child is not None:
        value = node.convert(segment)
        if value is not None:
            values.append(value)
            found = _search(child, segments, index + 1, values, accept)
            if found is not None:
                return found
            values.pop()
    return None
