"""uvloop, imported so that its table of open transports is a plain dict.

uvloop keeps every transport in a `weakref.WeakValueDictionary` keyed by file descriptor,
only to refuse `add_reader` on a descriptor a live transport owns. Its `__setitem__` is
Python code that builds a `KeyedRef` per entry: about 6,500 instructions for every
accepted connection, a tenth of all that a connection carrying one request costs compiled
(callgrind, `Connection: close` load). A dict gives the same answers: a looked-up
transport is checked for being alive either way, and a closed one has already dropped its
protocol, so holding it until its descriptor is reused keeps a small object, not a
connection's state.

uvloop reads `weakref.WeakValueDictionary` once, when its loop module initialises; the
name is pointed at `dict` for that import only. Import uvloop from here, before anything
else imports it: where it was imported already, it keeps its own table (`FAST_TABLE` is
then False) and works as usual.
"""

from __future__ import annotations

# What uvloop's loop module imports (uvloop/includes/stdlib.pxi): imported here first, for
# no other use, so that none of it initialises while the name is changed.
import asyncio.base_events
import asyncio.log  # noqa: F401
import concurrent.futures  # noqa: F401
import inspect  # noqa: F401
import signal  # noqa: F401
import socket  # noqa: F401
import ssl  # noqa: F401
import subprocess  # noqa: F401
import sys
import threading  # noqa: F401
import traceback  # noqa: F401
import warnings  # noqa: F401
import weakref

FAST_TABLE = "uvloop.loop" not in sys.modules

if FAST_TABLE:
    _weak_values = weakref.WeakValueDictionary
    weakref.WeakValueDictionary = dict  # type: ignore[misc, assignment]
    try:
        import uvloop
    finally:
        weakref.WeakValueDictionary = _weak_values  # type: ignore[misc]
else:
    import uvloop

__all__ = ["FAST_TABLE", "uvloop"]
