"""Tail latency per algorithm when one of three backends is ten times slower.

    python -m bench.algorithms [--seconds 5] [--connections 16] [--fast 2ms] [--slow 20ms]

Starts three stubs (two answering after `--fast`, one after `--slow`) and one bunancer
with a pool per algorithm over the same three stubs (routes by path prefix), then drives
each pool in turn with a closed-loop keep-alive load and prints p50/p90/p99 and the share
of requests the slow stub got. Also `--picks`: the cost of one selection per algorithm
with 3 and 100 servers (a micro-benchmark, no sockets).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
import timeit
from pathlib import Path

import uvloop

from bench.harness import Supervisor, free_port, start_python

ALGORITHMS = ["round-robin", "least-connections", "p2c", "peak-ewma", "weighted-round-robin"]


async def drive(port: int, prefix: str, seconds: float, connections: int) -> dict[str, object]:
    latencies: list[float] = []
    by_stub: dict[str, int] = {}
    errors = 0
    deadline = time.monotonic() + seconds
    request = f"GET /{prefix}/x HTTP/1.1\r\nHost: bench\r\n\r\n".encode()

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length, stub = 0, "?"
                for line in head.split(b"\r\n"):
                    lower = line.lower()
                    if lower.startswith(b"content-length:"):
                        length = int(line[15:])
                    elif lower.startswith(b"x-stub-id:"):
                        stub = line[10:].strip().decode()
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                by_stub[stub] = by_stub.get(stub, 0) + 1
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    latencies.sort()

    def quantile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    total = len(latencies)
    return {
        "requests": total,
        "p50_ms": round(quantile(0.50), 2),
        "p90_ms": round(quantile(0.90), 2),
        "p99_ms": round(quantile(0.99), 2),
        "slow_share": round(by_stub.get("slow", 0) / total, 4) if total else 0.0,
        "errors": errors,
    }


async def scenario(args: argparse.Namespace, workdir: Path) -> dict[str, dict[str, object]]:
    supervisor = Supervisor(workdir)
    try:
        return await per_algorithm(args, supervisor)
    finally:
        supervisor.stop_all()


async def per_algorithm(
    args: argparse.Namespace, supervisor: Supervisor
) -> dict[str, dict[str, object]]:
    workdir = supervisor.workdir
    ports = [free_port() for _ in range(3)]
    specs = [("fast1", args.fast), ("fast2", args.fast), ("slow", args.slow)]
    for port, (name, latency) in zip(ports, specs, strict=True):
        argv = ["-m", "stubs.server", "--port", str(port), "--id", name, "--latency", latency]
        start_python(supervisor, name, argv, "PORT")
    proxy_port, api_port = free_port(), free_port()
    servers = ", ".join(f'{{ address = "127.0.0.1:{p}" }}' for p in ports)
    pools = "".join(
        f'[pools.{name.replace("-", "_")}]\nalgorithm = "{name}"\nservers = [{servers}]\n'
        f'[[routes]]\npath_prefix = "/{name}/"\npool = "{name.replace("-", "_")}"\n'
        for name in args.algorithms
    )
    config = workdir / "bunancer.toml"
    config.write_text(
        f'[[listeners]]\naddress = "127.0.0.1:{proxy_port}"\n'
        f'[api]\nlisten = "127.0.0.1:{api_port}"\n[dashboard]\nlisten = "127.0.0.1:0"\n{pools}'
    )
    serve = ["-m", "bunancer", "serve", "--config", str(config), "--state-dir", str(workdir / "s")]
    start_python(supervisor, "proxy", serve, "ready: proxy listening")
    results = {}
    for name in args.algorithms:
        await drive(proxy_port, name, 0.5, args.connections)  # warm up connections
        results[name] = await drive(proxy_port, name, args.seconds, args.connections)
    return results


def pick_costs() -> dict[str, dict[int, float]]:
    """Microseconds per pick, per algorithm, with 3 and 100 servers."""
    from bunancer.core.algorithms import ALGORITHM_NAMES, make_selector
    from bunancer.core.server import Server

    costs: dict[str, dict[int, float]] = {}
    rng = random.Random(1)
    for name in ALGORITHM_NAMES:
        costs[name] = {}
        for count in (3, 100):
            servers = tuple(Server(f"s{i}", "127.0.0.1", 9000 + i) for i in range(count))
            selector = make_selector(name)
            selector.update(servers)
            keys = [b"%d" % rng.getrandbits(32) for _ in range(1000)]

            def run(selector=selector, servers=servers, keys=keys) -> None:  # type: ignore[no-untyped-def]
                pick = selector.pick
                for key in keys:
                    pick(servers, key)

            best = min(timeit.repeat(run, number=20, repeat=5))
            costs[name][count] = round(best / 20 / len(keys) * 1e6, 3)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--fast", default="2ms")
    parser.add_argument("--slow", default="20ms")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--picks", action="store_true", help="only the per-pick micro-benchmark")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    if args.picks:
        costs = pick_costs()
        print(json.dumps(costs) if args.json else "")
        if not args.json:
            print(f"{'algorithm':22} {'3 servers':>12} {'100 servers':>12}  (us per pick)")
            for name, by_count in costs.items():
                print(f"{name:22} {by_count[3]:12.3f} {by_count[100]:12.3f}")
        return
    with tempfile.TemporaryDirectory(prefix="bunancer-algorithms-") as tmp:
        results = uvloop.run(scenario(args, Path(tmp)))
    if args.json:
        print(json.dumps(results))
        return
    print(f"one of three stubs at {args.slow}, two at {args.fast}; {args.connections} connections")
    # p99 as a share of round-robin's (the README's run: round-robin 22.5 ms, peak-ewma 5.2).
    baseline = results.get("round-robin", {}).get("p99_ms")
    print(
        f"{'algorithm':22} {'requests':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
        f"{'p99/rr':>7} {'slow %':>7}"
    )
    for name, row in results.items():
        ratio = (
            f"{float(row['p99_ms']) / float(baseline):7.2f}"  # type: ignore[arg-type]
            if baseline
            else f"{'-':>7}"
        )
        print(
            f"{name:22} {row['requests']:9} {row['p50_ms']:8} {row['p90_ms']:8} "
            f"{row['p99_ms']:8} {ratio} {float(row['slow_share']) * 100:7.2f}"  # type: ignore[arg-type]
        )


if __name__ == "__main__":
    main()
