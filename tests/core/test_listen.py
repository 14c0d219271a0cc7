"""Listening with several descriptors: many connections accepted per loop turn (uvloop)."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

import pytest
import uvloop

from bunancer.core.listen import ACCEPTS_PER_TURN, listen
from tests.helpers import wait_until


class TurnCounter:
    """Counts loop turns with a callback that re-schedules itself each turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.turn = 0
        self.running = True
        loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.turn += 1
        if self.running:
            self.loop.call_soon(self._tick)


async def accepted_per_turn(accepts_per_turn: int, clients: int) -> Counter[int]:
    loop = asyncio.get_running_loop()
    turns: list[int] = []
    counter: TurnCounter | None = None

    class Recorder(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert counter is not None
            turns.append(counter.turn)

    group = await listen(
        loop, Recorder, "127.0.0.1", 0, backlog=1024, accepts_per_turn=accepts_per_turn
    )
    port = group.sockets[0].getsockname()[1]
    sockets = []
    try:
        # Every client completes its handshake (the kernel does that) before the loop
        # gets to accept any of them: the loop is blocked here.
        for _ in range(clients):
            sock = socket.socket()
            sock.connect(("127.0.0.1", port))
            sockets.append(sock)
        counter = TurnCounter(loop)
        await wait_until(lambda: len(turns) == clients)
        counter.running = False
    finally:
        group.close()
        await group.wait_closed()
        for sock in sockets:
            sock.close()
    return Counter(turns)


def test_one_descriptor_accepts_one_connection_per_turn() -> None:
    # What libuv does on its own: the reason for the spare descriptors.
    per_turn = uvloop.run(accepted_per_turn(1, 20))
    assert max(per_turn.values()) == 1


def test_spare_descriptors_accept_many_connections_per_turn() -> None:
    per_turn = uvloop.run(accepted_per_turn(ACCEPTS_PER_TURN, 3 * ACCEPTS_PER_TURN))
    assert max(per_turn.values()) == ACCEPTS_PER_TURN
    assert len(per_turn) <= 4  # 48 connections in 3 turns (4 if one straddles)


def test_close_releases_the_port() -> None:
    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        group = await listen(loop, asyncio.Protocol, "127.0.0.1", 0, backlog=16)
        port: int = group.sockets[0].getsockname()[1]
        group.close()
        async with asyncio.timeout(5):  # hangs if a descriptor stays open
            await group.wait_closed()
        return port

    port = uvloop.run(scenario())
    # Every descriptor of the listening socket is closed, not only the first.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
