"""A backend killed under load and restarted: what clients see (bench/failover.py, short)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pytest
import uvloop

from bench.failover import scenario


@pytest.mark.slow
def test_kill_and_restart_one_of_three_under_load() -> None:
    args = argparse.Namespace(connections=16, before=1.0, down=2.0, after=4.0)
    with tempfile.TemporaryDirectory(prefix="bunancer-failover-") as tmp:
        result = uvloop.run(scenario(args, Path(tmp)))
    print(result)
    requests = result["requests"]
    assert isinstance(requests, int)
    assert requests > 5000
    # Design goal: errors stop within 1 s (retry on connect failure, passive ejection)...
    assert result["error_window_s"] < 1.0, result
    assert result["errors_after_kill"] == 0, result  # retries hide the kill from clients
    # ...the dead backend stops getting traffic at once, and is back within 3 s.
    last = result["last_answer_from_killed_s"]
    assert isinstance(last, float)
    assert last < 1.0, result
    back = result["readmitted_after_restart_s"]
    assert back is not None, result
    assert isinstance(back, float)
    assert back < 3.0, result
