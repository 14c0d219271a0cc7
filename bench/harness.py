"""What every benchmark script needs to run other programs: child processes in process
groups of their own (stopped by recorded group only, never by name), their CPU time and
memory from /proc, readiness waits, free ports, and what the machine is.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

T = TypeVar("T")


# -- processes ---------------------------------------------------------------------------


@dataclass
class Child:
    """A process started by this script, in its own process group (pgid == pid)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Supervisor:
    """Starts children and stops every one of them, by recorded process group only."""

    workdir: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**os.environ, **env} if env else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own group: Ctrl-C does not reach it, killpg does
            )
        child = Child(name, popen, log_path)
        self.children.append(child)
        return child

    def stop_all(self, timeout: float = STOP_TIMEOUT) -> None:
        for child in self.children:
            if child.running() or group_pids(child.pid):
                signal_group(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(max(0.0, deadline - time.monotonic()))
        for child in self.children:
            if group_pids(child.pid):
                signal_group(child.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(5.0)

    def leftovers(self) -> list[int]:
        """PIDs still alive in any process group this supervisor started."""
        return [pid for child in self.children for pid in group_pids(child.pid)]


def start_python(supervisor: Supervisor, name: str, args: list[str], ready: str) -> Child:
    """``python ARGS`` (a module of this checkout) started, once its log shows `ready`."""
    child = supervisor.start(name, [sys.executable, *args])
    wait_log_line(child, re.escape(ready))
    return child


def kill(child: Child) -> None:
    """SIGKILL `child`'s process group (a crash, not a stop) and reap it."""
    signal_group(child.pid, signal.SIGKILL)
    child.popen.wait(5.0)


def pin(child: Child, cpus: set[int]) -> None:
    """Keep every thread of every process of `child`'s group on `cpus` (its own core for the
    front under test, the others for the load and the backends). Threads made later take
    their creator's affinity."""
    for pid in group_pids(child.pid):
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), cpus)


def split_cpus() -> tuple[set[int], set[int]] | None:
    """(the front's core, the others), or None on a machine with one core to use."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[0]}, set(cpus[1:])


def signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def read_stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from field 3 (state) on; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode(errors="replace")
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def all_pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    found = []
    for pid in all_pids():
        fields = read_stat_fields(pid)
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
            found.append(pid)
    return found


def group_cpu_seconds(pgid: int) -> float:
    """utime + stime of a process group, plus what its members reaped from their children."""
    ticks = 0
    for pid in all_pids():
        fields = read_stat_fields(pid)
        if fields is not None and int(fields[2]) == pgid:
            # After the state field: utime, stime, cutime, cstime are fields 14-17.
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / CLK_TCK


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of one process, in KiB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


# -- readiness -----------------------------------------------------------------------------


def wait_until(what: str, child: Child, check: Callable[[], T | None], timeout: float) -> T:
    """Poll `check` until it returns something truthy; fail early if `child` exits."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if not child.running():
            raise RuntimeError(
                f"{child.name} exited ({child.popen.returncode}) before {what}:\n"
                + child.log_tail()
            )
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{child.name}: no {what} within {timeout}s:\n{child.log_tail()}")
        time.sleep(0.02)


def wait_log_line(child: Child, pattern: str, timeout: float = READY_TIMEOUT) -> re.Match[str]:
    regex = re.compile(pattern, re.MULTILINE)

    def search() -> re.Match[str] | None:
        return regex.search(child.log_path.read_text(errors="replace"))

    return wait_until(f"line matching {pattern!r}", child, search, timeout)


def http_status(port: int, tls: bool = False) -> int | None:
    """Status of one GET / on 127.0.0.1:port (over TLS, the certificate not checked: a
    benchmark's own), or None if the connection fails."""
    connection = (
        http.client.HTTPSConnection(
            HOST, port, timeout=2.0, context=ssl._create_unverified_context()
        )
        if tls
        else http.client.HTTPConnection(HOST, port, timeout=2.0)
    )
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        connection.close()


def wait_http_ok(
    child: Child, port: int, timeout: float = READY_TIMEOUT, tls: bool = False
) -> None:
    """Wait until GET / through this port answers; it must answer 200."""
    status = wait_until(
        f"HTTP answer on port {port}", child, lambda: http_status(port, tls), timeout
    )
    if status != 200:
        raise RuntimeError(f"{child.name} on port {port} answered {status}:\n{child.log_tail()}")


def wait_listening(child: Child, port: int, timeout: float = READY_TIMEOUT) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""

    def accepts() -> bool:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
        except OSError:
            return False
        return True

    wait_until(f"a listener on port {port}", child, accepts, timeout)


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (for servers that cannot use 0)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# -- machine info and JSON ------------------------------------------------------------------


def command_output(argv: list[str]) -> str | None:
    """First line a command prints on stdout or stderr (version banners use either)."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (completed.stdout + completed.stderr).strip().splitlines()
    return lines[0].strip() if lines else None


def machine_info() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "uname": command_output(["uname", "-a"]),
        "python": sys.version,
        "wrk": command_output(["wrk", "-v"]),
        "nginx": command_output(["nginx", "-v"]),
        "haproxy": command_output(["haproxy", "-v"]),
        "git_commit": command_output(["git", "-C", str(ROOT), "rev-parse", "HEAD"]),
        # Uncommitted changes under bunancer/: the numbers are for the working tree then.
        "git_dirty": command_output(["git", "-C", str(ROOT), "status", "--porcelain", "bunancer"])
        is not None,
    }
