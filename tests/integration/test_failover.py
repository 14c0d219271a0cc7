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
    # Error window, last answer from the killed backend and readmission time are speed
    # figures: `python -m bench.failover` prints them with their design goals.
    print(result)
    requests = result["requests"]
    assert isinstance(requests, int)
    assert requests > 0
    # Retries on connect failure and passive ejection hide the kill from clients entirely...
    assert result["errors_after_kill"] == 0, result
    # ...and the restarted backend is readmitted: it answered again before the run ended.
    assert result["readmitted_after_restart_s"] is not None, result
