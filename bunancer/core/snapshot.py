"""What a worker process is told, and how it applies it (`bunancer serve --workers N`).

The control process describes the data plane as one plain, JSON-able dict, a *snapshot*:
each pool (its balancing and upstream settings, its servers with state, weights and passive
check settings), the routes, and each listener (by its configured address: its mode,
default pool and settings). `World.apply` brings a worker's pools, servers
and listener contexts in step with a snapshot, in place and between events: a server kept
from one snapshot to the next is the same object (its connections, in-flight count and
latency estimate go on), requests in flight finish on the servers and pools they hold.

The other way, `take_stats` turns what a worker's counters gained since the last report
into a dict the control process adds to its own (`add_stats`), so every figure it shows is
the whole balancer's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from collections.abc import Callable
from typing import Any

from .connections import ConnectionPool
from .faults import FaultRule, PoolFaults
from .headers import ForwardingOptions
from .listener import ListenerContext
from .pool import DEBUG_TOKEN, Arm, Experiment, ServerPool
from .routing import Route, RouteTable
from .server import Server, State
from .settings import BalancingSettings, ListenerSettings, TcpSettings, UpstreamSettings
from .stats import BUCKETS, ServerStats
from .tcp import TcpListenerContext
from .tls import CertificateFiles, TlsSettings, TlsTerminator

VERSION = 2  # of the message format; a worker refuses another

# -- settings as plain values ---------------------------------------------------------------------


def plain(settings: Any) -> dict[str, Any]:
    """A settings dataclass as JSON-able values (sets and networks as lists of strings)."""
    out: dict[str, Any] = {}
    for item in dataclasses.fields(settings):
        value = getattr(settings, item.name)
        if dataclasses.is_dataclass(value):
            value = plain(value)
        elif isinstance(value, frozenset):
            value = sorted(value)
        elif isinstance(value, tuple):
            value = [str(v) for v in value]
        out[item.name] = value
    return out


def tls_entry(settings: TlsSettings | None) -> dict[str, Any] | None:
    if settings is None:
        return None
    certificates = [(c.cert, c.key, c.names, c.not_after) for c in settings.certificates]
    return {"certificates": certificates, "client_ca": settings.client_ca,
            "version": settings.version}  # fmt: skip


def tls_from(entry: dict[str, Any]) -> TlsSettings:
    certificates = tuple(
        CertificateFiles(c, k, tuple(n), at) for c, k, n, at in entry["certificates"]
    )
    return TlsSettings(certificates, entry["client_ca"], entry["version"])


def listener_settings(values: dict[str, Any]) -> ListenerSettings:
    forwarding = ForwardingOptions(**values["forwarding"])
    return ListenerSettings(**{**values, "forwarding": forwarding})


def tcp_settings(values: dict[str, Any]) -> TcpSettings:
    trusted = tuple(ipaddress.ip_network(n) for n in values["trusted"])
    return TcpSettings(**{**values, "trusted": trusted})


def balancing_settings(values: dict[str, Any]) -> BalancingSettings:
    return BalancingSettings(**{**values, "retry_on": frozenset(values["retry_on"])})


ServerEntry = tuple[str, str, int, int, float, str, int, tuple[int, ...]]


def server_entry(server: Server) -> ServerEntry:
    """A server as the snapshot carries it: a plain tuple, cheaper to send, read and compare
    than a dict (a pool of 500 servers, checked often, is sent many times a second)."""
    statuses = tuple(sorted(server.eject_statuses))
    return (server.id, server.host, server.port, server.weight, server.effective_weight,
            str(server.state), server.eject_after, statuses)  # fmt: skip


def lab_entry(lab: Experiment | None) -> tuple[str, bool, list[tuple[str, ...]]] | None:
    """A pool's experiment as a worker makes its own: its id, split and arms (each its
    label, algorithm and the options an arm may set)."""
    if lab is None:
        return None
    arms = [(arm.label, arm.balancing.algorithm, arm.balancing.hash_key,
             arm.balancing.sticky_fallback) for arm in lab.arms]  # fmt: skip
    return lab.name, lab.by_client, arms


def fault_entries(faults: PoolFaults | None) -> list[tuple[Any, ...]]:
    """A pool's fault rules (the lab's) as plain tuples."""
    return [dataclasses.astuple(rule) for rule in faults.rules] if faults is not None else []


# -- a worker's side ------------------------------------------------------------------------------

# A server a worker saw failing on real traffic: (pool, server id, why).
OutlierReport = Callable[[str, str, str], None]


class World:
    """A worker's pools and listener contexts, kept in step with the snapshots it receives."""

    def __init__(self, loop: asyncio.AbstractEventLoop, report_outlier: OutlierReport) -> None:
        self.loop = loop
        self.report_outlier = report_outlier
        self.pools: dict[str, ServerPool] = {}
        self.listeners: dict[str, ListenerContext | TcpListenerContext] = {}  # by address
        self.retired: list[ListenerContext | TcpListenerContext] = []  # gone from the config
        self.tls: dict[str, TlsTerminator] = {}  # by listener key, for the TLS listeners
        self.version = -1
        self.drain = 10.0  # seconds a stopping worker lets requests finish
        self.applied: dict[str, dict[str, Any]] = {}  # each pool's entry as last applied
        self.upstreams: dict[str, UpstreamSettings] = {}  # each pool's upstream settings
        # Experiments this snapshot ended: their last counts are still to be reported.
        self.ended_labs: list[tuple[str, Experiment]] = []

    def apply(self, snapshot: dict[str, Any]) -> None:
        if snapshot.get("format") != VERSION:
            raise ValueError(f"snapshot format {snapshot.get('format')!r}, expected {VERSION}")
        seen = set()
        for entry in snapshot["pools"]:
            # A pool whose entry did not change is left alone: its selector keeps its state
            # (a hash table, a round-robin position), and a big pool costs nothing to skip.
            if self.applied.get(entry["name"]) != entry:
                self._apply_pool(entry, self.applied.get(entry["name"]))
                self.applied[entry["name"]] = entry
            seen.add(entry["name"])
        for name in [name for name in self.pools if name not in seen]:
            del self.applied[name], self.upstreams[name]
            for server in self.pools.pop(name).servers.values():
                _retire(server)
        routes = [
            Route(self.pools[r["pool"]], r["host"].encode() if r["host"] else None,
                  r["path_prefix"].encode())
            for r in snapshot["routes"]
        ]  # fmt: skip
        keys = set()
        for entry in snapshot["listeners"]:
            self._apply_listener(entry, routes)
            keys.add(entry["key"])
        for key in [key for key in self.listeners if key not in keys]:
            self.retired.append(self.listeners.pop(key))
            self.tls.pop(key, None)
        self.drain = snapshot["drain"]
        DEBUG_TOKEN[0] = snapshot["debug_token"]  # who may ask why this server
        self.version = snapshot["version"]

    def _apply_pool(self, entry: dict[str, Any], last: dict[str, Any] | None) -> None:
        name = entry["name"]
        pool = self.pools.get(name)
        settings_changed = last is None or (entry["balancing"], entry["upstream"]) != (
            last["balancing"],
            last["upstream"],
        )
        if settings_changed:
            balancing = balancing_settings(entry["balancing"])
            upstream = self.upstreams[name] = UpstreamSettings(**entry["upstream"])
            if pool is None:
                pool = self.pools[name] = ServerPool(name, balancing)
            elif pool.balancing != balancing:
                pool.configure(balancing)
        assert pool is not None  # a pool seen before, or made just above
        upstream = self.upstreams[name]
        # Only the servers whose entry changed are touched (all of them for new settings).
        before = {} if settings_changed or last is None else {e[0]: e for e in last["servers"]}
        wanted = {e[0]: e for e in entry["servers"]}
        for server_id in [sid for sid in pool.servers if sid not in wanted]:
            _retire(pool.servers.pop(server_id))
        for server_id, values in wanted.items():
            if before.get(server_id) == values:
                continue
            _, host, port, weight, effective, state, eject_after, eject_statuses = values
            server = pool.servers.get(server_id)
            if server is not None and (server.host, server.port) != (host, port):
                _retire(pool.servers.pop(server_id))
                server = None
            if server is None:
                server = pool.servers[server_id] = self._server(
                    pool, server_id, host, port, upstream
                )
            elif settings_changed and server.connections is not None:
                server.connections.reconfigure(upstream)
            server.weight = weight
            server.effective_weight = effective
            server.state = State(state)
            server.eject_after = eject_after
            server.eject_statuses = frozenset(eject_statuses)
        pool.rebuild()
        rules = tuple(FaultRule(*values) for values in entry["faults"])
        pool.set_faults(PoolFaults(rules) if rules else None)
        self._apply_lab(pool, entry["lab"])

    def _apply_lab(self, pool: ServerPool, entry: Any) -> None:
        """Start or end the pool's experiment as the control process did (arms of its own,
        over this worker's servers; their counts go back in the stats reports)."""
        ended = pool.lab
        if ended is not None and (entry is None or ended.name != entry[0]):
            self.ended_labs.append((pool.name, ended))
            pool.set_lab(None)
        if entry is None:
            return
        name, by_client, arms = entry
        if pool.lab is None:
            made = [
                Arm(pool, label, dataclasses.replace(
                    pool.balancing, algorithm=algorithm, hash_key=key, sticky_fallback=fallback))
                for label, algorithm, key, fallback in arms
            ]  # fmt: skip
            pool.set_lab(Experiment(made, by_client, name=name))

    def _server(
        self, pool: ServerPool, server_id: str, host: str, port: int, upstream: UpstreamSettings
    ) -> Server:
        server = Server(server_id, host, port, 1, pool.name)
        connections = ConnectionPool(host, port, upstream, self.loop)
        connections.owner = pool
        server.connections = connections
        server.on_outlier = self._outlier
        return server

    def _outlier(self, server: Server, reason: str) -> None:
        self.report_outlier(server.pool_name, server.id, reason)

    def _apply_listener(self, entry: dict[str, Any], routes: list[Route[ServerPool]]) -> None:
        key, pool = entry["key"], self.pools[entry["default_pool"]]
        self._apply_tls(key, entry["tls"])
        known = self.listeners.get(key)
        if entry["mode"] == "tcp":
            settings = tcp_settings(entry["settings"])
            by_name = [Route(self.pools[p], h.encode(), b"/") for h, p in entry["sni_routes"]]
            sni = RouteTable(by_name, pool) if by_name else None
            if isinstance(known, TcpListenerContext):
                known.pool, known.settings, known.routes = pool, settings, sni
            else:
                self.listeners[key] = TcpListenerContext(self.loop, pool, settings, sni)
            return
        table = RouteTable(routes, pool)
        http_settings = listener_settings(entry["settings"])
        if isinstance(known, ListenerContext):
            known.reconfigure(table, http_settings)
        else:
            self.listeners[key] = ListenerContext(self.loop, table, http_settings)

    def _apply_tls(self, key: str, entry: dict[str, Any] | None) -> None:
        if entry is None:
            self.tls.pop(key, None)
            return
        settings = tls_from(entry)
        terminator = self.tls.get(key)
        if terminator is None:
            self.tls[key] = TlsTerminator(settings)  # (the control process read the files)
        elif terminator.settings != settings:
            terminator.reload(settings, f"listener {key}")


def _retire(server: Server) -> None:
    """A server no longer in the snapshot: requests in flight finish, nothing new starts."""
    server.state = State.DRAINING
    if server.connections is not None:
        server.connections.close_idle()


# -- figures, both ways ---------------------------------------------------------------------------


def take_stats(stats: ServerStats, mark: list[int]) -> dict[str, Any] | None:
    """What `stats` gained since `mark` (updated in place; its latency since the last call is
    taken), or None when nothing happened."""
    totals = [*stats.by_class, *stats.errors, stats.bytes_in, stats.bytes_out,
              stats.retries, stats.redispatches]  # fmt: skip
    if totals == mark and not any(stats.cur_latency):
        return None
    if not mark:
        mark.extend([0] * len(totals))
    delta = [now - before for now, before in zip(totals, mark, strict=True)]
    mark[:] = totals
    latency = stats.cur_latency
    stats.cur_latency = [0] * BUCKETS  # a worker has no per-second rotation of its own
    return {"counts": delta, "latency": latency}


def add_stats(stats: ServerStats, delta: dict[str, Any]) -> None:
    """Add a worker's `take_stats` to the control process's counters of the same thing."""
    counts: list[int] = delta["counts"]
    classes, errors = len(stats.by_class), len(stats.errors)
    for index in range(classes):
        stats.by_class[index] += counts[index]
    for index in range(errors):
        stats.errors[index] += counts[classes + index]
    rest = classes + errors
    stats.bytes_in += counts[rest]
    stats.bytes_out += counts[rest + 1]
    stats.retries += counts[rest + 2]
    stats.redispatches += counts[rest + 3]
    for index, count in enumerate(delta["latency"]):
        if count:
            stats.cur_latency[index] += count
