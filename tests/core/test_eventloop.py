"""bunancer.eventloop: uvloop's transport table is a dict when bunancer imports uvloop
first, and uvloop works as usual either way. Each case runs in a fresh interpreter, since
whether uvloop was imported already is what decides."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import asyncio, gc, weakref
{first}
from bunancer.eventloop import FAST_TABLE, uvloop

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    fd = transport.get_extra_info("socket").fileno()
    tables = [t for t in gc.get_referents(loop) if hasattr(t, "get") and t.get(fd) is transport]
    # A descriptor a live transport owns is still refused to add_reader.
    try:
        loop.add_reader(fd, print)
        refused = False
    except RuntimeError:
        refused = True
    transport.close()
    server.close()
    await server.wait_closed()
    return type(tables[0]).__name__, refused

table, refused = uvloop.run(main())
print(FAST_TABLE, table, refused, weakref.WeakValueDictionary.__name__)
"""


def run(first: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CHECK.format(first=first)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_bunancer_importing_uvloop_first_gets_a_dict_table() -> None:
    assert run("") == "True dict True WeakValueDictionary"


def test_uvloop_imported_before_keeps_its_weak_table() -> None:
    assert run("import uvloop") == "False WeakValueDictionary True WeakValueDictionary"
