"""Store: where the control plane's pools and servers persist between runs.

`Store` is what the registry's persistence uses (`load`, `save`, `watch`, `close`);
`open_store` picks `FileStore` (file_store.py) or `RedisStore` (redis_store.py) from the
config's `store` value; saved.py owns the saved shape.

Revisions: `save` writes `state.revision + 1` and sets `state.revision` to it once the write
is durable. RedisStore refuses a save whose `state.revision` is not the stored revision
(`StoreConflict`: another instance saved first; reload and retry); with nothing stored, any
revision is taken. FileStore has one writer and never conflicts; the last save wins.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from .errors import StoreConflict, StoreCorrupt, StoreError, StoreUnavailable
from .file_store import FileStore
from .redis_store import RedisStore, check_redis_url, redact_url
from .saved import FORMAT, SavedPool, SavedServer, SavedState

__all__ = [
    "FORMAT",
    "FileStore",
    "RedisStore",
    "SavedPool",
    "SavedServer",
    "SavedState",
    "Store",
    "StoreConflict",
    "StoreCorrupt",
    "StoreError",
    "StoreUnavailable",
    "check_redis_url",
    "open_store",
    "redact_url",
]


class Store(Protocol):
    description: str  # for banners and logs, e.g. "file .bunancer/state.json"

    async def load(self) -> SavedState | None:
        """The saved state, or None when nothing was ever saved."""
        ...

    async def save(self, state: SavedState) -> None:
        """Write `state` durably and bump `state.revision`."""
        ...

    def watch(self) -> AsyncIterator[SavedState]:
        """States saved by other instances, as they are saved; ends at `close()`."""
        ...

    async def close(self) -> None: ...


def open_store(spec: str, state_dir: str | os.PathLike[str]) -> Store:
    """The store named by the config's `store` value: "file" or a redis:// URL."""
    if spec == "file":
        return FileStore(Path(state_dir) / "state.json")
    return RedisStore(spec)
