"""Where stubs keep their files in a state dir, and whether a recorded stub really runs.

Layout, under ``<state-dir>/stubs/`` (mode 0700):

- ``<id>.json``: the pid file, written atomically by the stub itself once it listens (pid,
  port, pool, start time, the process's start ticks and command line)
- ``<id>.sock``: its control socket (mode 0600)
- ``<id>.log``: its access log, rotated to ``<id>.log.1`` at `LOG_CAP` bytes
- ``<id>.out``: stdout and stderr of a detached stub (startup errors land here)

A pid file is trusted only when the process is alive *and* is the same stub: its start
ticks (``/proc/<pid>/stat`` field 22) match the record and its command line runs
``stubs.server --id <id>``. A pid reused by another process is never signalled.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LOG_CAP = 1024 * 1024  # access log bytes before rotation (one old copy is kept)
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with the terminating NUL


def default_state_dir() -> Path:
    return Path(os.environ.get("BUNANCER_STATE_DIR") or ".bunancer")


def stubs_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / "stubs"


def ensure_stubs_dir(state_dir: str | Path) -> Path:
    """Create ``<state-dir>/stubs`` owner-only (it holds control sockets)."""
    directory = stubs_dir(state_dir)
    Path(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.mkdir(mode=0o700, exist_ok=True)
    return directory


@dataclass(frozen=True)
class StubPaths:
    record: Path
    sock: Path
    log: Path
    out: Path

    @classmethod
    def of(cls, state_dir: str | Path, stub_id: str) -> StubPaths:
        base = stubs_dir(state_dir)
        return cls(
            base / f"{stub_id}.json",
            base / f"{stub_id}.sock",
            base / f"{stub_id}.log",
            base / f"{stub_id}.out",
        )


@dataclass(frozen=True)
class StubRecord:
    """The pid file's content."""

    id: str
    pid: int
    port: int
    host: str = "127.0.0.1"
    pool: str | None = None  # set when the stub registers itself
    api: str | None = None
    started_at: float = 0.0  # wall clock
    start_ticks: int = 0  # /proc/<pid>/stat starttime, the process's identity with the pid
    argv: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StubRecord:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        record = cls(**known)
        if not isinstance(record.pid, int) or not isinstance(record.port, int):
            raise TypeError("pid and port must be integers")
        return record


def write_record(path: Path, record: StubRecord) -> None:
    """Replace the pid file atomically, so a reader never sees half of it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(record.to_json())
    os.replace(temporary, path)


def read_record(path: Path) -> StubRecord | None:
    """The record, or None when it is missing or damaged (then it is stale)."""
    try:
        return StubRecord.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return text[text.rfind(")") + 2 :].split()


def process_start_ticks(pid: int) -> int | None:
    """Start time of a running process in clock ticks since boot; None if gone or a zombie."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def process_running(pid: int) -> bool:
    return process_start_ticks(pid) is not None


def process_argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_stub_process(pid: int, stub_id: str) -> bool:
    argv = process_argv(pid)
    if "stubs.server" not in argv:
        return False
    return any(a == "--id" and b == stub_id for a, b in itertools.pairwise(argv))


def is_live(record: StubRecord) -> bool:
    """True when the recorded process runs and is this very stub (not a reused pid)."""
    ticks = process_start_ticks(record.pid)
    return (
        ticks is not None and ticks == record.start_ticks and is_stub_process(record.pid, record.id)
    )


def remove_files(paths: StubPaths, *, logs: bool = False) -> None:
    """Remove a stub's pid file and socket (and its logs when asked)."""
    victims = [paths.record, paths.sock]
    if logs:
        victims += [paths.log, paths.log.with_name(paths.log.name + ".1"), paths.out]
    for path in victims:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
