"""FileStore: one `state.json` replaced atomically, the previous good copy kept as
`state.json.bak` (used when the file is damaged). One writer; the last save wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import secrets
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from .errors import StoreCorrupt, StoreUnavailable
from .saved import SavedState

log = logging.getLogger("bunancer.store")


class FileStore:
    """One JSON file replaced atomically; the previous good copy is kept as `<name>.bak`.

    A save writes a temporary file in the same directory, fsyncs it, hard-links the current
    file to `.bak`, renames the temporary file over the current one and fsyncs the directory:
    after a crash at any point both names hold complete files. Writes run in a thread so the
    loop never waits on fsync.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.backup = self.path.with_name(self.path.name + ".bak")
        self.description = f"file {self.path}"
        self._lock = asyncio.Lock()  # saves in call order; the last one wins
        self._write_lock = threading.Lock()  # a cancelled save's thread may still be writing
        self._closed = asyncio.Event()
        self._revision = 0  # highest revision loaded or handed out
        self._written = 0  # highest revision on disk (under _write_lock)
        self._current_good: bool | None = None  # is `path` worth keeping as .bak? None: unknown
        self._swept = False

    def __repr__(self) -> str:
        return f"<FileStore {self.path} revision={self._revision}>"

    async def load(self) -> SavedState | None:
        async with self._lock:
            state = await asyncio.to_thread(self._load)
            if state is not None:
                self._revision = max(self._revision, state.revision)
            return state

    async def save(self, state: SavedState) -> None:
        async with self._lock:
            revision = max(self._revision, state.revision) + 1
            self._revision = revision  # reserved even if the write fails: revisions only grow
            data = dataclasses.replace(state, revision=revision).to_json()
            try:
                await asyncio.to_thread(self._write, data, revision)
            except OSError as error:
                raise StoreUnavailable(f"cannot write {self.path}: {error}") from error
            state.revision = revision

    async def watch(self) -> AsyncIterator[SavedState]:
        # One process owns the file: nothing else changes it. Wait until closed, yield nothing.
        await self._closed.wait()
        return
        yield  # makes this an async generator

    async def close(self) -> None:
        self._closed.set()
        async with self._lock:  # a save in progress finishes first
            pass

    # -- in a thread ---------------------------------------------------------------------------

    def _read(self, path: Path) -> tuple[SavedState | None, str | None]:
        """(state, None), (None, problem), or (None, None) when the file does not exist."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, None
        except OSError as error:
            return None, f"cannot read ({error.strerror})"
        if not data:
            return None, "empty file"
        try:
            return SavedState.from_json(data), None
        except StoreCorrupt as error:
            return None, str(error)

    def _load(self) -> SavedState | None:
        state, problem = self._read(self.path)
        if state is not None:
            self._current_good = True
            return state
        self._current_good = None if problem is None else False
        backup, backup_problem = self._read(self.backup)
        if backup is not None:
            why = "is missing" if problem is None else f"is corrupt ({problem})"
            log.warning(
                "%s %s; using %s (revision %d)", self.path, why, self.backup, backup.revision
            )
            return backup
        if problem is None and backup_problem is None:
            return None  # never saved
        raise StoreCorrupt(
            f"no usable saved state: {self.path}: {problem or 'missing'}; "
            f"{self.backup}: {backup_problem or 'missing'}"
        )

    def _write(self, data: bytes, revision: int) -> None:
        with self._write_lock:
            if revision <= self._written:
                return  # a newer save already landed (this one's task was cancelled)
            directory = self.path.parent
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self._swept:
                self._remove_stale_temporaries()
                self._swept = True
            temporary = self._temporary(self.path)
            try:
                self._write_file(temporary, data)
                if self.path.exists():
                    self._keep_backup()
                os.replace(temporary, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
            self._current_good = True
            _fsync_directory(directory)
            self._written = revision

    def _temporary(self, target: Path) -> Path:
        # Same directory (rename is atomic only within a filesystem); the pid lets a later
        # process remove what a crashed one left.
        return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")

    @staticmethod
    def _write_file(path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def _keep_backup(self) -> None:
        """Make `.bak` the current file, unless the current file is corrupt."""
        if self._current_good is None:
            self._current_good = self._read(self.path)[0] is not None
        if not self._current_good:
            log.warning("%s is corrupt: keeping the older %s", self.path, self.backup)
            return
        with contextlib.suppress(FileNotFoundError):
            if self.path.samefile(self.backup):
                # A crash between the two renames left both names on one file; renaming a
                # link onto its own file does nothing and would leave the temporary behind.
                return
        temporary = self._temporary(self.backup)
        try:
            os.link(self.path, temporary)  # same inode, already fsynced when it was written
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
                raise
            self._write_file(temporary, self.path.read_bytes())  # no hard links here
        try:
            os.replace(temporary, self.backup)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def _remove_stale_temporaries(self) -> None:
        for name in (self.path.name, self.backup.name):
            for leftover in self.path.parent.glob(f".{name}.*.tmp"):
                pid = leftover.name[len(name) + 2 :].split(".", 1)[0]
                if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
                    with contextlib.suppress(OSError):
                        leftover.unlink()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- redis --------------------------------------------------------------------------------------

# KEYS[1] state key; ARGV: expected revision, new state JSON, channel, message.
# Returns {status, stored revision}: 1 written, 0 revision mismatch, -1 stored value corrupt.
# The check, the write and the announcement happen in one atomic step. A missing key (never
# saved, or a Redis that lost its data) takes any revision: there is nothing to overwrite,
# and revisions keep growing from the writer's instead of starting again at 1.
