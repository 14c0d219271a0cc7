"""Throughput of bunancer next to nginx and HAProxy, driven by wrk over loopback.

Two fast backends are started (the project's stub server, or nginx serving a fixed file),
then one front per proxy, each on its own 127.0.0.1 port and all balancing round-robin
over the same two backends with upstream keep-alive:

    direct     no front: wrk hits backend 1 itself, the ceiling for this machine
    bunancer   ``python -m bunancer serve`` (one process, one event loop)
    nginx      ``worker_processes 1``, upstream ``keepalive 2048`` (if nginx is on PATH)
    haproxy    ``nbthread 1``, ``http-reuse always``             (if haproxy is on PATH)

Every front is a single process with a single thread, so the comparison is one core each.
nginx and HAProxy are set to add what bunancer adds to every request by default (Host
kept, X-Forwarded-For/-Proto/-Host, Forwarded, Via), so every front sends the backends
the same head; ``--plain-peers`` measures them without (less work for them).
bunancer runs its mypyc build when ``bunancer compile`` made one that matches the source
(the title says which); the opt-in front ``bunancer-pure`` runs the Python source beside it.
wrk (``-t1 -c64 --latency``) drives each front in two modes: ``keepalive`` (wrk reuses
its 64 connections) and ``close`` (``Connection: close``: one TCP connection per request,
which adds accept/close work on the front; upstream connections stay kept alive). Fronts
are interleaved within every run, and their order rotates from run to run, so noise from
the machine lands on all of them alike; the table shows medians over the runs.

With ``--tls`` every front serves HTTPS: ``close`` is then a full handshake per request,
and a third mode, ``resumed``, has four ``openssl s_time -reuse`` clients connect again
and again with a resumed session, one request each (bench/resumed.py; wrk never resumes).

    python -m bench.throughput                       # 3 runs x 10 s, both modes
    python -m bench.throughput --runs 1 --duration 3 --fronts bunancer,haproxy
    python -m bench.throughput --backend-kind nginx --size 4096 --mode keepalive

Columns: median requests per second, median p50 and p99 latency (wrk's ``--latency``
percentiles), median CPU time of the front per request, and errors summed over all runs
(socket errors plus non-2xx responses). CPU per request is the front's utime + stime
(the whole process group, so nginx's worker counts too) read from ``/proc/<pid>/stat``
before and after each wrk run, divided by the requests wrk completed; for ``direct`` it
is the CPU of backend 1.

Reading the ratios:

- ``bunancer/nginx req/s`` and ``bunancer/haproxy req/s``: 1.0 means as fast as that
  proxy on one core; 0.5 means half its throughput. wrk, the backends and the front
  share the machine's cores, so a ratio is only meaningful next to the others of the
  same run and machine.
- ``bunancer/direct req/s``: the share of the bare backend's rate that survives the
  extra hop; it can never reach 1.0 and is bounded by the backends, not only by the front.
- ``bunancer CPU / haproxy CPU``: how many times more CPU bunancer spends per request
  than HAProxy. Less sensitive to core contention than req/s: this is the number to
  watch when optimising.

Raw results, with machine information, go to ``bench/results/throughput-<time>.json``.
Every process started here is stopped by its recorded PID (process group) on exit,
Ctrl-C or error. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from rich.console import Console
from rich.table import Table

from bench.harness import (
    HOST,
    ROOT,
    Child,
    Supervisor,
    free_port,
    group_cpu_seconds,
    machine_info,
    pin,
    rss_kib,
    split_cpus,
    wait_http_ok,
    wait_log_line,
)
from bench.resumed import ResumedResult, run_s_time
from bunancer import native
from bunancer.core.tls import INTERMEDIATE_CIPHERS
from bunancer.native import PURE_ENV

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FRONTS = ("direct", "bunancer", "nginx", "haproxy")
# bunancer with a setting changed, to measure what a feature costs (not run by default):
# `--fronts bunancer,bunancer-nostats,bunancer-accesslog`.
VARIANTS = {
    "bunancer-nostats": "[stats]\nenabled = false\n",
    "bunancer-accesslog": '[access_log]\npath = "{workdir}/access.log"\n',
    "bunancer-ewma": "",  # the default algorithm (peak-ewma) instead of round-robin
    "bunancer-pure": "",  # the Python source, not the mypyc build (BUNANCER_PURE_PYTHON)
    "bunancer-ref": "",  # another checkout's bunancer (--reference DIR): before vs after a change
    "bunancer-w1": "workers = 1\n",  # one data-plane worker beside the control process
    "bunancer-w2": "workers = 2\n",  # two workers (CPU: every process of the group counted)
}
# nginx and HAProxy balance round-robin here, so bunancer does too; `bunancer-ewma` shows
# what the default algorithm (peak-ewma: a clock read and two random draws per request) adds.
ALGORITHM = {
    "bunancer": "round-robin",
    "bunancer-pure": "round-robin",
    "bunancer-ref": "round-robin",
    "bunancer-w1": "round-robin",
    "bunancer-w2": "round-robin",
}
ENVIRONMENT: dict[str, dict[str, str]] = {"bunancer-pure": {PURE_ENV: "1"}}
# Not run by default either: the floor for a Python proxy (bench/bare_relay.py).
BARE = "bare"
ALL_FRONTS = (*FRONTS, BARE, *VARIANTS)
MODES = ("keepalive", "close", "resumed")  # resumed: TLS only (--tls), by bench/resumed.py
RESUMING_CLIENTS = 4  # s_time clients at once: each waits for its answer before reconnecting
INSTALL_HINT = "install them with: apt-get install wrk nginx haproxy"
EXIT_USAGE = 2


# Wide enough for the tables when piped (rich assumes 80 columns then).
console = Console(highlight=False, width=None if sys.stdout.isatty() else 110)


# -- backends and fronts -----------------------------------------------------------------


@dataclass
class Endpoint:
    """Something wrk can drive: a port, and the process group whose CPU we charge."""

    name: str
    port: int
    child: Child
    tls: bool = False  # wrk speaks https to it


@dataclass(frozen=True)
class TlsFiles:
    """One certificate every TLS front serves (--tls), made for this run by a test CA."""

    cert: Path
    key: Path
    combined: Path  # both in one file, as HAProxy takes them


def make_certificate(workdir: Path) -> TlsFiles:
    import trustme  # the bench extra's; only --tls needs it

    leaf = trustme.CA().issue_cert(HOST, "localhost")  # ECDSA P-256
    files = TlsFiles(workdir / "front.pem", workdir / "front.key", workdir / "front-all.pem")
    leaf.cert_chain_pems[0].write_to_path(files.cert)
    leaf.private_key_pem.write_to_path(files.key)
    leaf.private_key_and_cert_chain_pem.write_to_path(files.combined)
    return files


def nginx_common(workdir: Path) -> str:
    """Global nginx settings keeping every file nginx writes inside `workdir`."""
    temp_paths = "\n".join(
        f"    {kind}_temp_path {workdir / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        "worker_processes 1;\n"
        f"pid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'error.log'} warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        "    access_log off;\n"
        "    keepalive_requests 1000000;\n"
        f"{temp_paths}\n"
    )


def start_nginx(supervisor: Supervisor, name: str, http_block: str) -> Child:
    workdir = supervisor.workdir / name
    workdir.mkdir()
    # Run as root, nginx workers switch to an unprivileged user: let them traverse and read.
    for directory in (supervisor.workdir, workdir):
        directory.chmod(0o755)
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_common(workdir) + http_block + "}\n")
    argv = ["nginx", "-c", str(conf), "-p", f"{workdir}/", "-e", str(workdir / "error.log")]
    return supervisor.start(name, [*argv, "-g", "daemon off;"])


def start_stub_backend(supervisor: Supervisor, backend_id: str, size: int) -> Endpoint:
    argv = [sys.executable, "-m", "stubs.server", "--host", HOST, "--port", "0"]
    child = supervisor.start(backend_id, [*argv, "--id", backend_id, "--size", str(size)])
    port = int(wait_log_line(child, r"^PORT (\d+)$").group(1))
    return Endpoint(backend_id, port, child)


def start_nginx_backend(supervisor: Supervisor, backend_id: str, size: int) -> Endpoint:
    www = supervisor.workdir / f"www-{backend_id}"
    www.mkdir(mode=0o755)
    body = www / "body"
    body.write_bytes((b"x" * max(size - 1, 0) + b"\n") if size else b"")
    body.chmod(0o644)
    port = free_port()
    http_block = (
        "    open_file_cache max=16 inactive=60s;\n"
        "    etag off;\n"
        f"    server {{\n        listen {HOST}:{port} backlog=4096;\n"
        f"        add_header X-Stub-Id {backend_id};\n"
        f"        location / {{ root {www}; default_type text/plain; try_files /body =404; }}\n"
        "    }\n"
    )
    child = start_nginx(supervisor, backend_id, http_block)
    return Endpoint(backend_id, port, child)


def start_bunancer(
    supervisor: Supervisor,
    backends: list[Endpoint],
    name: str = "bunancer",
    tls: TlsFiles | None = None,
) -> Endpoint:
    servers = ", ".join(f'{{ address = "{HOST}:{b.port}" }}' for b in backends)
    config = supervisor.workdir / f"{name}.toml"
    extra = VARIANTS.get(name, "").format(workdir=supervisor.workdir)
    algorithm = f'algorithm = "{ALGORITHM[name]}"\n' if name in ALGORITHM else ""
    config.write_text(
        f'{extra}[api]\nlisten = "{HOST}:0"\n[dashboard]\nlisten = "{HOST}:0"\n'
        f'[[listeners]]\naddress = "{HOST}:0"\n'
        + (f'tls = {{ cert = "{tls.cert}", key = "{tls.key}" }}\n' if tls else "")
        + "\n"
        f"[pools.default]\n{algorithm}servers = [{servers}]\n"
    )
    state_dir = supervisor.workdir / f"{name}-state"
    argv = [sys.executable, "-m", "bunancer", "serve", "--config", str(config)]
    child = supervisor.start(name, [*argv, "--state-dir", str(state_dir)], ENVIRONMENT.get(name))
    ready = wait_log_line(child, r"ready: proxy listening on 127\.0\.0\.1:(\d+)")
    return Endpoint(name, int(ready.group(1)), child, tls is not None)


# What bunancer adds to every request by default (Host kept, X-Forwarded-*, Forwarded,
# Via), asked of the peers too: otherwise they would do less work per request than
# bunancer, and so would the backends parsing their shorter heads.
NGINX_FORWARDING = (
    "            proxy_set_header Host $http_host;\n"
    "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
    "            proxy_set_header X-Forwarded-Proto $scheme;\n"
    "            proxy_set_header X-Forwarded-Host $http_host;\n"
    "            proxy_set_header Forwarded\n"
    '                "for=$remote_addr;proto=$scheme;host=\\"$http_host\\"";\n'
    '            proxy_set_header Via "1.1 nginx";\n'
)
HAPROXY_FORWARDING = (
    "    option forwardfor\n"
    "    http-request set-header X-Forwarded-Proto http\n"
    "    http-request set-header X-Forwarded-Host %[req.hdr(host)]\n"
    '    http-request set-header Forwarded "for=%[src];proto=http;host=\\"%[req.hdr(host)]\\""\n'
    '    http-request add-header Via "1.1 haproxy"\n'
)


def nginx_buffers(size: int) -> str:
    """Response buffers that hold the whole answer in memory, as a user proxying answers of
    this size would set them: with the default (8 x 4 KiB) a 64 KiB answer is spilled to a
    temporary file on disk ("an upstream response is buffered to a temporary file")."""
    pieces = max(8, -(-(size + 4096) // 16384))
    return f"            proxy_buffer_size 16k;\n            proxy_buffers {pieces} 16k;\n"


def start_nginx_front(
    supervisor: Supervisor,
    backends: list[Endpoint],
    forwarding: bool = True,
    size: int = 0,
    tls: TlsFiles | None = None,
) -> Endpoint:
    port = free_port()
    servers = "".join(f"        server {HOST}:{b.port};\n" for b in backends)
    http_block = (
        "    upstream backends {\n"
        f"{servers}"
        # Idle upstream connections kept (for all servers): as many as bunancer keeps for
        # two (1,024 each), so no front opens connections per request at 1,000 clients.
        "        keepalive 2048;\n"
        "        keepalive_requests 1000000;\n"
        "    }\n"
        f"    server {{\n        listen {HOST}:{port}{' ssl' if tls else ''} backlog=4096;\n"
        f"{nginx_tls(tls) if tls else ''}"
        "        location / {\n"
        "            proxy_pass http://backends;\n"
        "            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";\n'
        f"{nginx_buffers(size)}"
        f"{NGINX_FORWARDING if forwarding else ''}"
        "        }\n"
        "    }\n"
    )
    return Endpoint("nginx", port, start_nginx(supervisor, "nginx", http_block), tls is not None)


# The TLS every front serves under --tls: bunancer's (core/tls.py), asked of the peers.
def nginx_tls(tls: TlsFiles) -> str:
    return (
        f"        ssl_certificate {tls.cert};\n        ssl_certificate_key {tls.key};\n"
        f"        ssl_protocols TLSv1.2 TLSv1.3;\n        ssl_ciphers {INTERMEDIATE_CIPHERS};\n"
        "        ssl_session_cache shared:SSL:10m;\n        ssl_session_tickets on;\n"
    )


def start_haproxy_front(
    supervisor: Supervisor,
    backends: list[Endpoint],
    forwarding: bool = True,
    tls: TlsFiles | None = None,
) -> Endpoint:
    port = free_port()
    servers = "".join(
        f"    server s{index} {HOST}:{b.port}\n" for index, b in enumerate(backends, 1)
    )
    conf = supervisor.workdir / "haproxy.cfg"
    conf.write_text(
        "global\n    nbthread 1\n    maxconn 4096\n"
        # By default HAProxy stops keeping idle server connections once 20% of its fds are
        # in use (1,643 here): at 1,000 clients it then connected for every second request.
        "    tune.pool-low-fd-ratio 60\n    tune.pool-high-fd-ratio 70\n"
        f"    stats socket {haproxy_socket(supervisor)}\n\n"
        "defaults\n    mode http\n    option http-keep-alive\n    http-reuse always\n"
        "    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n"
        "    timeout http-keep-alive 30s\n\n"
        f"frontend front\n    bind {HOST}:{port}{haproxy_tls(tls) if tls else ''}\n"
        "    default_backend backends\n"
        f"{haproxy_forwarding(tls is not None) if forwarding else ''}\n"
        f"backend backends\n    balance roundrobin\n{servers}"
    )
    child = supervisor.start("haproxy", ["haproxy", "-db", "-f", str(conf)])
    return Endpoint("haproxy", port, child, tls is not None)


def haproxy_tls(tls: TlsFiles) -> str:
    return (
        f" ssl crt {tls.combined} alpn http/1.1 ssl-min-ver TLSv1.2 ciphers {INTERMEDIATE_CIPHERS}"
    )


def haproxy_forwarding(tls: bool) -> str:
    return (
        HAPROXY_FORWARDING.replace("proto=http", "proto=https").replace(
            "X-Forwarded-Proto http", "X-Forwarded-Proto https"
        )
        if tls
        else HAPROXY_FORWARDING
    )


def haproxy_socket(supervisor: Supervisor) -> Path:
    return supervisor.workdir / "haproxy.sock"


def haproxy_stats(supervisor: Supervisor) -> dict[str, str] | None:
    """`show info` of the HAProxy front (connections, limits, errors), or None without one."""
    path = haproxy_socket(supervisor)
    if not path.exists():
        return None
    info: dict[str, str] = {}
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(b"show info\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        for line in data.decode(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep:
                info[key.strip()] = value.strip()
    return info


def nginx_warnings(supervisor: Supervisor) -> dict[str, int]:
    """Warnings and errors in the nginx front's error log, counted by message."""
    counts: dict[str, int] = {}
    path = supervisor.workdir / "nginx" / "error.log"
    if not path.exists():
        return counts
    for line in path.read_text(errors="replace").splitlines():
        match = re.search(r"\[(warn|error|crit|alert|emerg)\] [\d#]+: (?:\*\d+ )?([^,]+)", line)
        if match:
            message = re.sub(r"/\S+", "<path>", match.group(2).strip())  # one key per kind
            key = f"{match.group(1)}: {message}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def start_bare_front(supervisor: Supervisor, backends: list[Endpoint]) -> Endpoint:
    argv = [sys.executable, "-m", "bench.bare_relay", "--port", "0"]
    for backend in backends:
        argv += ["--backend", f"{HOST}:{backend.port}"]
    child = supervisor.start(BARE, argv)
    return Endpoint(BARE, int(wait_log_line(child, r"^PORT (\d+)$").group(1)), child)


def start_backends(supervisor: Supervisor, kind: str, size: int) -> list[Endpoint]:
    start = start_stub_backend if kind == "stub" else start_nginx_backend
    backends = [start(supervisor, backend_id, size) for backend_id in ("s1", "s2")]
    for backend in backends:
        wait_http_ok(backend.child, backend.port)
    return backends


def start_fronts(
    supervisor: Supervisor,
    names: list[str],
    backends: list[Endpoint],
    peer_forwarding: bool = True,
    size: int = 0,
    tls: TlsFiles | None = None,
) -> dict[str, Endpoint]:
    """Start the named fronts; nginx and HAProxy add bunancer's forwarding headers
    unless `peer_forwarding` is off (then they pass the client's head through as is).
    With `tls`, bunancer, nginx and HAProxy serve HTTPS with that certificate."""
    starters: dict[str, Callable[[Supervisor, list[Endpoint]], Endpoint]] = {
        "bunancer": lambda sup, ends: start_bunancer(sup, ends, tls=tls),
        "nginx": lambda sup, ends: start_nginx_front(sup, ends, peer_forwarding, size, tls),
        "haproxy": lambda sup, ends: start_haproxy_front(sup, ends, peer_forwarding, tls),
        BARE: start_bare_front,
    }
    fronts: dict[str, Endpoint] = {}
    for name in names:
        if name == "direct":
            fronts[name] = Endpoint("direct", backends[0].port, backends[0].child)
        elif name in VARIANTS:
            fronts[name] = start_bunancer(supervisor, backends, name)
        else:
            fronts[name] = starters[name](supervisor, backends)
    for front in fronts.values():
        wait_http_ok(front.child, front.port, tls=front.tls)
    return fronts


def place(
    placement: tuple[set[int], set[int]] | None,
    backends: list[Endpoint],
    fronts: dict[str, Endpoint],
) -> None:
    """The fronts (one is loaded at a time) on a core of their own; backends and wrk on
    the rest, so a front's rate is not capped by sharing its core with them."""
    if placement is None:
        return
    front_cpus, other_cpus = placement
    for backend in backends:
        pin(backend.child, other_cpus)
    for name, front in fronts.items():
        pin(front.child, other_cpus if name == "direct" else front_cpus)


# -- wrk -------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    socket_errors: dict[str, int]
    non_2xx: int

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx


LATENCY_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_latency_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * LATENCY_UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk output lacks {pattern!r}:\n{output}")
        return match

    socket_errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if errors is not None:
        socket_errors = dict(zip(socket_errors, map(int, errors.groups()), strict=True))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests=int(find(r"^\s*(\d+) requests in ").group(1)),
        rps=float(find(r"^Requests/sec:\s*([\d.]+)").group(1)),
        p50_ms=parse_latency_ms(find(r"^\s*50%\s+(\S+)").group(1)),
        p99_ms=parse_latency_ms(find(r"^\s*99%\s+(\S+)").group(1)),
        socket_errors=socket_errors,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def run_wrk(
    port: int,
    mode: str,
    duration: float,
    connections: int,
    cpus: set[int] | None = None,
    tls: bool = False,
) -> WrkResult:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    if mode == "close":
        argv += ["-H", "Connection: close"]
    argv.append(f"{'https' if tls else 'http'}://{HOST}:{port}/")
    completed = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=False,
        preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
    )
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr.strip()}")
    return parse_wrk(completed.stdout)


# -- measuring ------------------------------------------------------------------------------


@dataclass
class Sample:
    run: int
    mode: str
    front: str
    requests: int
    rps: float
    p50_ms: float | None  # None: the client measures no latency (s_time, resumed mode)
    p99_ms: float | None
    cpu_seconds: float
    cpu_us_per_request: float | None
    socket_errors: dict[str, int]
    non_2xx: int
    errors: int

    @property
    def clean(self) -> bool:
        """No socket error and no non-2xx answer: a rate that counts only what succeeded."""
        return self.errors == 0


def measure(endpoint: Endpoint, run: int, mode: str, args: argparse.Namespace) -> Sample:
    cpu_before = group_cpu_seconds(endpoint.child.pid)
    cpus = getattr(args, "wrk_cpus", None)
    result: WrkResult | ResumedResult
    if mode == "resumed":
        result = run_s_time(endpoint.port, args.duration, RESUMING_CLIENTS, cpus)
    else:
        result = run_wrk(endpoint.port, mode, args.duration, args.connections, cpus, endpoint.tls)
    cpu = group_cpu_seconds(endpoint.child.pid) - cpu_before
    return Sample(
        run=run,
        mode=mode,
        front=endpoint.name,
        requests=result.requests,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        cpu_seconds=cpu,
        cpu_us_per_request=cpu / result.requests * 1e6 if result.requests else None,
        socket_errors=result.socket_errors,
        non_2xx=result.non_2xx,
        errors=result.errors,
    )


def warm_up(fronts: dict[str, Endpoint], seconds: float, connections: int) -> None:
    """A short unrecorded wrk run per front: upstream pools filled, caches warm."""
    if seconds <= 0:
        return
    console.print(f"warming up each front for {seconds:g}s")
    for front in fronts.values():
        run_wrk(front.port, "keepalive", seconds, connections, tls=front.tls)


def rotated(items: list[str], by: int) -> list[str]:
    shift = by % len(items)
    return items[shift:] + items[:shift]


def run_all(
    fronts: dict[str, Endpoint], modes: list[str], args: argparse.Namespace
) -> list[Sample]:
    samples: list[Sample] = []
    for run in range(1, args.runs + 1):
        for mode in modes:
            for name in rotated(list(fronts), run - 1):
                sample = measure(fronts[name], run, mode, args)
                samples.append(sample)
                console.print(
                    f"run {run}/{args.runs} {mode:<9} {name:<8} {sample.rps:>10,.0f} req/s  "
                    f"p99 {format_ms(sample.p99_ms):>7} ms  "
                    f"cpu {format_cpu(sample.cpu_us_per_request)} µs/req  errors {sample.errors}"
                )
    return samples


# -- report ---------------------------------------------------------------------------------


@dataclass
class Summary:
    """Medians over a front's clean samples (no errors); samples with errors are counted
    in `left_out` and not used, so an error page served fast never inflates a rate."""

    mode: str
    front: str
    rps: float
    rps_min: float
    rps_max: float
    p50_ms: float | None
    p99_ms: float | None
    cpu_us_per_request: float | None
    errors: int
    runs: int
    left_out: int = 0

    @property
    def usable(self) -> bool:
        return self.runs > self.left_out


def summarise(samples: list[Sample]) -> list[Summary]:
    groups: dict[tuple[str, str], list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.mode, sample.front), []).append(sample)
    summaries = []
    for (mode, front), group in groups.items():
        clean = [s for s in group if s.clean] or group  # all had errors: shown, no ratio
        cpu = [s.cpu_us_per_request for s in clean if s.cpu_us_per_request is not None]
        rps = [s.rps for s in clean]
        summaries.append(
            Summary(
                mode=mode,
                front=front,
                rps=statistics.median(rps),
                rps_min=min(rps),
                rps_max=max(rps),
                p50_ms=median_or_none([s.p50_ms for s in clean]),
                p99_ms=median_or_none([s.p99_ms for s in clean]),
                cpu_us_per_request=statistics.median(cpu) if cpu else None,
                errors=sum(s.errors for s in group),
                runs=len(group),
                left_out=sum(1 for s in group if not s.clean),
            )
        )
    order = {name: index for index, name in enumerate(ALL_FRONTS)}
    summaries.sort(key=lambda s: (MODES.index(s.mode), order[s.front]))
    return summaries


def median_or_none(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def format_cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def ratios(summaries: list[Summary]) -> list[dict[str, Any]]:
    """bunancer against each other front, per mode; missing fronts are left out."""
    rows: list[dict[str, Any]] = []
    by_key = {(s.mode, s.front): s for s in summaries if s.usable}
    for mode in MODES:
        ours = by_key.get((mode, "bunancer"))
        if ours is None:
            continue
        # CPU per request first: the headline, least sensitive to how cores are shared.
        for front, peer in (
            ("bunancer", "nginx"),
            ("bunancer", "haproxy"),
            ("bunancer", BARE),
            (BARE, "haproxy"),
            ("bunancer", "bunancer-ref"),
        ):
            mine, theirs = by_key.get((mode, front)), by_key.get((mode, peer))
            if mine and theirs and mine.cpu_us_per_request and theirs.cpu_us_per_request:
                rows.append(
                    {
                        "mode": mode,
                        "ratio": f"{front} CPU µs/req ÷ {peer} CPU µs/req",
                        "value": mine.cpu_us_per_request / theirs.cpu_us_per_request,
                    }
                )
        for other in ("nginx", "haproxy", "direct", BARE):
            theirs = by_key.get((mode, other))
            if theirs is not None and theirs.rps > 0:
                rows.append(
                    {
                        "mode": mode,
                        "ratio": f"bunancer/{other} req/s",
                        "value": ours.rps / theirs.rps,
                    }
                )
        for variant in VARIANTS:
            theirs = by_key.get((mode, variant))
            if theirs is not None and ours.rps > 0:
                rows.append(
                    {
                        "mode": mode,
                        "ratio": f"{variant}/bunancer req/s",
                        "value": theirs.rps / ours.rps,
                    }
                )
    return rows


def results_table(summaries: list[Summary], args: argparse.Namespace) -> Table:
    title = (
        f"throughput: {args.runs} run(s) x {args.duration:g}s, {args.connections} connections, "
        f"{args.size} B bodies, {args.backend_kind} backends (medians); "
        f"bunancer data plane {args.data_plane}; "
        f"peers {'without' if args.plain_peers else 'with'} forwarding headers"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("mode")
    table.add_column("front")
    for heading in ("CPU µs/req", "req/s", "req/s min-max", "p50 ms", "p99 ms", "errors"):
        table.add_column(heading, justify="right")
    previous_mode = None
    for s in summaries:
        if previous_mode is not None and s.mode != previous_mode:
            table.add_section()
        previous_mode = s.mode
        flagged = f" ({s.left_out}/{s.runs} runs left out)" if s.left_out else ""
        if not s.usable:
            flagged = " (every run had errors: no ratio)"
        table.add_row(
            s.mode,
            s.front,
            format_cpu(s.cpu_us_per_request),
            f"{s.rps:,.0f}",
            f"{s.rps_min:,.0f}-{s.rps_max:,.0f}",
            format_ms(s.p50_ms),
            format_ms(s.p99_ms),
            f"{s.errors}{flagged}",
        )
    return table


def ratios_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="ratios (medians)", title_justify="left")
    table.add_column("mode")
    table.add_column("ratio")
    table.add_column("value", justify="right")
    for row in rows:
        table.add_row(row["mode"], row["ratio"], f"{row['value']:.2f}")
    return table


# -- JSON ---------------------------------------------------------------------------------


def write_json(report: dict[str, Any], started: datetime) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"throughput-{started:%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


# -- command line ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description="Requests/s, latency and CPU per request of bunancer, nginx and HAProxy.",
    )
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (default 3)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (-c)")
    parser.add_argument("--size", type=int, default=100, help="response body bytes")
    parser.add_argument(
        "--mode",
        choices=[*MODES, "both"],
        default="both",
        help="both (the default): keepalive and close, and resumed with --tls",
    )
    parser.add_argument(
        "--fronts",
        default=",".join(FRONTS),
        help=f"comma list out of {','.join(FRONTS)} (default: all available)",
    )
    parser.add_argument(
        "--backend-kind",
        choices=["stub", "nginx"],
        default="nginx",
        help="nginx serving a file (default: never the bottleneck) or the Python stub",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="leave every process on every core (default: the front under test on a core "
        "of its own, wrk and the backends on the others, where the machine has two or more)",
    )
    parser.add_argument(
        "--plain-peers",
        action="store_true",
        help="nginx and HAProxy without the forwarding headers bunancer adds (less work)",
    )
    parser.add_argument(
        "--warmup", type=float, default=1, help="unrecorded seconds per front first (0: none)"
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="the fronts serve HTTPS (one certificate, TLS 1.2-1.3, the same ciphers); "
        "close mode is then a full handshake per request, and resumed mode (openssl "
        "s_time -reuse) a resumed one",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        metavar="DIR",
        help="a checkout of another commit (its data plane compiled there): adds the front "
        "bunancer-ref, that checkout's bunancer, to compare a change before and after",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.duration <= 0 or args.connections < 1 or args.size < 0:
        parser.error("--runs, --duration and --connections must be positive, --size >= 0")
    if args.reference is not None:
        if not (args.reference / "bunancer" / "__init__.py").is_file():
            parser.error(f"--reference {args.reference}: no bunancer package in it")
        # Found before this checkout's editable install: PYTHONPATH comes first on sys.path.
        ENVIRONMENT["bunancer-ref"] = {"PYTHONPATH": str(args.reference.resolve())}
        if "bunancer-ref" not in args.fronts.split(","):
            args.fronts += ",bunancer-ref"
    elif "bunancer-ref" in args.fronts.split(","):
        parser.error("the front bunancer-ref needs --reference DIR")
    if args.mode == "resumed" and not args.tls:
        parser.error("--mode resumed resumes TLS sessions: it needs --tls")
    if args.tls:  # the backends speak plain HTTP: no `direct` peer to compare with
        args.fronts = ",".join(
            f for f in args.fronts.split(",") if f in ("bunancer", "nginx", "haproxy")
        )
    return args


def choose_fronts(requested: str) -> list[str]:
    """The requested fronts in canonical order, minus proxies that are not installed."""
    names = [name.strip() for name in requested.split(",") if name.strip()]
    unknown = sorted(set(names) - set(ALL_FRONTS))
    if unknown or not names:
        choices = ",".join(ALL_FRONTS)
        fail(f"unknown front(s) {', '.join(unknown) or '(none)'}; choose from {choices}")
    chosen = []
    for name in ALL_FRONTS:
        if name not in names:
            continue
        if name in ("nginx", "haproxy") and shutil.which(name) is None:
            console.print(f"[yellow]skipping {name}: not on PATH ({INSTALL_HINT})[/]")
            continue
        chosen.append(name)
    if not chosen:
        fail("no front left to measure")
    return chosen


def chosen_modes(args: argparse.Namespace) -> list[str]:
    if args.mode != "both":
        return [args.mode]
    return [mode for mode in MODES if args.tls or mode != "resumed"]


def fail(message: str) -> NoReturn:
    console.print(f"[red]bench.throughput: {message}[/]")
    sys.exit(EXIT_USAGE)


def check_tools(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        fail(f"wrk is not on PATH; {INSTALL_HINT}")
    if args.tls and shutil.which("openssl") is None:
        fail("--tls needs the openssl command (s_time resumes sessions): apt-get install openssl")
    if args.backend_kind == "nginx" and shutil.which("nginx") is None:
        fail(f"--backend-kind nginx needs nginx on PATH; {INSTALL_HINT}")


def raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so the `finally` blocks stop every child."""
    console.print("[yellow]terminated[/]")
    raise SystemExit(128 + signum)


def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start everything, measure, stop everything; the raw report."""
    supervisor = Supervisor(workdir)
    try:
        backends = start_backends(supervisor, args.backend_kind, args.size)
        tls = make_certificate(workdir) if args.tls else None
        fronts = start_fronts(
            supervisor, args.front_names, backends, not args.plain_peers, args.size, tls
        )
        place(args.placement, backends, fronts)
        ports = ", ".join(f"{name} :{front.port}" for name, front in fronts.items())
        console.print(f"backends :{backends[0].port} :{backends[1].port}; fronts {ports}")
        warm_up(fronts, args.warmup, args.connections)
        samples = run_all(fronts, args.modes, args)
        rss = rss_kib(fronts["bunancer"].child.pid) if "bunancer" in fronts else None
        return {
            "samples": [asdict(sample) for sample in samples],
            "bunancer_rss_kib": rss,
            "ports": {name: front.port for name, front in fronts.items()},
            "peer_logs": {
                "nginx_warnings": nginx_warnings(supervisor),
                "haproxy_info": haproxy_stats(supervisor),
            },
        }
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a 2nd Ctrl-C: still clean up
        try:
            supervisor.stop_all()
        finally:
            signal.signal(signal.SIGINT, previous)
        left = supervisor.leftovers()
        if left:
            console.print(f"[red]processes still alive after cleanup: {left}[/]")


def stub_close_note(samples: list[Sample], backend_kind: str) -> str | None:
    """Explain read errors of `direct` in close mode with stub backends, when there are any."""
    read_errors = sum(
        s.socket_errors["read"] for s in samples if s.front == "direct" and s.mode == "close"
    )
    if backend_kind != "stub" or not read_errors:
        return None
    return (
        f"note: direct/close has {read_errors:,} read errors because the stub closes the "
        "connection without a 'Connection: close' header, so wrk sees each EOF as a read "
        "error; the responses before it were complete and are counted."
    )


def print_report(
    summaries: list[Summary],
    ratio_rows: list[dict[str, Any]],
    raw: dict[str, Any],
    args: argparse.Namespace,
) -> None:
    console.print(results_table(summaries, args))
    note = stub_close_note([Sample(**sample) for sample in raw["samples"]], args.backend_kind)
    if note:
        console.print(note)
    console.print(ratios_table(ratio_rows))
    rss = raw["bunancer_rss_kib"]
    if rss:
        console.print(
            f"bunancer RSS after the runs: {rss['VmRSS'] / 1024:.1f} MiB "
            f"(peak {rss['VmHWM'] / 1024:.1f} MiB)"
        )


def build_report(
    started: datetime,
    args: argparse.Namespace,
    summaries: list[Summary],
    ratio_rows: list[dict[str, Any]],
    raw: dict[str, Any],
) -> dict[str, Any]:
    settings = {
        key: getattr(args, key)
        for key in (
            "runs",
            "duration",
            "connections",
            "size",
            "backend_kind",
            "warmup",
            "plain_peers",
            "no_pin",
            "tls",
        )
    }
    return {
        "date": started.isoformat(),
        "settings": settings | {"modes": args.modes, "fronts": args.front_names},
        "machine": machine_info() | {"data_plane": args.data_plane},
        "summary": [asdict(summary) for summary in summaries],
        "ratios": ratio_rows,
        **raw,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_tools(args)
    args.front_names = choose_fronts(args.fronts)
    args.modes = chosen_modes(args)
    args.data_plane = native.status()  # as the fronts start: compiled, or why not
    args.placement = None if args.no_pin else split_cpus()
    args.wrk_cpus = args.placement[1] if args.placement else None
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    started = datetime.now(UTC)
    try:
        with tempfile.TemporaryDirectory(prefix="bunancer-bench-") as tmp:
            raw = benchmark(args, Path(tmp))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    summaries = summarise([Sample(**sample) for sample in raw["samples"]])
    ratio_rows = ratios(summaries)
    print_report(summaries, ratio_rows, raw, args)
    path = write_json(build_report(started, args, summaries, ratio_rows, raw), started)
    console.print(f"raw results: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
