"""Benchmarks: `python -m bench.hotpath`, `python -m bench.throughput`."""
