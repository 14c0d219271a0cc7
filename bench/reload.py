"""Config reloads under load: what clients saw, and whether a tunnel outlived them.

    python -m bench.reload [--reloads 10] [--connections 64] [--every 0.5] [--workers N] [--wrk]

Starts three stub backends and `bunancer serve` on 127.0.0.1 with a config file, drives a
keep-alive GET load from this process over `--connections` connections, and reloads
`--reloads` times (`POST /api/reload`, as `bunancer reload` does), switching between two
files: A (round-robin over s1-s3) and B (p2c, s3 removed, s1 weighted 3, a `/v1/` route to
a second pool of s3, and a second HTTP listener). So every other reload drains a server
the load is using, and adds and removes a listener, a pool and a route. A TCP tunnel opened
through a TCP listener before the first reload carries one request after each reload.

With `--wrk`, the load is `wrk -c<connections>` instead (the issue's load generator): it
runs through every reload, and its socket errors and non-2xx answers are the failures.

Verdict (the README's promise for reload: no failed request, no closed tunnel): PASS when
no request failed and the tunnel answered after every reload, FAIL otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import tempfile
import time
from pathlib import Path

import uvloop

from bench.failover import Load, start_stub
from bench.harness import Supervisor, free_port, start_python
from bench.throughput import parse_wrk
from bunancer.client import ApiClient


def verdict(failed: int, tunnel_answers: int, reloads: int) -> str:
    """PASS only when no request failed and the tunnel answered after each reload."""
    return "PASS" if failed == 0 and tunnel_answers == reloads else "FAIL"


def config_text(variant: str, ports: list[int], listen: dict[str, int], workers: int = 0) -> str:
    s1, s2, s3 = (f"127.0.0.1:{p}" for p in ports)
    head = (
        f"workers = {workers}\n"
        f'[[listeners]]\naddress = "127.0.0.1:{listen["proxy"]}"\n'
        f'[[listeners]]\naddress = "127.0.0.1:{listen["tcp"]}"\nmode = "tcp"\n'
        'default_pool = "tcp"\n'
        f'[api]\nlisten = "127.0.0.1:{listen["api"]}"\n[dashboard]\nenabled = false\n'
        f'[pools.tcp]\nservers = [{{ address = "{s1}", id = "t1" }}]\n'
    )
    if variant == "A":
        return head + (
            '[pools.default]\nalgorithm = "round-robin"\n'
            f'servers = [{{ address = "{s1}", id = "s1" }}, {{ address = "{s2}", id = "s2" }}, '
            f'{{ address = "{s3}", id = "s3" }}]\n'
        )
    return head + (
        f'[[listeners]]\naddress = "127.0.0.1:{listen["extra"]}"\ndefault_pool = "v1"\n'
        '[pools.default]\nalgorithm = "p2c"\n'
        f'servers = [{{ address = "{s1}", id = "s1", weight = 3 }}, '
        f'{{ address = "{s2}", id = "s2" }}]\n'
        f'[pools.v1]\nservers = [{{ address = "{s3}", id = "v1-s3" }}]\n'
        '[[routes]]\npath_prefix = "/v1/"\npool = "v1"\n'
    )


async def tunnel_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """One request through the open TCP tunnel, answered in time."""
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: tunnel\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = next(
            int(line[15:])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        return head.startswith(b"HTTP/1.1 200")
    except (OSError, asyncio.IncompleteReadError, TimeoutError, StopIteration):
        return False


async def reload_under_load(args: argparse.Namespace, supervisor: Supervisor) -> dict[str, object]:
    workdir = supervisor.workdir
    ports = [free_port() for _ in range(3)]
    for i, port in enumerate(ports):
        start_stub(supervisor, f"s{i + 1}", port, f"s{i + 1}")
    listen = {name: free_port() for name in ("proxy", "tcp", "api", "extra")}
    config = workdir / "bunancer.toml"
    config.write_text(config_text("A", ports, listen, args.workers))
    serve = ["-m", "bunancer", "serve", "--config", str(config), "--state-dir", str(workdir / "s")]
    start_python(supervisor, "proxy", serve, "ready: proxy listening")
    client = ApiClient(
        f"http://127.0.0.1:{listen['api']}", (workdir / "s" / "token").read_text().strip(), 60.0
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", listen["tcp"])
    load = Load(listen["proxy"], args.connections)
    wrk = await start_wrk(args, listen["proxy"]) if args.wrk else None
    workers = [] if wrk else [asyncio.create_task(load.worker()) for _ in range(args.connections)]
    begin = time.monotonic()
    answered, took = 0, []
    await asyncio.sleep(args.every)
    for n in range(args.reloads):
        config.write_text(config_text("B" if n % 2 == 0 else "A", ports, listen, args.workers))
        started = time.monotonic()
        await asyncio.to_thread(client.reload)
        took.append(time.monotonic() - started)
        answered += await tunnel_answers(reader, writer)
        await asyncio.sleep(args.every)
    load.running = False
    await asyncio.gather(*workers, return_exceptions=True)
    if wrk is not None:
        output, _ = await wrk.communicate()
        result = parse_wrk(output.decode())
        requests, failed = result.requests, result.errors
        kinds = [f"{kind}: {n}" for kind, n in result.socket_errors.items() if n]
        kinds += [f"non-2xx: {result.non_2xx}"] if result.non_2xx else []
    else:
        requests = len(load.records)
        failed = sum(not r.ok for r in load.records)
        kinds = sorted({r.stub for r in load.records if not r.ok})
    end = time.monotonic()
    writer.close()
    return {
        "load": "wrk" if wrk else "this process",
        "requests": requests,
        "rps": round(requests / (end - begin)),
        "reloads": args.reloads,
        "reload_seconds_max": round(max(took), 3),
        "failed_requests": failed,
        "failure_kinds": kinds,
        "tunnel_answers": answered,
        "verdict": verdict(failed, answered, args.reloads),
    }


async def start_wrk(args: argparse.Namespace, port: int) -> asyncio.subprocess.Process:
    """wrk for as long as the reloads take, and a little more (it counts whole seconds)."""
    seconds = math.ceil(args.every * (args.reloads + 1) + 0.2 * args.reloads) + 1
    return await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{args.connections}", f"-d{seconds}s", "--latency",
        f"http://127.0.0.1:{port}/", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def scenario(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    supervisor = Supervisor(workdir)
    try:
        return await reload_under_load(args, supervisor)
    finally:
        supervisor.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--every", type=float, default=0.5, help="seconds between reloads")
    parser.add_argument("--workers", type=int, default=0, help="bunancer serve --workers (0)")
    parser.add_argument("--wrk", action="store_true", help="drive the load with wrk")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bunancer-reload-") as tmp:
        result = uvloop.run(scenario(args, Path(tmp)))
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:20} {value}")


if __name__ == "__main__":
    main()
