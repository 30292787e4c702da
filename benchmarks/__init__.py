"""Latency benchmarks (pytest-benchmark suite), a report CLI, paired comparisons and a quick look for ``make demo``.

- ``pytest benchmarks --benchmark-json=out.json``: the suite (see ``benchmarks/conftest.py`` for its options).
- ``python -m benchmarks.report out.json [more.json ...] --out DIR``: markdown tables and PNG plots.
- ``python -m benchmarks.paired``: contenders interleaved round by round, median of per-round speedups with a
  bootstrap interval: the ratio to quote from a noisy shared machine.
- ``python -m benchmarks.quick CHECKPOINT``: a few interleaved rounds at B=1, T=16, not a benchmark.
- ``python -m benchmarks.serve_load URL`` or ``--compare EXPORT_DIR``: load on a model served by Triton
  (requests/s, clips/s, p50/p90/p99 per concurrency), or the embedded runner against the bundled server with and
  without dynamic batching, interleaved round by round.

Modules: ``workloads`` (what is timed), ``contenders`` (every contender, one table) with ``streams``, ``context``
(one session's models, inputs, references and runners), ``artifacts`` (exports and engines), ``accuracy``
(tolerances), ``timing`` (recorders, interleaved rounds, statistics), ``flops`` (FLOPs and device peaks),
``environment`` (versions and devices), ``outputs`` and ``plots`` (the CLIs' files).

This folder is not part of the wheel; it imports ``runtime`` (and ``export`` to build the graphs it times).
"""
