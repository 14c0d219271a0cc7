"""Builds the balancer from a `Config` and runs it on one uvloop loop.

Owns the lifecycle: listeners up (a port in use is a clear `StartupError`), a start-up
banner, SIGINT/SIGTERM handling, and graceful shutdown: stop accepting, let requests in
flight finish up to the drain timeout, close what is left, close upstream pools.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from .admin import AdminTls, exposure, serve_options
from .config import Config, ConfigError, parse_hostport
from .control.addresses import AddressPolicy
from .control.certificates import check_certificates
from .control.commands import Commands
from .control.events import EventBus
from .control.faults import FaultBook
from .control.lab import Lab
from .control.persistence import Persistence
from .control.registry import PoolSettings, Registry
from .control.reload import ReloadPlan, apply_to_pools, plan, protected_pools, remove_pools, running
from .control.store import Store, StoreError, open_store
from .control.telemetry import Telemetry
from .control.workers import ListenerSockets, Workers
from .core.accesslog import AccessLog
from .core.listen import ListenGroup, drain, listen
from .core.listener import ListenerContext
from .core.pool import DEBUG_TOKEN
from .core.tls import TlsTerminator
from .listeners import (
    Listener,
    certificate_expiry,
    listener_view,
    make_listener,
    make_routes,
    reconfigure,
    refresh_certificates,
    upstream_settings,
)
from .web.api import build_api
from .web.app import App
from .web.attempts import FailedAttempts
from .web.auth import Token, TokenError, load_token
from .web.server import serve as web_serve

log = logging.getLogger("bunancer")
TLS_WATCH_EVERY = 2.0  # seconds between looks at the certificate files


class StartupError(Exception):
    """The balancer cannot start (port in use, bad state dir); phrased for the user."""


class Balancer:
    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        config_source: Callable[[], Config] | None = None,
    ) -> None:
        """`config_source` reads the config again (the file, then the command's flags) for
        `reload`; None: there is no file to read."""
        self.config = config
        self.loop = loop
        self.config_source = config_source
        self.retired: list[Listener] = []  # removed by a reload, still closing connections
        self._reloading = asyncio.Lock()
        self.upstream_settings = upstream_settings(config)
        self.bus = EventBus()
        self.registry = Registry(
            loop, self.upstream_settings, self.bus, drain_timeout=config.timeouts.drain
        )
        self._add_configured_pools()
        self.pools = self.registry.pools
        api = config.api
        addresses = AddressPolicy(api.registration_allow, api.registration_deny)
        self.commands = Commands(self.registry, self.save_state, addresses)
        self.listeners = self._make_listeners()
        self._stopping: asyncio.Event | None = None
        statsd = config.stats.statsd
        self.telemetry = Telemetry(
            self.registry,
            self.bus,
            loop,
            listener_stats=[listener.ctx.rejected for listener in self.listeners],
            statsd=parse_hostport(statsd) if statsd else None,
            statsd_prefix=config.stats.statsd_prefix,
        )
        self.telemetry.listeners_view = self.listeners_view
        self.admin_tls: list[AdminTls] = []  # the API's and the dashboard's, when they have it
        self.telemetry.certificates = lambda: certificate_expiry(
            [(x.address, x.tls) for x in self.listeners]
            + [(x.label, x.settings) for x in self.admin_tls]
        )
        self.access_log: AccessLog | None = None
        self.token: Token | None = None
        self.failed_attempts = FailedAttempts(loop.time)  # wrong tokens: API and dashboard
        self.store: Store | None = None
        self.persistence: Persistence | None = None
        self.api_app: App | None = None
        self.api_server: asyncio.Server | None = None
        self.dashboard_app: App | None = None
        self.dashboard_server: asyncio.Server | None = None
        count = (os.cpu_count() or 1) if config.workers == "auto" else int(config.workers)
        self.workers = (
            Workers(loop, self.registry, lambda: self.config, self._listener_sockets, count)
            if count
            else None
        )
        self.telemetry.workers = self.workers
        self.faults = FaultBook(self.registry, self.bus, loop)  # the lab's rules, at run time
        self.lab = Lab(self.registry, self.bus, loop)  # and its experiments
        if self.workers is not None:
            self.faults.settle = self.lab.settle = self.workers.settle  # in effect everywhere
            self.lab.experiments = self.workers.experiments
            self.workers.decisions = self.telemetry.decisions

    def _add_configured_pools(self) -> None:
        config, registry = self.config, self.registry
        for name, pool_config in config.pools.items():
            registry.add_pool(name, PoolSettings.from_config(pool_config))
            for server_config in pool_config.servers:
                host, port = server_config.host_port
                registry.register(
                    name,
                    host,
                    port,
                    weight=server_config.weight,
                    server_id=server_config.id or server_config.address.split("://")[-1],
                    health=server_config.health,
                    source="config",
                )
        registry.protected = protected_pools(config)

    def _make_listeners(self) -> list[Listener]:
        routes = make_routes(self.config, self.registry.pools)
        return [
            make_listener(self.config, x, routes, self.registry.pools, self.loop)
            for x in self.config.listeners
        ]

    def listeners_view(self) -> list[dict[str, object]]:
        workers = self.workers  # with workers, they hold the connections: their last reports
        return [
            listener_view(x, workers.open_connections(x.key) if workers is not None else None)
            for x in self.listeners
        ]

    @property
    def api_address(self) -> str:
        return _bound(self.api_server, self.config.api.listen)

    @property
    def dashboard_address(self) -> str:
        return _bound(self.dashboard_server, self.config.dashboard.listen)

    async def save_state(self) -> None:
        """Make the registry's current state durable (API changes wait for this)."""
        if self.persistence is not None:
            await self.persistence.save()

    # -- reload ----------------------------------------------------------------------------

    async def reload(self) -> tuple[ReloadPlan, list[str]]:
        """Read the config again and apply what changed in place: what changed, and the
        problems met (a server or listener that could not be added). A file that does not
        load raises ConfigError and changes nothing."""
        if self.config_source is None:
            raise ConfigError("no config file to reload: bunancer serve was started without one")
        new = self.config_source()
        check_certificates(new)  # a bad pair refuses the whole file, as `config check` does
        async with self._reloading:
            change = plan(self.config, new)
            config = running(self.config, new)
            registry = self.registry
            problems = await apply_to_pools(registry, change, config, upstream_settings(config))
            registry.protected = protected_pools(config)
            pools = registry.pools
            routes = make_routes(config, pools)
            removed = {x.host_port for x in change.listeners_removed}
            leaving = [x for x in self.listeners if (x.host, x.port) in removed]
            for listener in self.listeners:
                if listener not in leaving:
                    reconfigure(listener, config, routes, pools)
            readded = {x.host_port for x in change.listeners_added} & removed
            for listener in [x for x in leaving if (x.host, x.port) in readded]:
                self._retire(listener)  # another mode at the same address: this goes first
            if readded and self.workers is not None:
                await self.workers.settle()  # (the workers let go of the address too)
            for settings in change.listeners_added:
                listener = make_listener(config, settings, routes, pools, self.loop)
                try:
                    await self._listen(listener)
                except OSError as error:
                    problems.append(_bind_problem(listener.address, error))
                    continue
                self.listeners.append(listener)
                self.telemetry.listener_stats.append(listener.ctx.rejected)
                if self.workers is not None:
                    self.workers.add_listener(_sockets_of(listener))
            for listener in [x for x in leaving if x in self.listeners]:
                self._retire(listener)  # (after the new ones opened)
            problems += await remove_pools(registry, change.pools_removed)
            for admin in self.admin_tls:
                admin.refresh()  # (their files; a changed [api] or [dashboard] takes a restart)
            self.config = config
            await self.save_state()
            if self.workers is not None and not await self.workers.settle():
                problems.append("a worker did not take the new config within 2 s")
        for line in change.changes() or ["nothing changed"]:
            log.info("reload: %s", line)
        for key in change.restart_needed:
            log.warning("reload: [%s] changed: it applies at the next restart", key)
        for line in problems:
            log.warning("reload: %s", line)
        return change, problems

    async def _watch_certificates(self) -> None:
        """Reload a TLS listener's certificates when their files change on disk (a renewal
        rewrites them): new handshakes take the new pair; a bad one is logged and left."""
        while True:
            await asyncio.sleep(TLS_WATCH_EVERY)
            async with self._reloading:
                changed = refresh_certificates(self.listeners, self.config)
                for admin in self.admin_tls:
                    admin.refresh()
            if changed and self.workers is not None:
                self.workers.push()

    def _retire(self, listener: Listener) -> None:
        """Stop accepting on a listener a reload removed; its connections finish their
        requests (and tunnels run on) until they end or the balancer stops."""
        self.listeners.remove(listener)
        if listener.server is not None:
            listener.server.close()
        self.retired = [x for x in self.retired if x.has_connections]  # ended: forgotten
        self.retired.append(listener)

    async def reload_logged(self) -> None:
        """For SIGHUP: reload, and log a file that does not load instead of raising."""
        try:
            await self.reload()
        except ConfigError as error:
            log.error("reload refused, the running config stays: %s", error)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._prepare_state_dir()
        self._open_access_log()
        await self._restore_state()
        # Open for traffic once every server had its first check (bounded by the longest
        # check timeout), so the first requests do not meet a pool of pending servers.
        longest = max(
            (r.check.timeout for r in self.registry.all_records() if r.check.enabled),
            default=0.0,
        )
        await self.registry.first_checks(longest + 0.25)
        for listener in self.listeners:
            try:
                await self._listen(listener)
            except OSError as error:
                await self.close_listeners()
                raise StartupError(_bind_problem(listener.address, error)) from None
        if self.workers is not None:
            await self.workers.start()
        await self._start_api()
        self.telemetry.start()
        if self.admin_tls or any(listener.tls is not None for listener in self.listeners):
            self.registry.spawn(self._watch_certificates())

    def _listener_sockets(self) -> list[ListenerSockets]:
        return [_sockets_of(x) for x in self.listeners if x.server is not None]

    async def _listen(self, listener: Listener) -> None:
        if self.workers is not None:
            # Bound here, served by the workers (control/workers.py says why).
            server = await self.loop.create_server(
                listener.factory, listener.host, listener.port, reuse_address=True,
                backlog=4096, start_serving=False,
            )  # fmt: skip
            listener.server = ListenGroup([server])
            return
        if listener.tls is not None:
            listener.terminator = TlsTerminator(listener.tls)
        context = listener.terminator.context if listener.terminator is not None else None
        listener.server = await listen(
            self.loop, listener.factory, listener.host, listener.port, backlog=4096, tls=context
        )
        if isinstance(listener.ctx, ListenerContext):
            listener.ctx.access_log = self.access_log

    async def _start_api(self) -> None:
        api = self.config.api
        try:
            self.token = load_token(
                Path(self.config.state_dir), configured=api.token, token_file=api.token_file
            )
        except TokenError as error:
            await self.close_listeners()
            raise StartupError(str(error)) from None
        DEBUG_TOKEN[0] = self.token.value.encode()  # who may ask why (X-Bunancer-Debug)
        host, port = parse_hostport(api.listen)
        public_reads, host_check = exposure(api, "api", host)
        self.api_app = build_api(
            self.registry,
            self.commands,
            self.token.value,
            telemetry=self.telemetry,
            public_reads=public_reads,
            host_check=host_check.refusal,
            attempts=self.failed_attempts,
            reload=self.reload,
            faults=self.faults,
            lab=self.lab,
        )
        options, tls = serve_options(api, "api")
        self.admin_tls += [tls] if tls else []
        try:
            self.api_server = await web_serve(self.api_app, host, port, **options)
        except OSError as error:
            await self.close_listeners()
            raise StartupError(_bind_problem(f"{api.listen} (API)", error)) from None
        if self.config.dashboard.enabled:
            await self._start_dashboard()

    async def _start_dashboard(self) -> None:
        from .web.dashboard import DashboardContext, build_dashboard

        assert self.token is not None
        listen = self.config.dashboard.listen
        host, port = parse_hostport(listen)
        public_reads, host_check = exposure(self.config.dashboard, "dashboard", host)
        self.dashboard_app = build_dashboard(
            DashboardContext(
                registry=self.registry,
                telemetry=self.telemetry,
                bus=self.bus,
                faults=self.faults,
                lab=self.lab,
                token=self.token.value,
                state_dir=self.config.state_dir,
                commands=self.commands,
                routes=[
                    {"host": r.host, "path_prefix": r.path_prefix, "pool": r.pool}
                    for r in self.config.routes
                ],
                api_address=self.api_address,
                public_reads=public_reads,
                host_check=host_check.refusal,
                attempts=self.failed_attempts,
            )
        )
        options, tls = serve_options(self.config.dashboard, "dashboard")
        self.admin_tls += [tls] if tls else []
        try:
            self.dashboard_server = await web_serve(self.dashboard_app, host, port, **options)
        except OSError as error:
            await self.close_listeners()
            raise StartupError(_bind_problem(f"{listen} (dashboard)", error)) from None

    def _open_access_log(self) -> None:
        settings = self.config.access_log
        if settings.path is None:
            return
        try:
            self.access_log = AccessLog(self.loop, settings.path, settings.format)
        except OSError as error:
            raise StartupError(f"access log {settings.path}: {error.strerror}") from None

    async def _restore_state(self) -> None:
        try:
            self.store = open_store(self.config.store, self.config.state_dir)
            self.persistence = Persistence(self.registry, self.store)
            restored = await self.persistence.restore()
        except StoreError as error:
            raise StartupError(f"state: {error}") from None
        if restored:
            log.info("restored %d server(s) from %s", restored, self.store.description)
        self.registry.on_change = self.persistence.request_save
        self.registry.spawn(self.persistence.follow())
        await self.persistence.save()  # the config's servers are on record from the start

    def _prepare_state_dir(self) -> None:
        path = Path(self.config.state_dir)
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            mode = path.stat().st_mode & 0o777
        except OSError as error:
            raise StartupError(f"state dir {path}: {error.strerror}") from None
        if mode & 0o022:
            log.warning(
                "state dir %s is writable by others (mode %03o): whoever can write there "
                "decides where traffic goes; chmod 700 it",
                path,
                mode,
            )

    def _close_apps(self) -> None:
        for server, app in (
            (self.api_server, self.api_app),
            (self.dashboard_server, self.dashboard_app),
        ):
            if server is not None:
                server.close()
                if app is not None:
                    app.close_connections()

    async def close_listeners(self) -> None:
        self._close_apps()
        for listener in self.listeners:
            if listener.server is not None:
                listener.server.close()
        for listener in self.listeners:
            if listener.server is not None:
                await listener.server.wait_closed()

    async def run_until_stopped(self) -> bool:
        """Serve until SIGINT/SIGTERM (or `stop()`), then shut down gracefully (whether
        everything drained in time); SIGHUP reloads the config."""
        self._stopping = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.loop.add_signal_handler(signum, self.stop)
        self.loop.add_signal_handler(
            signal.SIGHUP, lambda: self.registry.spawn(self.reload_logged())
        )
        try:
            await self._stopping.wait()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self.loop.remove_signal_handler(signum)
        return await self.shutdown()

    def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def shutdown(self) -> bool:
        """Stop accepting, let what is in flight finish up to the drain timeout, then close
        the rest; whether everything finished in time."""
        log.info("shutting down: draining connections for up to %.1fs", self.config.timeouts.drain)
        self._close_apps()
        for listener in self.listeners:
            if listener.server is not None:
                listener.server.close()
        every = [listener.ctx for listener in (*self.listeners, *self.retired)]
        drained = await drain(self.loop, every, self.config.timeouts.drain)
        if self.workers is not None:
            drained = await self.workers.stop()
        self.telemetry.stop()
        if self.access_log is not None:
            self.access_log.close()
        await self.registry.close()
        if self.store is not None:
            await self.store.close()
        for record in self.registry.all_records():
            if record.server.connections is not None:
                record.server.connections.close()
        log.info("stopped")
        return drained


def _bound(server: asyncio.Server | None, configured: str) -> str:
    """The address a server actually bound (port 0 becomes a real port)."""
    if server is None or not server.sockets:
        return configured
    host, port = server.sockets[0].getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _sockets_of(listener: Listener) -> ListenerSockets:
    assert listener.server is not None
    ctx = listener.ctx
    return ListenerSockets(
        listener.key, listener.mode, listener.default_pool, ctx.settings, listener.server,
        ctx.rejected, listener.tls, listener.sni_routes,
    )  # fmt: skip


def _bind_problem(address: str, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return f"cannot listen on {address}: the port is already in use"
    if error.errno == errno.EACCES:
        return f"cannot listen on {address}: permission denied (ports below 1024 need root)"
    if error.errno == errno.EADDRNOTAVAIL or isinstance(error, socket.gaierror):
        return f"cannot listen on {address}: no such local address"
    return f"cannot listen on {address}: {error.strerror or error}"


def install_uvloop() -> None:
    from .eventloop import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def serve(
    config: Config,
    on_ready: Callable[[Balancer], None] | None = None,
    config_source: Callable[[], Config] | None = None,
) -> bool:
    """Run the balancer in this process until a signal stops it; whether everything in
    flight drained in time."""
    install_uvloop()

    async def main() -> bool:
        balancer = Balancer(config, asyncio.get_running_loop(), config_source)
        await balancer.start()
        if on_ready is not None:
            on_ready(balancer)
        return await balancer.run_until_stopped()

    return asyncio.run(main())
