"""bench/locustfile.py against balancers it did not set up: its tasks say what they got."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from bunancer.client import ApiClient
from stubs.sdk import StubManager
from tests.conftest import StartProxy
from tests.helpers import LOCUST_MISSING, ROOT, require_tool, wait_for


@pytest.fixture(scope="module", autouse=True)
def _locust_installed() -> None:
    """Skipped without Locust, or failed when `CI` is set."""
    require_tool(LOCUST_MISSING)


def names_of_a_run(host: str, tmp_path: Path) -> dict[str, int]:
    """Run Locust headless for a few seconds; request names and their counts."""
    prefix = tmp_path / "run"
    completed = subprocess.run(
        [
            *(sys.executable, "-m", "locust", "-f", str(ROOT / "bench" / "locustfile.py")),
            *("--headless", "-u", "2", "-r", "2", "-t", "3s", "--host", host),
            *("--csv", str(prefix), "--only-summary"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    with (tmp_path / "run_stats.csv").open() as handle:
        return {row["Name"]: int(row["Request Count"]) for row in csv.DictReader(handle)}


@pytest.mark.parametrize(
    ("size", "large_name"), [(0, "GET /large/ (small body: no 64 KiB pool)"), (65536, "GET 64KiB")]
)
def test_the_large_task_is_named_by_the_size_it_got(
    start_proxy: StartProxy, tmp_path: Path, size: int, large_name: str
) -> None:
    proxy = start_proxy([])
    manager = StubManager(proxy.state_dir)
    manager.start(
        1,
        register=True,
        api=f"http://127.0.0.1:{proxy.api_port}",
        token=proxy.token,
        behaviour={"size": size} if size else None,
    )
    try:
        api = ApiClient(f"127.0.0.1:{proxy.api_port}")
        wait_for(lambda: [s["state"] for s in api.pool("default")["servers"]] == ["healthy"], 10)
        names = names_of_a_run(f"http://127.0.0.1:{proxy.port}", tmp_path)
    finally:
        manager.stop_all(timeout=10)
        proxy.process.stop()
    assert names.get(large_name, 0) > 0, names
    other = {"GET 64KiB", "GET /large/ (small body: no 64 KiB pool)"} - {large_name}
    assert not other & set(names), names
