"""The health checker's schedule, against real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bunancer.control.health import CheckSpec, HealthChecker
from bunancer.control.states import CheckResult, HealthPolicy, ServerHealth
from bunancer.core.server import Server
from tests.helpers import free_port


@dataclass(eq=False)
class Record:
    server: Server
    health: ServerHealth
    check: CheckSpec


def test_a_server_removed_by_its_own_check_result_is_not_checked_again() -> None:
    """remove_dead_after removes a server from inside the result handler: no next check."""

    async def scenario() -> tuple[int, float | None]:
        loop = asyncio.get_running_loop()
        port = free_port()  # nothing listens: every check fails at once
        policy = HealthPolicy(interval=0.01, fast_interval=0.01, down_interval=0.01)
        record = Record(
            Server(f"127.0.0.1:{port}", "127.0.0.1", port),
            ServerHealth(policy, loop.time()),
            CheckSpec(kind="tcp", timeout=0.5),
        )
        results: list[CheckResult] = []

        def remove_on_first_result(checked: object, result: CheckResult) -> None:
            results.append(result)
            checker.unwatch(record)  # what Registry._remove does

        checker = HealthChecker(loop, remove_on_first_result)
        checker.watch(record)
        async with asyncio.timeout(5):
            while not results:
                await asyncio.sleep(0.005)
        # The check that reported has finished (no await after the handler): nothing is
        # scheduled, so no second result can come.
        next_check = checker.next_check_at(record)
        await checker.close()
        return len(results), next_check

    assert asyncio.run(scenario()) == (1, None)
