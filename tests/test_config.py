from __future__ import annotations

from pathlib import Path

import pytest

from bunancer.config import ConfigError, parse_backend_url, parse_hostport
from bunancer.configfile import apply_overrides, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bunancer.toml"
    path.write_text(text)
    return path


def test_embedded_defaults() -> None:
    config = load_config(None)
    assert config.listeners[0].address == "127.0.0.1:8080"
    assert list(config.pools) == ["default"]
    assert config.pools["default"].servers == []
    assert config.state_dir == ".bunancer"


def test_full_file(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            state_dir = "/tmp/x"
            [[listeners]]
            address = "0.0.0.0:80"
            default_pool = "web"
            [pools.web]
            servers = [{ address = "http://10.0.0.1:8000", weight = 3, id = "w1" },
                       { address = "10.0.0.2:8000" }]
            [pools.api]
            [[routes]]
            host = "*.api.test"
            path_prefix = "/v1/"
            pool = "api"
            [timeouts]
            connect = 0.5
            [limits]
            max_body_bytes = 1048576
            [upstream]
            max_idle = 8
            """,
        )
    )
    assert config.listeners[0].host_port == ("0.0.0.0", 80)
    assert config.pools["web"].servers[0].weight == 3
    assert config.pools["web"].servers[1].host_port == ("10.0.0.2", 8000)
    assert set(config.pools) == {"web", "api", "default"}
    assert config.routes[0].host == "*.api.test"
    assert config.timeouts.connect == 0.5
    assert config.limits.max_body_bytes == 1048576
    assert config.upstream.max_idle == 8


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[pools.web]\nservers = [{ address = "a:1", weight = 0 }]',
            "bunancer.toml: pools.web.servers[0].weight: "
            "Input should be greater than or equal to 1",
        ),
        ("[timeouts]\nconect = 1", "bunancer.toml: timeouts.conect: unknown key"),
        (
            '[timeouts]\nconnect = "soon"',
            "bunancer.toml: timeouts.connect: Input should be a valid number",
        ),
        ('[[routes]]\npool = "nope"', "bunancer.toml: routes[0].pool: unknown pool 'nope'"),
        (
            '[[listeners]]\naddress = "localhost"',
            "bunancer.toml: listeners[0].address: expected HOST:PORT",
        ),
        ('[pools.web]\nservers = [{ address = "ftp://a:1" }]', "unsupported scheme 'ftp'"),
        (
            '[pools.web]\nservers = [{ address = "a:1" }, { address = "a:1" }]',
            "pools.web: duplicate server address 'a:1'",
        ),
        ('[pools.web]\nalgorithm = "magic"', "pools.web.algorithm: Input should be 'round-robin'"),
        (
            "[limits]\nwrite_buffer_low = 999999999",
            "write_buffer_low must not exceed write_buffer_high",
        ),
        ("x = [", "bunancer.toml: invalid TOML:"),
        (
            '[[listeners]]\naddress = "127.0.0.1:1"\naccept_proxy_protocol = true',
            'bunancer.toml: listeners[0].accept_proxy_protocol: applies to mode = "tcp" listeners',
        ),
        (
            '[[listeners]]\naddress = "127.0.0.1:1"\nsend_proxy_protocol = "v2"',
            "bunancer.toml: listeners[0].send_proxy_protocol: applies to mode",
        ),
        (
            '[[listeners]]\naddress = "127.0.0.1:1"\nmax_connections = 9',
            "bunancer.toml: listeners[0].max_connections: applies to mode",
        ),
        (
            '[api]\nallowed_hosts = ["a b"]',
            "bunancer.toml: api.allowed_hosts: a bare host name or IP address",
        ),
    ],
)
def test_errors_name_file_key_and_problem(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value).replace(str(path), "bunancer.toml")


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: file not found"):
        load_config("nope.toml")


def test_flags_win_over_file(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[[listeners]]\naddress = "127.0.0.1:1"\n[pools.default]\nservers = [{address="a:1"}]',
        )
    )
    merged = apply_overrides(
        config, listen="127.0.0.1:2", backends=("http://b:2", "c:3"), state_dir="/s"
    )
    assert merged.listeners[0].address == "127.0.0.1:2"
    assert [s.address for s in merged.pools["default"].servers] == ["http://b:2", "c:3"]
    assert merged.state_dir == "/s"


def test_parse_helpers() -> None:
    assert parse_hostport("[::1]:80") == ("::1", 80)
    assert parse_hostport(":80") == ("127.0.0.1", 80)
    assert parse_backend_url("http://h:1/") == ("h", 1)
    for bad, problem in (("h", "HOST:PORT"), ("h:99999", "out of range"), ("h:x", "HOST:PORT")):
        with pytest.raises(ValueError, match=problem):
            parse_hostport(bad)
    with pytest.raises(ValueError, match="port other than 0"):
        parse_backend_url("h:0")
