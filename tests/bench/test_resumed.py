"""bench.resumed reads openssl s_time's output: a connection that was not resumed counts
as an error, so a front that never resumes cannot pass for a fast resuming one."""

from __future__ import annotations

import pytest

import bench.throughput as throughput
from bench.resumed import parse_s_time

HEAD = "Collecting connection statistics for 3 seconds\n"
RESUMED = (
    "\n\nNow timing with session id reuse.\nstarting\nrrrrr\n\n"
    "5 connections in 0.01s; 500.00 connections/user sec, bytes read 3180\n"
    "5 connections in 4 real seconds, 636 bytes read per connection\n"
)


def test_every_connection_resumed_is_counted_without_errors() -> None:
    times = parse_s_time(HEAD + RESUMED)
    assert (times.connections, times.not_resumed) == (5, 0)


def test_full_handshakes_in_the_reuse_run_are_errors() -> None:
    times = parse_s_time(HEAD + RESUMED.replace("rrrrr", "r**r*"))
    assert (times.connections, times.not_resumed) == (5, 3)


def test_output_without_a_count_is_refused() -> None:
    with pytest.raises(ValueError, match="connection count"):
        parse_s_time("Unable to get connection\n")


def test_resumed_mode_needs_tls_and_joins_the_default_modes_with_it() -> None:
    assert throughput.chosen_modes(throughput.parse_args([])) == ["keepalive", "close"]
    with_tls = throughput.parse_args(["--tls"])
    assert throughput.chosen_modes(with_tls) == ["keepalive", "close", "resumed"]
    with pytest.raises(SystemExit) as exit_info:
        throughput.parse_args(["--mode", "resumed"])
    assert exit_info.value.code == 2
