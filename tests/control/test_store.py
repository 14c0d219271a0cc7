"""FileStore and the saved shape: round trips, validation, .bak fallback, crash safety."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import signal
import stat
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from bunancer.control.store import (
    FileStore,
    SavedPool,
    SavedServer,
    SavedState,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
    check_redis_url,
    open_store,
    redact_url,
)
from tests.helpers import spawn, wait_for

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def sample(marker: int = 0) -> SavedState:
    return SavedState(
        pools={
            "default": SavedPool("default"),
            "api": SavedPool(
                "api",
                algorithm="least-connections",
                health={"path": f"/healthz/{marker}", "interval": 2.5},
                outlier={"consecutive_failures": 5},
                servers=[
                    SavedServer("a", "127.0.0.1", 9001, source="config"),
                    SavedServer(
                        "b",
                        "10.0.0.2",
                        80,
                        weight=3,
                        admin="draining",
                        health={"path": "/ping"},
                    ),
                ],
            ),
        }
    )


def save(store: FileStore, state: SavedState) -> None:
    run(store.save(state))


def load(path: Path) -> SavedState | None:
    return run(FileStore(path).load())


# -- the saved shape ----------------------------------------------------------------------------


def test_json_round_trip_keeps_every_field() -> None:
    state = sample(7)
    state.revision = 12
    assert SavedState.from_json(state.to_json()) == state
    doc = orjson.loads(state.to_json())
    assert doc["format"] == 1
    assert [p["name"] for p in doc["pools"]] == ["default", "api"]  # order kept


def test_missing_optional_fields_take_defaults() -> None:
    data = b'{"format": 1, "revision": 0, "pools": [{"name": "p", "servers": '
    data += b'[{"id": "s", "host": "h", "port": 1}]}]}'
    state = SavedState.from_json(data)
    assert state.pools["p"] == SavedPool("p", servers=[SavedServer("s", "h", 1)])


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "expected an object, got list"),
        ({"format": 1, "pools": []}, "missing key 'revision'"),
        ({"format": 2, "revision": 0, "pools": []}, "format: expected 1, got 2"),
        ({"format": 1, "revision": -1, "pools": []}, "revision: expected an integer at least 0"),
        ({"format": 1, "revision": True, "pools": []}, "revision: expected an integer, got True"),
        ({"format": 1, "revision": 0, "pools": {}}, "pools: expected a list"),
        ({"format": 1, "revision": 0, "pools": [], "x": 1}, "unknown key 'x'"),
        (
            {"format": 1, "revision": 0, "pools": [{"name": "p"}, {"name": "p"}]},
            "pools[1].name: duplicate pool 'p'",
        ),
        (
            {"format": 1, "revision": 0, "pools": [{"name": "p", "health": []}]},
            "pools[0].health: expected an object",
        ),
        (
            {
                "format": 1,
                "revision": 0,
                "pools": [{"name": "p", "servers": [{"id": "s", "host": "h", "port": 70000}]}],
            },
            "pools[0].servers[0].port: expected an integer from 1 to 65535, got 70000",
        ),
        (
            {
                "format": 1,
                "revision": 0,
                "pools": [
                    {"name": "p", "servers": [{"id": "s", "host": "h", "port": 1, "admin": "x"}]}
                ],
            },
            "pools[0].servers[0].admin: expected one of enabled, disabled, draining, got 'x'",
        ),
        (
            {
                "format": 1,
                "revision": 0,
                "pools": [
                    {
                        "name": "p",
                        "servers": [
                            {"id": "s", "host": "h", "port": 1},
                            {"id": "s", "host": "h", "port": 2},
                        ],
                    }
                ],
            },
            "pools[0].servers[1].id: duplicate server 's'",
        ),
    ],
)
def test_malformed_state_is_rejected_with_its_location(doc: Any, message: str) -> None:
    with pytest.raises(StoreCorrupt) as info:
        SavedState.from_json(orjson.dumps(doc))
    assert message in str(info.value)


def state_doc(pool: dict[str, Any] | None = None, server: dict[str, Any] | None = None) -> Any:
    """A saved document with one pool holding one server, with `pool` and `server` changes."""
    one = {"id": "s", "host": "127.0.0.1", "port": 9001, **(server or {})}
    return {
        "format": 1,
        "revision": 1,
        "pools": [{"name": "p", "algorithm": "round-robin", "servers": [one], **(pool or {})}],
    }


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (state_doc(server={"weight": 0}), "pools[0].servers[0].weight: expected an integer from"),
        (state_doc(server={"weight": 10001}), "pools[0].servers[0].weight: expected an integer"),
        (state_doc({"algorithm": "fastest"}), "pools[0].algorithm: expected one of round-robin"),
        (state_doc({"name": "a b"}), "pools[0].name: expected letters, digits"),
        (state_doc(server={"id": "x\u0000"}), "pools[0].servers[0].id: expected a name or"),
        (state_doc(server={"host": "a\u0000b"}), "pools[0].servers[0].host: a bare host name"),
        (state_doc(server={"host": "a\u0007"}), "pools[0].servers[0].host: a bare host name"),
        (state_doc(server={"host": "a b"}), "pools[0].servers[0].host: a bare host name"),
        (state_doc({"health": {"interval": -1}}), "pools[0].health.interval:"),
        (state_doc({"health": {"colour": "red"}}), "pools[0].health.colour: unknown key"),
        (state_doc({"outlier": {"consecutive_failures": 0}}), "pools[0].outlier.consecutive"),
        (state_doc({"balancing": {"retries": -1}}), "pools[0].balancing.retries:"),
        (state_doc(server={"health": {"rise": 0}}), "pools[0].servers[0].health.rise:"),
    ],
)
def test_values_the_api_would_refuse_are_refused_on_load(doc: Any, message: str) -> None:
    """Saved state is held to the API's rules: a weight of 0 once made every request a 500
    and an unknown algorithm a traceback at start; now the load names the record."""
    with pytest.raises(StoreCorrupt) as info:
        SavedState.from_json(orjson.dumps(doc))
    assert message in str(info.value)


def test_server_ids_may_be_names_or_the_address_they_were_registered_under() -> None:
    for server_id in ("s1", "127.0.0.1:9001", "[::1]:9001", "backend.example:80"):
        state = SavedState.from_json(orjson.dumps(state_doc(server={"id": server_id})))
        assert state.pools["p"].servers[0].id == server_id


def test_truncated_json_is_corrupt() -> None:
    data = sample().to_json()
    with pytest.raises(StoreCorrupt, match="not valid JSON"):
        SavedState.from_json(data[: len(data) // 2])


# -- FileStore ----------------------------------------------------------------------------------


def test_round_trip_and_nothing_saved_is_none(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert load(path) is None
    state = sample()
    save(FileStore(path), state)
    assert load(path) == state
    assert FileStore(path).description == f"file {path}"


def test_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "state.json"
    store = FileStore(path)
    old_umask = os.umask(0)  # the mode must not depend on the umask
    try:
        save(store, sample(1))
        save(store, sample(2))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state" / "state.json.bak").stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_revision_bumps_on_every_save_and_continues_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = FileStore(path)
    state = sample()
    for expected in (1, 2, 3):
        save(store, state)
        assert state.revision == expected
    again = FileStore(path)
    loaded = run(again.load())
    assert loaded is not None
    assert loaded.revision == 3
    fresh = sample()  # a state built from scratch (revision 0) still moves forward
    save(again, fresh)
    assert fresh.revision == 4


def test_previous_good_file_is_kept_as_bak(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = FileStore(path)
    save(store, sample(1))
    assert not (tmp_path / "state.json.bak").exists()
    save(store, sample(2))
    backup = SavedState.from_json((tmp_path / "state.json.bak").read_bytes())
    assert backup.revision == 1
    assert backup.pools["api"].health["path"] == "/healthz/1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.bak"]


def test_truncated_state_falls_back_to_bak_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    store = FileStore(path)
    save(store, sample(1))
    save(store, sample(2))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="bunancer.store"):
        loaded = load(path)
    assert loaded is not None
    assert loaded.revision == 1
    assert loaded.pools["api"].health["path"] == "/healthz/1"
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    text = record.getMessage()
    assert str(path) in text
    assert "not valid JSON" in text
    assert f"using {path}.bak" in text


def test_save_after_fallback_keeps_the_good_bak(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save(FileStore(path), sample(1))
    save(FileStore(path), sample(2))
    path.write_bytes(b'{"format": 1, "revis')
    store = FileStore(path)
    loaded = run(store.load())
    assert loaded is not None
    assert loaded.revision == 1
    save(store, sample(3))  # the corrupt file must not replace the good .bak
    assert SavedState.from_json((tmp_path / "state.json.bak").read_bytes()).revision == 1
    assert SavedState.from_json(path.read_bytes()).revision == 2


def test_missing_state_uses_bak(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.json"
    save(FileStore(path), sample(1))
    save(FileStore(path), sample(2))
    path.unlink()
    with caplog.at_level(logging.WARNING, logger="bunancer.store"):
        loaded = load(path)
    assert loaded is not None
    assert loaded.revision == 1
    assert "is missing" in caplog.text


@pytest.mark.parametrize("backup", [b"", b"{]", None])
def test_both_files_bad_raise_naming_both(tmp_path: Path, backup: bytes | None) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b'{"format": 1, "revision": 3, "pools": [{"name": 5}]}')
    if backup is not None:
        (tmp_path / "state.json.bak").write_bytes(backup)
    with pytest.raises(StoreCorrupt) as info:
        load(path)
    message = str(info.value)
    assert f"{path}: pools[0].name: expected a non-empty string" in message
    assert f"{path}.bak: " in message


def test_failed_write_leaves_the_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    store = FileStore(path)
    save(store, sample(1))
    original = FileStore._write_file

    def half_then_fail(target: Path, data: bytes) -> None:
        original(target, data[: len(data) // 2])  # the temporary file holds half the bytes
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FileStore, "_write_file", staticmethod(half_then_fail))
    state = sample(2)
    state.revision = 1
    with pytest.raises(StoreUnavailable, match=rf"cannot write {path}: .*No space left"):
        save(store, state)
    assert state.revision == 1  # not acknowledged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temporary left
    loaded = load(path)
    assert loaded is not None
    assert loaded.pools["api"].health["path"] == "/healthz/1"

    monkeypatch.undo()
    save(store, state)
    assert state.revision == 3  # revision 2 was spent on the failed write
    assert load(path) == state


def test_concurrent_saves_are_serialised_and_the_last_wins(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state.json")
    running = 0
    most = 0
    guard = threading.Lock()
    write = store._write

    def counting(data: bytes, revision: int) -> None:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        try:
            write(data, revision)
        finally:
            with guard:
                running -= 1

    store._write = counting  # type: ignore[method-assign]
    states = [sample(n) for n in range(20)]

    async def main() -> None:
        await asyncio.gather(*(store.save(state) for state in states))

    run(main())
    assert most == 1
    assert [s.revision for s in states] == list(range(1, 21))
    loaded = load(tmp_path / "state.json")
    assert loaded is not None
    assert loaded.revision == 20
    assert loaded.pools["api"].health["path"] == "/healthz/19"


def test_watch_never_yields_and_ends_at_close(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state.json")

    async def main() -> list[SavedState]:
        seen: list[SavedState] = []

        async def follow() -> None:
            async for state in store.watch():
                seen.append(state)

        task = asyncio.create_task(follow())
        await store.save(sample())
        await store.close()
        async with asyncio.timeout(5):
            await task
        return seen

    assert run(main()) == []


CRASHING_WRITER = """
import asyncio, os, sys
from bunancer.control.store import FileStore, SavedPool, SavedServer, SavedState

async def main() -> None:
    store = FileStore(sys.argv[1])
    state = await store.load() or SavedState()
    while True:
        n = state.revision + 1  # the revision this save will get: one writer
        servers = [SavedServer(f"s{i}", "127.0.0.1", 9000 + i, health={"path": f"/n/{n}"})
                   for i in range(n % 40)]
        state.pools = {"p": SavedPool("p", health={"path": f"/n/{n}"}, servers=servers)}
        await store.save(state)
        os.write(1, f"ACK {state.revision}\\n".encode())  # one write: never half a line

asyncio.run(main())
"""


def check_consistent(state: SavedState) -> None:
    pool = state.pools["p"]
    assert pool.health["path"] == f"/n/{state.revision}"
    assert len(pool.servers) == state.revision % 40


def kill_writer_after(path: Path, acks: int) -> int:
    """Start a writer, SIGKILL it once it acknowledged `acks` saves; its last acknowledged
    revision."""
    writer = spawn(["-c", CRASHING_WRITER, str(path)])
    wait_for(lambda: sum(line.startswith("ACK") for line in writer.lines) >= acks)
    writer.signal(signal.SIGKILL)  # lands anywhere in the save loop
    writer.proc.wait(10)
    assert writer.proc.returncode == -signal.SIGKILL
    writer.stop()  # joins the output reader: every ACK printed is in writer.lines
    assert writer.proc.stdout is not None
    writer.proc.stdout.close()
    revisions = [int(line[4:]) for line in writer.lines if re.fullmatch(r"ACK \d+", line)]
    assert len(revisions) >= acks, writer.lines
    return revisions[-1]


def test_sigkill_during_saves_never_loses_an_acknowledged_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    rng = random.Random(1234)
    for _ in range(12):
        acknowledged = kill_writer_after(path, acks=rng.randint(1, 15))

        with caplog.at_level(logging.WARNING, logger="bunancer.store"):
            state = load(path)
        assert not caplog.records  # state.json itself is always complete
        assert state is not None
        # Everything acknowledged is there; the save in flight may have landed too.
        assert state.revision in (acknowledged, acknowledged + 1)
        check_consistent(state)
        if state.revision > 1:
            backup = SavedState.from_json((tmp_path / "state.json.bak").read_bytes())
            assert backup.revision in (state.revision - 1, state.revision)
            check_consistent(backup)

    # A later writer removes what the killed ones left behind.
    store = FileStore(path)
    state = run(store.load())
    assert state is not None
    save(store, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.bak"]


def test_crash_between_the_two_renames(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = FileStore(path)
    save(store, sample(1))
    os.link(path, tmp_path / "state.json.bak")  # .bak linked, then the crash
    state = sample(2)
    save(store, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.bak"]
    assert SavedState.from_json((tmp_path / "state.json.bak").read_bytes()).revision == 1
    assert load(path) == state


def test_temporary_files_of_a_live_process_are_left_alone(tmp_path: Path) -> None:
    mine = tmp_path / f".state.json.{os.getppid()}.abcd.tmp"  # the parent is alive
    mine.write_bytes(b"x")
    dead = tmp_path / ".state.json.bak.999999999.abcd.tmp"  # above any pid_max
    dead.write_bytes(b"x")
    save(FileStore(tmp_path / "state.json"), sample())
    assert mine.exists()
    assert not dead.exists()


# -- store selection and Redis URLs (no Redis needed) ---------------------------------------------


def test_open_store_file_uses_state_dir(tmp_path: Path) -> None:
    store = open_store("file", tmp_path)
    assert isinstance(store, FileStore)
    assert store.path == tmp_path / "state.json"


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://localhost",
        "rediss://user:pw@redis.example.com:6380/2",
        "unix:///run/redis.sock",
    ],
)
def test_good_redis_urls(url: str) -> None:
    check_redis_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379", "use redis://host:port/db"),
        ("redis://127.0.0.1:notaport/0", "Port could not be cast"),
        ("redis://127.0.0.1:6379/zero", "database 'zero' is not a number"),
        ("redis://:6379/0", "no host"),
        ("unix://", "no socket path"),
    ],
)
def test_bad_redis_urls_are_named(url: str, message: str) -> None:
    with pytest.raises(StoreError, match="bad Redis URL") as info:
        check_redis_url(url)
    assert message in str(info.value)


def test_passwords_are_redacted() -> None:
    assert redact_url("redis://:s3cret@h:6379/1") == "redis://:***@h:6379/1"
    assert redact_url("redis://u:s3cret@h/1") == "redis://u:***@h/1"
    assert redact_url("redis://h:6379/1") == "redis://h:6379/1"
    with pytest.raises(StoreError) as info:
        check_redis_url("redis://:s3cret@h:6379/x")
    assert "s3cret" not in str(info.value)
