"""The balancer and stubs a scenario runs against, and the thread that watches their states.

Own mode starts a balancer (`balancer_config`) and three *nodes*: each node is one stub in
`default` (small bodies) and one in `large` (64 KiB bodies), all registered through the
API; a fault hits every stub of a node, as if one machine serving both went wrong. With
`--host`, the balancer there and the registered stubs of `--state-dir`, grouped into nodes
by pool. Every process started here is stopped by its recorded PID or process group.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from bench.harness import Supervisor, wait_log_line
from bench.scenarios.verdicts import Settings, Transition
from bunancer.client import ApiClient, ApiError, BalancerUnreachable, find_token
from stubs.behaviour import Behaviour
from stubs.sdk import Stub, StubError, StubManager

if TYPE_CHECKING:
    from bench.scenarios.runner import Options

LARGE_SIZE = 64 * 1024
SETUP_TIMEOUT = 20.0  # balancer and stubs up, servers healthy
HEALTHY_TIMEOUT = 15.0  # a restarted or new stub admitted by the balancer
MONITOR_INTERVAL = 0.25  # API polls for server states


class SetupError(Exception):
    """The run could not be set up (balancer, stubs or Locust); one line for the user."""


def is_loopback_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost")


@dataclass
class Node:
    """One machine's worth of stubs: one per pool (a fault hits all of them)."""

    name: str
    members: list[Stub]

    @property
    def ids(self) -> list[str]:
        return [stub.id for stub in self.members]


# The runner's own balancer checks quickly, so a run of a minute shows a few state changes.
QUICK_CHECKS = "interval = 0.5\nfast_interval = 0.2\ndown_interval = 0.3\nmax_down_interval = 1.0\n"
# A control run's balancer has its protection off: round-robin, no retries, no passive
# ejection, and slow active checks (a failure is noticed after 10 s). A scenario whose
# verdict this balancer also passes does not tell protection from its absence.
UNPROTECTED = {
    "algorithm": 'algorithm = "round-robin"\n',
    "health": "interval = 5.0\nfast_interval = 5.0\ndown_interval = 5.0\nmax_down_interval = 5.0\n",
    "tables": "[pools.{pool}.balancing]\nretries = 0\n[pools.{pool}.outlier]\nenabled = false\n",
}


def balancer_config(protected: bool = True) -> str:
    """The runner's own balancer: ephemeral ports, /large/ to 64 KiB stubs; its defaults
    with quick checks, or with its protection off (a control run)."""
    text = (
        '[[listeners]]\naddress = "127.0.0.1:0"\n'
        '[api]\nlisten = "127.0.0.1:0"\n[dashboard]\nlisten = "127.0.0.1:0"\n\n'
        '[[routes]]\npath_prefix = "/large/"\npool = "large"\n\n'
    )
    for pool in ("default", "large"):
        algorithm = "" if protected else UNPROTECTED["algorithm"]
        health = QUICK_CHECKS if protected else UNPROTECTED["health"]
        text += f"[pools.{pool}]\n{algorithm}servers = []\n[pools.{pool}.health]\n{health}"
        if not protected:
            text += UNPROTECTED["tables"].format(pool=pool)
        text += "\n"
    return text


@dataclass
class Setup:
    """Where the load goes and the stubs the faults hit."""

    host: str
    api: ApiClient
    token: str | None
    manager: StubManager
    nodes: list[Node]
    own: bool  # the balancer and every stub were started by this run
    supervisor: Supervisor
    started: list[str] = field(default_factory=list)  # ids of stubs this run started

    def start_stub(self, pool: str, behaviour: Behaviour, port: int | None = None) -> Stub:
        (stub,) = self.manager.start(
            1,
            port=port,
            behaviour=behaviour,
            register=True,
            pool=pool,
            api=self.api.base_url,
            token=self.token,
        )
        self.started.append(stub.id)
        return stub

    def states(self) -> dict[tuple[str, str], tuple[str, str, int]]:
        """(pool, id) -> (state, reason, port) of every server the balancer knows."""
        found = {}
        for pool in self.api.pools():
            for server in pool["servers"]:
                found[(pool["name"], server["id"])] = (
                    server["state"],
                    server.get("reason", ""),
                    int(server["port"]),
                )
        return found

    def settings(self) -> Settings:
        """What the judges need of the balancer's settings (from its API)."""
        outlier = self.api.pool("default")["outlier"]
        return Settings(consecutive_failures=int(outlier["consecutive_failures"]))

    def wait_healthy(self, stubs: list[Stub], timeout: float = HEALTHY_TIMEOUT) -> float:
        """Poll the API until every stub is a healthy server; the seconds it took."""
        began = time.monotonic()
        deadline = began + timeout
        while True:
            states = self.states()
            if all(self._is_healthy(states, stub) for stub in stubs):
                return time.monotonic() - began
            if time.monotonic() >= deadline:
                names = ", ".join(
                    f"{s.id}: {states.get((s.pool or 'default', s.id), ('absent',))[0]}"
                    for s in stubs
                )
                raise SetupError(f"not healthy within {timeout:g}s ({names})")
            time.sleep(0.05)

    @staticmethod
    def _is_healthy(states: dict[tuple[str, str], tuple[str, str, int]], stub: Stub) -> bool:
        state, _reason, port = states.get((stub.pool or "default", stub.id), ("absent", "", 0))
        return state == "healthy" and port == stub.port


def start_own(options: Options, results: Path, workdir: Path) -> Setup:
    supervisor = Supervisor(results)
    config = results / "bunancer.toml"
    config.write_text(balancer_config(options.protected))
    state = workdir / "balancer"
    argv = [sys.executable, "-m", "bunancer", "serve", "--config", str(config)]
    child = supervisor.start("bunancer", [*argv, "--state-dir", str(state)])
    setup = Setup(
        host="",
        api=ApiClient("http://127.0.0.1:1"),
        token=None,
        manager=StubManager(workdir / "stubs"),
        nodes=[],
        own=True,
        supervisor=supervisor,
    )
    try:
        proxy = wait_log_line(child, r"ready: proxy listening on 127\.0\.0\.1:(\d+)")
        api = wait_log_line(child, r"ready: api listening on 127\.0\.0\.1:(\d+)")
    except RuntimeError as error:
        supervisor.stop_all()
        raise SetupError(str(error)) from None
    try:
        fill_own(setup, options, proxy.group(1), api.group(1), state)
    except BaseException:
        tear_down(setup)
        raise
    return setup


def fill_own(setup: Setup, options: Options, proxy_port: str, api_port: str, state: Path) -> None:
    """Start the nodes' stubs, registered in the balancer, and wait until all are healthy."""
    setup.host = f"http://127.0.0.1:{proxy_port}"
    setup.api = ApiClient(f"http://127.0.0.1:{api_port}")
    setup.token = (state / "token").read_text().strip()
    base = Behaviour().with_changes({"latency": options.latency})
    columns = []
    for pool, behaviour in (("default", base), ("large", base.with_changes({"size": LARGE_SIZE}))):
        column = setup.manager.start(
            options.nodes,
            behaviour=behaviour,
            register=True,
            pool=pool,
            api=setup.api.base_url,
            token=setup.token,
        )
        setup.started += [stub.id for stub in column]
        columns.append(column)
    setup.nodes = [
        Node(f"n{index + 1}", list(members))
        for index, members in enumerate(zip(*columns, strict=True))
    ]
    setup.wait_healthy([stub for node in setup.nodes for stub in node.members], SETUP_TIMEOUT)


def attach(options: Options, results: Path) -> Setup:
    """A running balancer at --host and the registered stubs of --state-dir."""
    manager = StubManager(options.state_dir)
    stubs = [stub for stub in manager.list() if stub.pool]
    by_pool: dict[str, list[Stub]] = {}
    for stub in stubs:
        by_pool.setdefault(stub.pool or "default", []).append(stub)
    count = min((len(column) for column in by_pool.values()), default=0)
    if count < 2:
        raise SetupError(
            f"need at least two registered stubs per pool in {manager.directory}; start them "
            "with: bunancer stubs start --count 3 --register"
        )
    api_url = options.api or stubs[0].api or "http://127.0.0.1:8081"
    if not is_loopback_url(api_url):
        raise SetupError(f"the stubs registered with {api_url}: not a loopback API")
    token = find_token(state_dir=options.state_dir)
    columns = [by_pool[pool][:count] for pool in sorted(by_pool)]
    nodes = [
        Node(f"n{index + 1}", list(members))
        for index, members in enumerate(zip(*columns, strict=True))
    ]
    setup = Setup(
        host=options.host.rstrip("/"),
        api=ApiClient(api_url, token),
        token=token,
        manager=manager,
        nodes=nodes,
        own=False,
        supervisor=Supervisor(results),
    )
    try:
        setup.wait_healthy([stub for node in nodes for stub in node.members], 5.0)
    except (BalancerUnreachable, ApiError) as error:
        raise SetupError(str(error)) from None
    return setup


def tear_down(setup: Setup) -> None:
    """Stop what this run started: its stubs (own mode: all; they deregister), the balancer."""
    running = {stub.id for stub in setup.manager.list()}
    mine = [stub_id for stub_id in dict.fromkeys(setup.started) if stub_id in running]
    if setup.own:
        with contextlib.suppress(StubError):
            setup.manager.stop_all(timeout=10.0)
    else:
        # Stubs it added (scale-up) go; restarted ones replace the user's and stay.
        replaced = {stub.id for node in setup.nodes for stub in node.members}
        for stub_id in mine:
            if stub_id not in replaced:
                with contextlib.suppress(StubError):
                    setup.manager.stop(stub_id, timeout=10.0)
    setup.supervisor.stop_all()


# -- watching the balancer ----------------------------------------------------------------


class Monitor:
    """Polls the API in a thread and keeps every change of a server's state."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.transitions: list[Transition] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        last: dict[tuple[str, str], str] = {}
        while not self._stop.is_set():
            try:
                states = self.setup.states()
            except (BalancerUnreachable, ApiError, OSError, ValueError):
                # Unknown is not "every server removed": skip this poll.
                self._stop.wait(MONITOR_INTERVAL)
                continue
            now = time.time()
            for key, (state, reason, _port) in states.items():
                if last.get(key) != state:
                    self.transitions.append(Transition(now, *key, state, reason))
                    last[key] = state
            for key in set(last) - set(states):
                self.transitions.append(Transition(now, *key, "removed", ""))
                del last[key]
            self._stop.wait(MONITOR_INTERVAL)
