"""bench.reload's verdict and the two configs it switches between."""

from __future__ import annotations

import tomllib

from bench.reload import config_text, verdict
from bunancer.configfile import build_config


def test_the_verdict_fails_on_a_failed_request_or_a_silent_tunnel() -> None:
    assert verdict(failed=0, tunnel_answers=10, reloads=10) == "PASS"
    assert verdict(failed=1, tunnel_answers=10, reloads=10) == "FAIL"
    assert verdict(failed=0, tunnel_answers=9, reloads=10) == "FAIL"


def test_both_configs_load_and_differ_as_the_docstring_says() -> None:
    listen = {"proxy": 18000, "tcp": 18001, "api": 18002, "extra": 18003}
    a, b = (build_config(tomllib.loads(config_text(v, [9001, 9002, 9003], listen))) for v in "AB")
    assert [s.id for s in a.pools["default"].servers] == ["s1", "s2", "s3"]
    assert [s.id for s in b.pools["default"].servers] == ["s1", "s2"]
    assert b.pools["default"].algorithm == "p2c"
    assert len(b.listeners) == len(a.listeners) + 1
    assert [r.pool for r in b.routes] == ["v1"]
