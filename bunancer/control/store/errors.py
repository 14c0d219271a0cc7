"""The store's errors; every message is meant for an operator."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every store error; the message is meant for an operator."""


class StoreCorrupt(StoreError):
    """The saved state is not valid (bad JSON, wrong shape); the message says where."""


class StoreConflict(StoreError):
    """Another instance saved first: reload, apply the change again, save again."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or written (Redis down, disk error)."""
