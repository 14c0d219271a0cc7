"""bench.throughput's arithmetic: samples with errors never make a ratio, and the peers'
settings and logs as the comparison needs them (no wrk, no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

import bench.throughput as throughput
from bench.harness import Supervisor
from bench.throughput import Sample, nginx_buffers, nginx_warnings, parse_args, ratios, summarise
from bunancer.core.tls import INTERMEDIATE_CIPHERS


def sample(front: str, rps: float, cpu: float, errors: int = 0, run: int = 1) -> Sample:
    return Sample(
        run=run,
        mode="keepalive",
        front=front,
        requests=int(rps * 10),
        rps=rps,
        p50_ms=1.0,
        p99_ms=2.0,
        cpu_seconds=cpu * rps * 10 / 1e6,
        cpu_us_per_request=cpu,
        socket_errors={"connect": 0, "read": errors, "write": 0, "timeout": 0},
        non_2xx=0,
        errors=errors,
    )


def test_samples_with_errors_are_left_out_of_medians_and_ratios() -> None:
    samples = [
        sample("bunancer", 10_000, 50.0, run=1),
        sample("bunancer", 10_000, 50.0, run=2),
        sample("bunancer", 90_000, 5.0, errors=120, run=3),  # fast 502s: not throughput
        sample("haproxy", 20_000, 25.0),
    ]
    summaries = {s.front: s for s in summarise(samples)}
    ours = summaries["bunancer"]
    assert ours.rps == 10_000
    assert ours.cpu_us_per_request == 50.0
    assert (ours.left_out, ours.runs, ours.errors) == (1, 3, 120)
    rows = {row["ratio"]: row["value"] for row in ratios(list(summaries.values()))}
    assert rows["bunancer/haproxy req/s"] == 0.5
    assert rows["bunancer CPU µs/req ÷ haproxy CPU µs/req"] == 2.0
    assert next(iter(rows)).startswith("bunancer CPU")  # the headline comes first


def test_a_front_whose_every_run_had_errors_gets_no_ratio() -> None:
    samples = [sample("bunancer", 10_000, 50.0), sample("nginx", 30_000, 10.0, errors=5)]
    summaries = summarise(samples)
    assert not next(s for s in summaries if s.front == "nginx").usable
    assert ratios(summaries) == []


def test_nginx_buffers_hold_the_whole_answer_in_memory() -> None:
    # The default 8 x 4 KiB spills a 64 KiB answer to a temporary file on disk.
    assert "proxy_buffers 8 16k;" in nginx_buffers(100)
    pieces = int(nginx_buffers(65536).split("proxy_buffers ")[1].split()[0])
    assert pieces * 16 * 1024 >= 65536 + 4096


def test_nginx_warnings_are_counted_by_message(tmp_path: Path) -> None:
    log = tmp_path / "nginx" / "error.log"
    log.parent.mkdir()
    log.write_text(
        "2026/12/06 00:00:01 [warn] 12#12: *3 an upstream response is buffered to a "
        "temporary file /x/proxy/1/00/0000000001 while reading upstream, client: 127.0.0.1\n"
        "2026/12/06 00:00:01 [warn] 12#12: *4 an upstream response is buffered to a "
        "temporary file /x/proxy/2/00/0000000002 while reading upstream, client: 127.0.0.1\n"
        "2026/12/06 00:00:02 [notice] 12#12: signal process started\n"
    )
    counts = nginx_warnings(Supervisor(tmp_path))
    assert len(counts) == 1
    ((message, count),) = counts.items()
    assert message.startswith("warn: an upstream response is buffered to a temporary file")
    assert count == 2


def test_reference_adds_the_other_checkout_as_a_front(tmp_path: Path) -> None:
    (tmp_path / "bunancer").mkdir()
    (tmp_path / "bunancer" / "__init__.py").write_text("")
    args = parse_args(["--reference", str(tmp_path), "--fronts", "bunancer"])
    assert args.fronts.split(",") == ["bunancer", "bunancer-ref"]
    assert throughput.ENVIRONMENT["bunancer-ref"] == {"PYTHONPATH": str(tmp_path.resolve())}


@pytest.mark.parametrize(
    "argv", [["--reference", "/nonexistent-checkout"], ["--fronts", "bunancer,bunancer-ref"]]
)
def test_a_reference_that_cannot_run_is_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2


def test_tls_fronts_serve_the_same_certificate_and_ciphers(tmp_path: Path) -> None:
    files = throughput.make_certificate(tmp_path)
    nginx, haproxy = throughput.nginx_tls(files), throughput.haproxy_tls(files)
    for config in (nginx, haproxy):
        assert INTERMEDIATE_CIPHERS in config
    assert f"ssl_certificate {files.cert};" in nginx
    assert "TLSv1.2 TLSv1.3" in nginx
    assert f"crt {files.combined} " in haproxy
    assert "ssl-min-ver TLSv1.2" in haproxy
    assert "X-Forwarded-Proto https" in throughput.haproxy_forwarding(True)
    assert "proto=https" in throughput.haproxy_forwarding(True)
    args = throughput.parse_args(["--tls"])
    assert args.fronts.split(",") == ["bunancer", "nginx", "haproxy"]  # no plain `direct`
