"""Benchmarks: evaluation suites, layer sweeps and speed/memory benchmarks."""
