"""Latency benchmarks (pytest-benchmark suite), a report CLI, paired comparisons and a quick look for ``make demo``.

- ``pytest benchmarks --benchmark-json=out.json``: the suite (see ``benchmarks/conftest.py`` for its options).
- ``python -m benchmarks.report out.json [more.json ...] --out DIR``: markdown tables and PNG plots.
- ``python -m benchmarks.paired``: contenders interleaved round by round, median of per-round speedups with a
  bootstrap interval: the ratio to quote from a noisy shared machine.
- ``python -m benchmarks.quick CHECKPOINT``: a few interleaved rounds at B=1, T=16, not a benchmark.
- ``python -m benchmarks.op_profile``, ``.decode``, ``.ddp_throughput``: per-node ONNX Runtime profiles, video
  decoding against the model, data-parallel training throughput.
- ``python -m benchmarks.perf_analyzer EXPORT_DIR URL``: NVIDIA's perf_analyzer on a served model, with input data
  written from the export.
- ``python -m benchmarks.serve_load EXPORT_DIR``: the embedded runner against the same export served by the bundled
  server with and without dynamic batching, interleaved round by round, with CPU time per clip.

Modules: ``workloads`` (what is timed), ``contenders`` (every contender, one table) with ``streams``, ``context``
(one session's models, inputs, references and runners), ``artifacts`` (exports and engines), ``accuracy``
(tolerances), ``timing`` (the one interleaved-rounds loop, recorders, statistics), ``flops`` (FLOPs and device
peaks), ``environment`` (versions, devices, load average), ``suite_results`` (the suite's JSON, parsed), ``outputs``
(the one writer of the CLIs' files) and ``plots`` (the report's plots).

This folder is not part of the wheel; it imports ``runtime`` (and ``export`` to build the graphs it times).
"""
