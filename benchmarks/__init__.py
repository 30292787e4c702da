"""Latency benchmarks (pytest-benchmark suite), a report CLI, paired comparisons and a quick look for ``make demo``.

- ``pytest benchmarks --benchmark-json=out.json``: the suite (see ``benchmarks/conftest.py`` for its options).
- ``python -m benchmarks.report out.json [more.json ...] --out DIR``: markdown tables and PNG plots.
- ``python -m benchmarks.paired``: contenders interleaved round by round, median of per-round speedups with a
  bootstrap interval: the ratio to quote from a noisy shared machine.
- ``python -m benchmarks.quick CHECKPOINT``: a few interleaved rounds at B=1, T=16, not a benchmark.

This folder is not part of the wheel; it imports ``runtime`` (and ``export`` to build the graphs it times).
"""
