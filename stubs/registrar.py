"""A stub joining and leaving a balancer's pool through the balancer's API.

`Registrar` registers the stub as ``<id>`` at ``<host>:<port>`` with ``health = {path =
"/health"}``. While the API does not answer it retries with backoff (0.2 s doubling up to
5 s); a 4xx is final, except a 409 for the stub's own stale entry, which is replaced. On
stop (the stub's SIGTERM/SIGINT) it deregisters and waits for the balancer to drain it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import TYPE_CHECKING

from .behaviour import HEALTH_PATH
from .log import StubLog

if TYPE_CHECKING:
    from bunancer.client import ApiClient


class Registrar:
    """Registers the stub in a balancer pool (retrying with backoff) and deregisters it.

    States: ``pending`` (first attempt under way), ``retrying`` (the balancer does not answer
    yet), ``registered``, ``failed`` (refused for good: bad token, unknown pool, a conflict),
    and ``deregistered`` once it left.
    """

    BACKOFF_START = 0.2
    BACKOFF_MAX = 5.0

    def __init__(
        self,
        stub_id: str,
        port: int,
        *,
        host: str,
        pool: str,
        api: str,
        token: str | None,
        state_dir: str | None,
        log: StubLog | None,
    ) -> None:
        self.stub_id = stub_id
        self.port = port
        self.host = host
        self.pool = pool
        self.api = api
        self.token = token
        self.state_dir = state_dir
        self.log = log
        self.state = "pending"
        self.detail = ""
        self.stopping = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _event(self, text: str) -> None:
        print(f"stub {self.stub_id}: {text}", file=sys.stderr, flush=True)
        if self.log is not None:
            self.log.event(text)

    def _client(self, timeout: float) -> ApiClient:
        # Imported when used: a stub that never registers needs nothing of the balancer.
        from bunancer.client import ApiClient, find_token

        # Read the token at every attempt: a balancer started after us writes it first.
        return ApiClient(self.api, find_token(self.token, state_dir=self.state_dir), timeout)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self.BACKOFF_START
        while not self.stopping:
            outcome, detail = await loop.run_in_executor(None, self._attempt)
            self.detail = detail
            if outcome != "retry":
                self.state = outcome
                self._event(detail)
                return
            if self.state == "pending":
                self._event(f"{detail}; retrying with backoff up to {self.BACKOFF_MAX:g}s")
            self.state = "retrying"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            delay = min(delay * 2, self.BACKOFF_MAX)

    def _attempt(self) -> tuple[str, str]:
        """One registration attempt (blocking): its outcome (registered, failed or retry)
        and a line saying why."""
        from bunancer.client import ApiError, BalancerUnreachable

        where = f"{self.pool} at {self.api}"
        try:
            client = self._client(3.0)
            client.register(
                self.pool,
                self.host,
                self.port,
                server_id=self.stub_id,
                health={"path": HEALTH_PATH},
            )
        except ValueError as error:
            return "failed", f"registration failed: {error}"
        except BalancerUnreachable as error:
            return "retry", str(error)
        except ApiError as error:
            if error.status == 409:
                return self._resolve_conflict(client)
            if error.status >= 500:
                return "retry", f"balancer answered {error}"
            hint = " (pass --token or the balancer's --state-dir)" if error.status == 401 else ""
            return "failed", f"registration in pool {where} refused: {error}{hint}"
        return (
            "registered",
            f"registered as {self.stub_id} ({self.host}:{self.port}) in pool {where}",
        )

    def _resolve_conflict(self, client: ApiClient) -> tuple[str, str]:
        """A 409: our id or address is taken. Our own entry being removed (retry), a stale
        entry of an earlier stub with this id (replaced), or someone else (give up)."""
        from bunancer.client import ApiError, BalancerUnreachable

        address = f"{self.host}:{self.port}"
        try:
            servers = client.pool(self.pool)["servers"]
            for server in servers:
                if server["id"] == self.stub_id and server["address"] == address:
                    # Registering the same id and address again is a 200; a 409 means our
                    # old entry is being drained away: register once it is gone.
                    return "retry", f"the old entry of {self.stub_id} is being removed"
            for server in servers:
                if server["address"] == address:
                    return "failed", (
                        f"registration refused: {address} is already registered "
                        f"as {server['id']} in pool {self.pool}"
                    )
            client.deregister(self.pool, self.stub_id)  # stale: an earlier stub's entry
            client.register(
                self.pool, self.host, self.port, server_id=self.stub_id,
                health={"path": HEALTH_PATH},
            )  # fmt: skip
        except BalancerUnreachable as error:
            return "retry", str(error)
        except ApiError as error:
            return "failed", f"registration in pool {self.pool} refused: {error}"
        return "registered", f"registered as {self.stub_id} ({address}), replacing a stale entry"

    async def stop(self) -> None:
        """Stop retrying; leave the pool if registered (returns once the balancer drained us)."""
        self.stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task  # an attempt under way finishes first (bounded by its timeout)
        if self.state != "registered":
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self._deregister)
        except Exception as error:
            self._event(f"deregistration failed: {error}")
            return
        self.state = "deregistered"
        self._event(f"deregistered from pool {self.pool}")

    def _deregister(self) -> None:
        from bunancer.client import ApiError

        try:
            # The balancer answers once it drained us (timeouts.drain, 10 s by default).
            self._client(15.0).deregister(self.pool, self.stub_id)
        except ApiError as error:
            if error.status != 404:  # already gone is fine
                raise
