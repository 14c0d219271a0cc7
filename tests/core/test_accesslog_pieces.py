"""How the access log splits a batch for a pipe: whole lines, at most PIPE_BUF a write."""

from __future__ import annotations

from bunancer.core.accesslog import _pieces


def test_a_file_takes_the_batch_in_one_piece() -> None:
    assert _pieces([b"a\n", b"b\n"], 0) == [b"a\nb\n"]


def test_a_pipe_gets_whole_lines_within_the_limit() -> None:
    lines = [b"x" * 3 + b"\n", b"y" * 3 + b"\n", b"z" * 9 + b"\n", b"w\n"]
    assert _pieces(lines, 8) == [b"xxx\nyyy\n", b"zzzzzzzzz\n", b"w\n"]  # a long line alone
    assert all(piece.endswith(b"\n") for piece in _pieces(lines, 5))
