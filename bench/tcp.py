"""TCP mode beside HAProxy `mode tcp`: MiB/s of a bulk stream and connections per second.

    python -m bench.tcp [--runs 3] [--seconds 5]

Fronts, each one process and one thread, all in front of one iperf3 server:
`direct` (no front), `bunancer` (`mode = "tcp"`) and `haproxy` (`mode tcp`, when
installed). Throughput: `iperf3 -c` with 64 KiB writes through each front (one stream,
both directions in turn). Connections/s: a client that opens a connection, sends 64
bytes, reads them back from an echo backend and closes, on 32 connections at once.
Needs `apt-get install iperf3 haproxy`. Medians of `--runs` interleaved runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from bench.harness import Supervisor, free_port, start_python, wait_listening


def start_haproxy(supervisor: Supervisor, name: str, port: int, backend: int) -> None:
    config = supervisor.workdir / f"{name}.cfg"
    config.write_text(
        "global\n    nbthread 1\n    maxconn 4096\n"
        "defaults\n    mode tcp\n    timeout connect 3s\n    timeout client 60s\n"
        "    timeout server 60s\n"
        f"frontend f\n    bind 127.0.0.1:{port}\n    default_backend b\n"
        f"backend b\n    server s1 127.0.0.1:{backend}\n"
    )
    wait_listening(supervisor.start(name, ["haproxy", "-db", "-f", str(config)]), port)


def start_bunancer(supervisor: Supervisor, name: str, port: int, backend: int) -> None:
    workdir = supervisor.workdir
    config = workdir / f"{name}.toml"
    config.write_text(
        '[api]\nlisten = "127.0.0.1:0"\n[dashboard]\nenabled = false\n'
        f'[[listeners]]\naddress = "127.0.0.1:{port}"\nmode = "tcp"\n'
        f'[pools.default]\nservers = [{{ address = "tcp://127.0.0.1:{backend}" }}]\n'
    )
    serve = ["-m", "bunancer", "serve", "--config", str(config), "--state-dir", str(workdir / name)]
    start_python(supervisor, name, serve, "ready: proxy listening")


def iperf(port: int, seconds: float, reverse: bool) -> float:
    """MiB/s of one iperf3 stream with 64 KiB writes through `port`."""
    command = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-l", "64K", "-J"]
    if reverse:
        command.append("-R")
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30)
    data = json.loads(result.stdout)
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    return float(data["end"]["sum_received"]["bits_per_second"]) / 8 / 2**20


async def connections_per_second(port: int, seconds: float, concurrency: int = 32) -> float:
    done = 0
    deadline = time.monotonic() + seconds
    message = b"x" * 64

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(message)
            await reader.readexactly(len(message))
            writer.close()
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.monotonic() - started)


def measure_fronts(
    args: argparse.Namespace, supervisor: Supervisor, results: dict[str, dict[str, list[float]]]
) -> None:
    iperf_port, echo_port = free_port(), free_port()
    iperf_server = supervisor.start("iperf3", ["iperf3", "-s", "-p", str(iperf_port)])
    start_python(supervisor, "echo", ["-m", "tests.echo_backend", str(echo_port)], "PORT")
    wait_listening(iperf_server, iperf_port)
    fronts: dict[str, tuple[int, int]] = {"direct": (iperf_port, echo_port)}
    bunancer_bulk, bunancer_echo = free_port(), free_port()
    start_bunancer(supervisor, "bulk", bunancer_bulk, iperf_port)
    start_bunancer(supervisor, "echo-front", bunancer_echo, echo_port)
    fronts["bunancer"] = (bunancer_bulk, bunancer_echo)
    if shutil.which("haproxy"):
        haproxy_bulk, haproxy_echo = free_port(), free_port()
        start_haproxy(supervisor, "haproxy-bulk", haproxy_bulk, iperf_port)
        start_haproxy(supervisor, "haproxy-echo", haproxy_echo, echo_port)
        fronts["haproxy"] = (haproxy_bulk, haproxy_echo)
    for run in range(args.runs):
        for name, (bulk, echo) in fronts.items():
            row = results.setdefault(name, {"up": [], "down": [], "conn/s": []})
            row["up"].append(iperf(bulk, args.seconds, reverse=False))
            row["down"].append(iperf(bulk, args.seconds, reverse=True))
            row["conn/s"].append(uvloop.run(connections_per_second(echo, args.seconds)))
            print(
                f"run {run + 1}/{args.runs} {name:9} up {row['up'][-1]:8.0f} MiB/s  "
                f"down {row['down'][-1]:8.0f} MiB/s  {row['conn/s'][-1]:8.0f} conn/s",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("iperf3") is None:
        sys.exit("bench.tcp needs iperf3: apt-get install iperf3")
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bunancer-tcp-") as tmp:
        supervisor = Supervisor(Path(tmp))
        try:
            measure_fronts(args, supervisor, results)
        finally:
            supervisor.stop_all()
    medians = {
        name: {key: statistics.median(values) for key, values in row.items()}
        for name, row in results.items()
    }
    if args.json:
        print(json.dumps(medians))
        return
    print(f"\nmedians of {args.runs} runs x {args.seconds:g} s (64 KiB writes; 32 connections)")
    print(f"{'front':10} {'up MiB/s':>10} {'down MiB/s':>11} {'conn/s':>9}")
    for name, row in medians.items():
        print(f"{name:10} {row['up']:10.0f} {row['down']:11.0f} {row['conn/s']:9.0f}")
    if "haproxy" in medians:
        ours, theirs = medians["bunancer"], medians["haproxy"]
        for key in ("up", "down", "conn/s"):
            print(f"bunancer/haproxy {key}: {ours[key] / theirs[key]:.2f}")


if __name__ == "__main__":
    main()
