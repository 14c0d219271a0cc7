"""A small blocking client for the registry API, for the CLI and the stubs SDK.

Standard library only (http.client): it runs in short-lived commands and in stub
processes, where starting an event loop or importing a web framework is not worth it.
"""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

DEFAULT_API = "http://127.0.0.1:8081"


class ApiError(Exception):
    """The API answered with an error status."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        where = f" ({field})" if field else ""
        super().__init__(f"{status}: {message}{where}")
        self.status = status
        self.message = message
        self.field = field


class BalancerUnreachable(Exception):
    """Nothing answers at the API address."""


def find_token(
    token: str | None = None,
    token_file: str | None = None,
    state_dir: str | Path | None = None,
) -> str | None:
    """The token to send: a flag, a file, BUNANCER_TOKEN, or the balancer's state dir."""
    if token:
        return token
    if token_file:
        return Path(token_file).read_text().strip()
    if os.environ.get("BUNANCER_TOKEN"):
        return os.environ["BUNANCER_TOKEN"].strip()
    path = Path(state_dir or os.environ.get("BUNANCER_STATE_DIR") or ".bunancer") / "token"
    try:
        return path.read_text().strip()
    except OSError:
        return None


class ApiClient:
    def __init__(self, base_url: str = DEFAULT_API, token: str | None = None, timeout: float = 5.0):
        parts = urlsplit(base_url if "://" in base_url else f"http://{base_url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected an http://HOST:PORT API address, got {base_url!r}")
        self.base_url = f"http://{parts.netloc}"
        self.host = parts.hostname
        self.port = parts.port or 80
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except (TimeoutError, ConnectionRefusedError, OSError) as error:
            reason = "connection refused" if isinstance(error, ConnectionRefusedError) else error
            raise BalancerUnreachable(
                f"no balancer answers at {self.base_url} ({reason}); is `bunancer serve` running?"
            ) from None
        finally:
            connection.close()
        data = json.loads(raw) if raw else None
        if response.status >= 400:
            message = data.get("error", "error") if isinstance(data, dict) else raw.decode()
            detail = data.get("detail") if isinstance(data, dict) else None
            if detail:
                message = f"{message}: {detail}"
            field = data.get("field") if isinstance(data, dict) else None
            raise ApiError(response.status, message, field)
        return data

    # -- the calls the CLI and the SDK use ------------------------------------------------

    def pools(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/pools")  # type: ignore[no-any-return]

    def reload(self) -> dict[str, Any]:
        """Re-read the balancer's config file: what changed (servers removed drain first)."""
        return self.request("POST", "/api/reload")  # type: ignore[no-any-return]

    def pool(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/api/pools/{quote(name, safe='')}")  # type: ignore[no-any-return]

    def register(
        self,
        pool: str,
        host: str,
        port: int,
        *,
        server_id: str | None = None,
        weight: int = 1,
        health: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"host": host, "port": port, "weight": weight}
        if server_id:
            body["id"] = server_id
        if health:
            body["health"] = health
        return self.request("POST", f"/api/pools/{quote(pool, safe='')}/servers", body)  # type: ignore[no-any-return]

    def update_server(self, pool: str, server_id: str, **changes: Any) -> dict[str, Any]:
        path = f"/api/pools/{quote(pool, safe='')}/servers/{quote(server_id, safe='')}"
        return self.request("PATCH", path, changes)  # type: ignore[no-any-return]

    def deregister(self, pool: str, server_id: str) -> dict[str, Any]:
        path = f"/api/pools/{quote(pool, safe='')}/servers/{quote(server_id, safe='')}"
        return self.request("DELETE", path)  # type: ignore[no-any-return]
