from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import BaseModel

from bunancer.web.router import MethodNotAllowed, NotFound, RouteConflict, Router

Handler = Callable[[], str]


def handler(name: str) -> Handler:
    def handle() -> str:
        return name

    handle.__name__ = name
    return handle


def routed(router: Router[Handler], method: str, path: str) -> tuple[str, dict[str, str | int]]:
    """The name of the handler `path` reaches, and its parameters."""
    found = router.match(method, path)
    return found.handler(), found.params


def test_static_segment_wins_over_parameter() -> None:
    router: Router[Handler] = Router()
    router.add("GET", "/pools/{pool}", handler("one_pool"))
    router.add("GET", "/pools/default", handler("default_pool"))
    router.add("GET", "/pools", handler("all_pools"))
    assert routed(router, "GET", "/pools/default") == ("default_pool", {})
    assert routed(router, "GET", "/pools/web") == ("one_pool", {"pool": "web"})
    assert routed(router, "GET", "/pools") == ("all_pools", {})


def test_parameter_branch_is_tried_when_the_static_branch_leads_nowhere() -> None:
    router: Router[Handler] = Router()
    router.add("GET", "/pools/default/info", handler("default_info"))
    router.add("GET", "/pools/{pool}/servers", handler("servers"))
    assert routed(router, "GET", "/pools/default/servers") == ("servers", {"pool": "default"})
    assert routed(router, "GET", "/pools/default/info") == ("default_info", {})


def test_int_parameters() -> None:
    router: Router[Handler] = Router()
    router.add("GET", "/servers/{index:int}", handler("by_index"))
    router.add("GET", "/names/{name:str}", handler("by_name"))
    assert routed(router, "GET", "/servers/42") == ("by_index", {"index": 42})
    assert isinstance(router.match("GET", "/servers/42").params["index"], int)
    assert routed(router, "GET", "/servers/-3") == ("by_index", {"index": -3})
    assert routed(router, "GET", "/names/42") == ("by_name", {"name": "42"})
    for not_an_int in ("abc", "4x", "1.5", "+1", "1_000", " 1", "\u0661", "", "-"):
        with pytest.raises(NotFound):
            router.match("GET", f"/servers/{not_an_int}")


def test_not_found_and_method_not_allowed() -> None:
    router: Router[Handler] = Router()
    router.add("GET", "/pools/{pool}", handler("get"))
    router.add("DELETE", "/pools/{pool}", handler("delete"))
    router.add("POST", "/pools", handler("create"))
    with pytest.raises(NotFound):
        router.match("GET", "/nothing")
    with pytest.raises(NotFound):
        router.match("GET", "/pools/a/b")
    with pytest.raises(NotFound):
        router.match("GET", "no-leading-slash")
    with pytest.raises(MethodNotAllowed) as caught:
        router.match("PUT", "/pools/web")
    assert caught.value.allowed == ["DELETE", "GET", "HEAD"]
    assert caught.value.status == 405
    with pytest.raises(MethodNotAllowed) as caught:
        router.match("GET", "/pools")
    assert caught.value.allowed == ["POST"]


def test_method_not_allowed_lists_every_route_matching_the_path() -> None:
    router: Router[Handler] = Router()
    router.add("GET", "/pools/default", handler("get_default"))
    router.add("DELETE", "/pools/{pool}", handler("delete"))
    # The static route does not take DELETE: the parameter route does.
    assert routed(router, "DELETE", "/pools/default") == ("delete", {"pool": "default"})
    with pytest.raises(MethodNotAllowed) as caught:
        router.match("PATCH", "/pools/default")
    assert caught.value.allowed == ["DELETE", "GET", "HEAD"]


def test_head_falls_back_to_get_unless_routed_itself() -> None:
    router: Router[Handler] = Router()
    router.add("GET", "/a", handler("get_a"))
    router.add("GET", "/b", handler("get_b"))
    router.add("HEAD", "/b", handler("head_b"))
    router.add("POST", "/c", handler("post_c"))
    assert routed(router, "HEAD", "/a") == ("get_a", {})
    assert routed(router, "head", "/a") == ("get_a", {})
    assert routed(router, "HEAD", "/b") == ("head_b", {})
    with pytest.raises(MethodNotAllowed) as caught:
        router.match("HEAD", "/c")
    assert caught.value.allowed == ["POST"]


def test_duplicate_route_raises_at_registration() -> None:
    router: Router[Handler] = Router()
    router.add("GET", "/pools/{pool}", handler("first"))
    with pytest.raises(RouteConflict, match=r"GET '/pools/\{pool\}' is already routed"):
        router.add("GET", "/pools/{pool}", handler("second"))
    # "/a/" and "/a" are the same route.
    router.add("GET", "/a", handler("a"))
    with pytest.raises(RouteConflict, match="already routed"):
        router.add("get", "/a/", handler("a_slash"))
    # Another method on the same pattern is fine.
    router.add("DELETE", "/pools/{pool}", handler("delete"))
    assert routed(router, "GET", "/pools/x") == ("first", {"pool": "x"})


def test_conflicting_parameter_names_raise_at_registration() -> None:
    router: Router[Handler] = Router()
    router.add("GET", "/pools/{pool}", handler("pool"))
    with pytest.raises(RouteConflict) as caught:
        router.add("GET", "/pools/{name}/servers", handler("servers"))
    message = str(caught.value)
    assert "{name:str}" in message
    assert "{pool:str}" in message
    assert "'/pools/{pool}'" in message
    # The rejected route left nothing behind.
    with pytest.raises(NotFound):
        router.match("GET", "/pools/web/servers")
    assert router.routes() == [("GET", "/pools/{pool}")]


def test_conflicting_parameter_types_raise_at_registration() -> None:
    router: Router[Handler] = Router()
    router.add("GET", "/servers/{id:int}", handler("by_int"))
    with pytest.raises(RouteConflict, match=r"\{id:str\} conflicts with \{id:int\}"):
        router.add("DELETE", "/servers/{id}", handler("by_str"))
    # `{id}` and `{id:str}` are the same parameter.
    router.add("GET", "/names/{id}", handler("name"))
    router.add("DELETE", "/names/{id:str}", handler("delete_name"))
    assert routed(router, "DELETE", "/names/x") == ("delete_name", {"id": "x"})


@pytest.mark.parametrize(
    "pattern",
    [
        "pools",  # no leading slash
        "/pools/{}",  # empty name
        "/pools/{:int}",
        "/pools/{pool:float}",  # unknown type
        "/pools/{pool:}",
        "/pools/{pool",  # unclosed
        "/pools/x{pool}",  # not a whole segment
        "/pools//servers",  # empty segment
        "/pools/{1pool}",  # not an identifier
        "/{a}/{a}",  # the same name twice
    ],
)
def test_invalid_patterns_raise(pattern: str) -> None:
    router: Router[Handler] = Router()
    with pytest.raises(RouteConflict, match="invalid pattern"):
        router.add("GET", pattern, handler("h"))
    assert router.routes() == []


def test_percent_decoding_happens_after_splitting() -> None:
    router: Router[Handler] = Router()
    router.add("GET", "/servers/{id}", handler("server"))
    router.add("GET", "/static/a b", handler("space"))
    assert routed(router, "GET", "/servers/127.0.0.1%3A9001") == (
        "server",
        {"id": "127.0.0.1:9001"},
    )
    # An encoded slash stays inside its segment.
    assert routed(router, "GET", "/servers/a%2Fb") == ("server", {"id": "a/b"})
    assert routed(router, "GET", "/servers/caf%C3%A9") == ("server", {"id": "café"})
    assert routed(router, "GET", "/static/a%20b") == ("space", {})


def test_trailing_slash_and_root() -> None:
    router: Router[Handler] = Router()
    router.add("GET", "/", handler("root"))
    router.add("GET", "/pools", handler("pools"))
    router.add("GET", "/pools/{pool}/", handler("pool"))
    assert routed(router, "GET", "/") == ("root", {})
    assert routed(router, "GET", "/pools/") == ("pools", {})
    assert routed(router, "GET", "/pools/web") == ("pool", {"pool": "web"})
    assert routed(router, "GET", "/pools/web/") == ("pool", {"pool": "web"})
    # Only one trailing slash is forgiven; empty segments are never parameter values.
    for path in ("/pools//", "//", "/pools/web//"):
        with pytest.raises(NotFound):
            router.match("GET", path)


def test_body_model_and_pattern_travel_with_the_match() -> None:
    class NewServer(BaseModel):
        address: str

    router: Router[Handler] = Router()
    router.add("POST", "/pools/{pool}/servers", handler("add"), body=NewServer)
    router.add("GET", "/pools/{pool}/servers", handler("list"))
    found = router.match("POST", "/pools/web/servers")
    assert found.body_model is NewServer
    assert found.pattern == "/pools/{pool}/servers"
    assert router.match("GET", "/pools/web/servers").body_model is None


def test_decorators_register_and_return_the_handler() -> None:
    router: Router[Handler] = Router()

    @router.get("/x")
    def get_x() -> str:
        return "get_x"

    @router.post("/x")
    def post_x() -> str:
        return "post_x"

    @router.put("/x")
    def put_x() -> str:
        return "put_x"

    @router.patch("/x")
    def patch_x() -> str:
        return "patch_x"

    @router.delete("/x")
    def delete_x() -> str:
        return "delete_x"

    assert get_x() == "get_x"  # still the plain function
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        assert routed(router, method, "/x") == (f"{method.lower()}_x", {})


def test_many_routes() -> None:
    router: Router[Handler] = Router()
    for i in range(500):
        router.add("GET", f"/r{i}/{{id:int}}/items/{{item}}", handler(f"items{i}"))
        router.add("POST", f"/r{i}/{{id:int}}/items", handler(f"create{i}"))
        router.add("GET", f"/r{i}/static", handler(f"static{i}"))
    assert len(router.routes()) == 1500
    assert routed(router, "GET", "/r0/7/items/x") == ("items0", {"id": 7, "item": "x"})
    assert routed(router, "GET", "/r499/8/items/y") == ("items499", {"id": 8, "item": "y"})
    assert routed(router, "POST", "/r250/1/items") == ("create250", {"id": 1})
    assert routed(router, "GET", "/r123/static") == ("static123", {})
    with pytest.raises(NotFound):
        router.match("GET", "/r500/static")
    with pytest.raises(MethodNotAllowed):
        router.match("GET", "/r3/1/items")
    # A path longer than any pattern is rejected without walking it.
    with pytest.raises(NotFound):
        router.match("GET", "/a" * 100_000)
