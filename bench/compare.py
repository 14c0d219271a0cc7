"""bunancer beside direct, nginx and HAProxy over a matrix of workloads, with a chart.

    python -m bench.compare                                  # the full matrix (about 20 min)
    python -m bench.compare --runs 1 --duration 2 --backends stub --sizes 100 --connections 64
    python -m bench.compare --fronts bunancer,haproxy --modes keepalive

The matrix: backends (the project's stub server, or nginx serving a file) x response sizes
(100 B and 64 KiB) x wrk connections (64 and 1,000) x client connection handling
(``keepalive``, and ``close``: one TCP connection per request) x fronts (``direct``: wrk
against one backend, the ceiling; ``bunancer``; ``nginx``; ``haproxy`` when installed).
Every front is one process with one thread balancing round-robin-like over the same two
backends with upstream keep-alive, started and measured by bench/throughput.py's code
(``wrk -t1 -cN -dDs --latency``, CPU from /proc of the front's process group); per
backend kind and size, backends and fronts are started once and the fronts interleaved,
their order rotating between runs. Tables show medians over ``--runs``.

Output: a table of requests/s, p50/p99 latency, the front's CPU microseconds per request
and errors; a table of ratios (bunancer ÷ each peer, req/s and CPU); raw samples, medians,
ratios, the open-files limit and machine information in
``bench/results/compare-<time>.json``; bars of requests/s and CPU µs/request per workload
in ``bench/results/compare-<time>.png``.

1,000 connections need file descriptors: wrk, the front (client side plus upstream) and
the backends each hold up to one per connection. The soft ``ulimit -n`` is raised toward
the hard one when needed (children inherit it); a connection count the hard limit cannot
carry is skipped with a note. Every process started here is stopped by its process group;
all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import sys
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from bench import throughput as tp
from bench.harness import Supervisor, machine_info, split_cpus

RESULTS_DIR = tp.RESULTS_DIR
SIZES = (100, 64 * 1024)
CONNECTIONS = (64, 1000)
BACKENDS = ("stub", "nginx")
FD_PER_CONNECTION = 2  # the front holds a client and (up to) an upstream socket each
FD_MARGIN = 256
FRONT_COLOURS = {
    "direct": "#9e9e9e",
    "bunancer": "#1f77b4",
    "nginx": "#2ca02c",
    "haproxy": "#d62728",
}


@dataclass
class Point(tp.Summary):
    """One front's medians (throughput's Summary) for one workload."""

    backend: str = ""
    size: int = 0
    connections: int = 0


# -- open files --------------------------------------------------------------------------------


def descriptors_needed(connections: int) -> int:
    return connections * FD_PER_CONNECTION + FD_MARGIN


def ensure_open_files(connections: list[int]) -> tuple[list[int], dict[str, int]]:
    """Raise the soft RLIMIT_NOFILE as far as needed and allowed; the counts that fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = descriptors_needed(max(connections))
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    fitting = [c for c in connections if descriptors_needed(c) <= soft]
    for skipped in sorted(set(connections) - set(fitting)):
        tp.console.print(
            f"[yellow]skipping {skipped} connections: they need about "
            f"{descriptors_needed(skipped)} open files, ulimit -n allows {soft} "
            f"(hard limit {hard}); raise it with ulimit -n[/]"
        )
    return fitting, {"soft": soft, "hard": hard, "needed": need}


# -- measuring -------------------------------------------------------------------------------


def measure_workload(
    backend: str, size: int, args: argparse.Namespace, workdir: Path
) -> tuple[list[tuple[int, tp.Sample]], dict[str, Any]]:
    """Start backends and fronts for one backend kind and size; samples by connections, and
    what the peers logged (nginx's warnings, HAProxy's `show info`) to explain them."""
    supervisor = Supervisor(workdir)
    samples: list[tuple[int, tp.Sample]] = []
    peer_logs: dict[str, Any] = {}
    try:
        backends = tp.start_backends(supervisor, backend, size)
        fronts = tp.start_fronts(supervisor, args.front_names, backends, size=size)
        tp.place(args.placement, backends, fronts)
        tp.console.print(
            f"[bold]{backend} backends, {size} B[/]: "
            + ", ".join(f"{name} :{front.port}" for name, front in fronts.items())
        )
        tp.warm_up(fronts, args.warmup, min(args.connection_counts))
        for run in range(1, args.runs + 1):
            for connections in args.connection_counts:
                settings = argparse.Namespace(
                    duration=args.duration, connections=connections, wrk_cpus=args.wrk_cpus
                )
                for mode in args.modes:
                    for name in tp.rotated(list(fronts), run - 1):
                        sample = tp.measure(fronts[name], run, mode, settings)
                        samples.append((connections, sample))
                        tp.console.print(
                            f"run {run}/{args.runs} c{connections:<5} {mode:<9} {name:<8} "
                            f"{sample.rps:>9,.0f} req/s  p99 {sample.p99_ms:8.2f} ms  "
                            f"cpu {tp.format_cpu(sample.cpu_us_per_request)} µs/req  "
                            f"errors {sample.errors}"
                        )
        peer_logs = {
            "nginx_warnings": tp.nginx_warnings(supervisor),
            "haproxy_info": tp.haproxy_stats(supervisor),
        }
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            supervisor.stop_all()
        finally:
            signal.signal(signal.SIGINT, previous)
        left = supervisor.leftovers()
        if left:
            tp.console.print(f"[red]processes still alive after cleanup: {left}[/]")
    return samples, peer_logs


def points_of(
    backend: str, size: int, samples: list[tuple[int, tp.Sample]]
) -> tuple[list[Point], list[dict[str, Any]]]:
    """Medians per (connections, mode, front) and bunancer's ratios, via throughput's code."""
    points: list[Point] = []
    ratio_rows: list[dict[str, Any]] = []
    for connections in sorted({c for c, _ in samples}):
        group = [sample for c, sample in samples if c == connections]
        summaries = tp.summarise(group)
        workload = {"backend": backend, "size": size, "connections": connections}
        points += [Point(**asdict(summary), **workload) for summary in summaries]
        for row in tp.ratios(summaries):
            ratio_rows.append({"backend": backend, "size": size, "connections": connections, **row})
        note = tp.stub_close_note(group, backend)
        if note:
            tp.console.print(f"{backend}/{size} B/c{connections}: {note}")
    return points, ratio_rows


# -- report ------------------------------------------------------------------------------------


def size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def results_table(points: list[Point], args: argparse.Namespace) -> Table:
    table = Table(
        title=(
            f"compare: {args.runs} run(s) x {args.duration:g}s per cell, wrk -t1 (medians); "
            "CPU = the front's µs per request"
        ),
        title_justify="left",
    )
    for heading in ("backend", "size", "conns", "mode", "front"):
        table.add_column(heading)
    for heading in ("req/s", "p50 ms", "p99 ms", "CPU µs/req", "errors", "÷ bunancer"):
        table.add_column(heading, justify="right")
    previous = None
    ours = {
        (p.backend, p.size, p.connections, p.mode): p.rps for p in points if p.front == "bunancer"
    }
    for p in points:
        key = (p.backend, p.size, p.connections, p.mode)
        if previous is not None and key != previous:
            table.add_section()
        previous = key
        mine = ours.get(key)
        table.add_row(
            p.backend,
            size_label(p.size),
            str(p.connections),
            p.mode,
            p.front,
            f"{p.rps:,.0f}",
            f"{p.p50_ms:.2f}",
            f"{p.p99_ms:.2f}",
            tp.format_cpu(p.cpu_us_per_request),
            str(p.errors),
            f"{p.rps / mine:.2f}" if mine else "-",
        )
    return table


def ratio_pivot(ratio_rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per workload and mode, one column per ratio kind."""
    kinds: list[str] = []
    rows: dict[tuple[str, int, int, str], dict[str, float]] = {}
    for row in ratio_rows:
        if row["ratio"] not in kinds:
            kinds.append(row["ratio"])
        key = (row["backend"], row["size"], row["connections"], row["mode"])
        rows.setdefault(key, {})[row["ratio"]] = row["value"]
    body = [
        [backend, size_label(size), str(connections), mode]
        + [f"{values[kind]:.2f}" if kind in values else "-" for kind in kinds]
        for (backend, size, connections, mode), values in rows.items()
    ]
    return kinds, body


def ratios_table(ratio_rows: list[dict[str, Any]]) -> Table:
    kinds, body = ratio_pivot(ratio_rows)
    table = Table(
        title="ratios (medians): above 1 is bunancer ahead, except CPU", title_justify="left"
    )
    for heading in ("backend", "size", "conns", "mode"):
        table.add_column(heading)
    for kind in kinds:
        table.add_column(kind.replace(" CPU µs/req ÷ ", " CPU ÷ "), justify="right")
    for row in body:
        table.add_row(*row)
    return table


def plot(points: list[Point], path: Path) -> Path:
    """Bars of req/s and CPU µs/request per workload; one row of charts per backend/size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(p.backend, p.size) for p in points}, key=lambda k: (k[0] != "stub", k[1]))
    fronts = [f for f in tp.ALL_FRONTS if any(p.front == f for p in points)]
    figure, axes = plt.subplots(
        len(panels), 2, figsize=(13, 3.3 * len(panels)), squeeze=False, constrained_layout=True
    )
    width = 0.8 / max(len(fronts), 1)
    for row, (backend, size) in enumerate(panels):
        mine = [p for p in points if (p.backend, p.size) == (backend, size)]
        groups = sorted(
            {(p.mode, p.connections) for p in mine}, key=lambda g: (g[0] != "keepalive", g[1])
        )
        labels = [f"{mode}\n{connections} conns" for mode, connections in groups]
        for column, (attribute, unit) in enumerate(
            (("rps", "requests/s"), ("cpu_us_per_request", "front CPU µs/request"))
        ):
            ax = axes[row][column]
            for index, front in enumerate(fronts):
                values = []
                for mode, connections in groups:
                    match = [
                        p
                        for p in mine
                        if (p.mode, p.connections, p.front) == (mode, connections, front)
                    ]
                    value = getattr(match[0], attribute) if match else None
                    values.append(value or 0.0)
                positions = [
                    g + (index - (len(fronts) - 1) / 2) * width for g in range(len(groups))
                ]
                ax.bar(positions, values, width, label=front, color=FRONT_COLOURS.get(front))
            ax.set_xticks(range(len(groups)), labels)
            ax.set_ylabel(unit)
            ax.set_title(f"{backend} backends, {size_label(size)}: {unit}", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
            if row == 0 and column == 0:
                ax.legend(fontsize=8)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# -- command line ------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas: {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers: {text!r}")
    return values


def word_list(choices: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        values = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [value for value in values if value not in choices]
        if unknown or not values:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)}: {text!r}")
        return values

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description="bunancer beside direct, nginx and HAProxy over sizes, connections and modes.",
    )
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (default 3)")
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run (5)")
    parser.add_argument("--sizes", type=int_list, default=list(SIZES), help="bytes: 100,65536")
    parser.add_argument(
        "--connections", type=int_list, default=list(CONNECTIONS), help="wrk -c: 64,1000"
    )
    parser.add_argument("--modes", type=word_list(tp.MODES), default=list(tp.MODES))
    parser.add_argument(
        "--backends",
        type=word_list(BACKENDS),
        default=["nginx"],
        help="nginx (default: never the bottleneck), stub (the Python stub server), or both",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="no core of its own for the front under test"
    )
    parser.add_argument("--fronts", default=",".join(tp.FRONTS), help="default: all installed")
    parser.add_argument("--warmup", type=float, default=1, help="unrecorded seconds per front")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.duration <= 0:
        parser.error("--runs and --duration must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if "nginx" in args.backends:
        tp.check_tools(argparse.Namespace(backend_kind="nginx"))
    tp.check_tools(argparse.Namespace(backend_kind="stub"))
    args.front_names = tp.choose_fronts(args.fronts)
    args.placement = None if args.no_pin else split_cpus()
    args.wrk_cpus = args.placement[1] if args.placement else None
    args.connection_counts, limits = ensure_open_files(args.connections)
    if not args.connection_counts:
        tp.fail("no connection count fits the open-files limit")
    tp.console.print(
        f"ulimit -n: soft {limits['soft']}, hard {limits['hard']} "
        f"({max(args.connections)} connections need about {limits['needed']})"
    )
    signal.signal(signal.SIGTERM, tp.raise_on_sigterm)
    started = datetime.now(UTC)
    points: list[Point] = []
    ratio_rows: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    peer_logs: dict[str, Any] = {}
    try:
        for backend in args.backends:
            for size in args.sizes:
                with tempfile.TemporaryDirectory(prefix="bunancer-compare-") as tmp:
                    samples, logs = measure_workload(backend, size, args, Path(tmp))
                peer_logs[f"{backend}/{size}"] = logs
                for warning, count in logs["nginx_warnings"].items():
                    tp.console.print(f"[yellow]nginx ({backend}, {size} B): {count} x {warning}[/]")
                raw += [
                    {"backend": backend, "size": size, "connections": c, **asdict(s)}
                    for c, s in samples
                ]
                found, rows = points_of(backend, size, samples)
                points += found
                ratio_rows += rows
    except KeyboardInterrupt:
        tp.console.print("[yellow]interrupted[/]")
        sys.exit(130)
    tp.console.print(results_table(points, args))
    tp.console.print(ratios_table(ratio_rows))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = args.results_dir / f"compare-{started:%Y%m%d-%H%M%S}"
    chart = plot(points, stem.with_suffix(".png"))
    report = {
        "date": started.isoformat(),
        "settings": {
            "runs": args.runs,
            "duration": args.duration,
            "sizes": args.sizes,
            "connections": args.connection_counts,
            "modes": args.modes,
            "backends": args.backends,
            "fronts": args.front_names,
            "warmup": args.warmup,
            "pinned": args.placement is not None,
        },
        "open_files": limits,
        "machine": machine_info(),
        "points": [asdict(point) for point in points],
        "ratios": ratio_rows,
        "samples": raw,
        "peer_logs": peer_logs,
    }
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    tp.console.print(f"results: {json_path}\nchart:   {chart}")


if __name__ == "__main__":
    main()
