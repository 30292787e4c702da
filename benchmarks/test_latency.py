"""Latency of every available contender per (workload, B, T), side by side against eager PyTorch fp32.

Each test: build the contender (skip with the reason when it cannot run here), check its outputs against eager fp32
within the tolerance of its precision (this runs in CI smoke mode too, with ``--benchmark-disable``), then time it
with ``benchmark.pedantic``: warm-up rounds, rotating random inputs fed by the untimed ``setup``, and a
:class:`~benchmarks.timing.LatencyRecorder` inside the timed call for device-accurate p50/p90/p99.

Run: ``pytest benchmarks --benchmark-json=out.json`` (options in ``benchmarks/conftest.py``), then
``python -m benchmarks.report out.json --out DIR``.
"""

from __future__ import annotations

import pytest

from benchmarks.accuracy import TOLERANCES, rel_error
from benchmarks.conftest import bench_grid
from benchmarks.contenders import prepare_contender
from benchmarks.environment import Unavailable, environment
from benchmarks.flops import workload_flops
from benchmarks.timing import LatencyRecorder, cycle, percentiles

# Rounds are derived from the time budget, within these bounds.
MIN_ROUNDS = {"cuda": 10, "cpu": 3}
MAX_ROUNDS = {"cuda": 300, "cpu": 50}
WARMUP_ROUNDS = {"cuda": 10, "cpu": 1}


def pytest_generate_tests(metafunc):
    if "contender" not in metafunc.fixturenames:
        return
    batches, times, workloads, contenders = bench_grid(metafunc.config)
    cases, ids = [], []
    for workload in workloads:
        # A streaming step has no T of its own: one new frame, the BiLSTM over the window.
        for t in ([0] if workload == "stream" else times):
            for b in batches:
                for c in contenders:
                    cases.append((workload, b, t, c))
                    shape = f"B{b}-W16" if workload == "stream" else f"B{b}-T{t}"
                    ids.append(f"{workload}-{shape}-{c}")
    metafunc.parametrize(("workload", "batch", "time_steps", "contender"), cases, ids=ids)


def test_latency(benchmark, bench, workload, batch, time_steps, contender):
    if workload == "stream":
        time_steps = bench.window
    shape = f"B{batch}-W{bench.window}" if workload == "stream" else f"B{batch}-T{time_steps}"
    benchmark.group = f"{workload}-{shape}"
    kind = "cuda" if bench.is_cuda else "cpu"

    try:
        prepared = prepare_contender(bench, contender, workload, batch, time_steps)
    except Unavailable as e:
        pytest.skip(f"{contender}: {e}")

    # Correctness first: a fast wrong answer is not a result.
    reference = bench.reference(workload, batch, time_steps)
    error = rel_error(prepared.probe(), reference)
    tolerance = TOLERANCES[prepared.precision]
    assert error <= tolerance, (
        f"{contender} {workload} B={batch} T={time_steps}: norm-relative error {error:.3g} against eager fp32 "
        f"exceeds the {prepared.precision} tolerance {tolerance:g}"
    )

    recorder = LatencyRecorder(prepared.timer, prepared.sync)
    inputs = cycle(prepared.inputs)
    mem_before = _reset_gpu_memory(bench)
    warmup, rounds = WARMUP_ROUNDS[kind], _rounds(benchmark, bench, recorder, prepared, inputs)

    benchmark.pedantic(lambda x: recorder(prepared.fn, x), setup=lambda: ((next(inputs),), {}), rounds=rounds,
                       warmup_rounds=warmup, iterations=1)

    samples = recorder.samples_ms()
    if len(samples) > warmup:  # --benchmark-disable runs the target once, without warm-up
        samples = samples[warmup:]
    info = {
        "contender": contender,
        "workload": workload,
        "batch": batch,
        "time": time_steps,
        "window": bench.window if workload == "stream" else None,
        "precision": prepared.precision,
        "tolerance": tolerance,
        "rel_error": error,
        "timer": prepared.timer,
        "rounds": rounds,
        "warmup_rounds": warmup,
        "benchmark_disabled": bool(benchmark.disabled),
        **_measurements(bench, workload, batch, time_steps, samples),
        **prepared.info,
        **_peak_gpu_memory(bench, mem_before),
    }
    benchmark.extra_info.update(info)


def _reset_gpu_memory(bench) -> int:
    """Start counting the peak GPU memory; the bytes allocated now (0 on CPU)."""
    if not bench.is_cuda:
        return 0
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def _peak_gpu_memory(bench, mem_before: int) -> dict:
    if not bench.is_cuda:
        return {"peak_gpu_mem_mb": None}
    import torch

    peak = torch.cuda.max_memory_allocated()
    return {"peak_gpu_mem_mb": peak / 2**20, "peak_gpu_mem_delta_mb": (peak - mem_before) / 2**20}


def _rounds(benchmark, bench, recorder, prepared, inputs) -> int:
    """Timed rounds sized to the time budget by one calibration call (or --bench-rounds)."""
    if benchmark.disabled:  # --benchmark-disable (CI smoke) runs the target once: no rounds to size
        return 1
    kind = "cuda" if bench.is_cuda else "cpu"
    recorder(prepared.fn, next(inputs))
    calibration_ms = recorder.samples_ms()[-1]
    recorder.reset()
    return bench.fixed_rounds or int(min(MAX_ROUNDS[kind], max(MIN_ROUNDS[kind],
                                                               bench.budget_s * 1e3 / max(calibration_ms, 1e-3))))


def _measurements(bench, workload: str, batch: int, time_steps: int, samples: list[float]) -> dict:
    """Latency statistics, throughput, FLOPs, the model and the environment of one timed shape."""
    stats = percentiles(samples)
    flops = workload_flops(bench.config, workload, batch, time_steps, bench.window)
    frames = batch if workload == "stream" else batch * time_steps
    env = environment(bench.device)
    return {
        **stats,
        "clips_per_s": batch / (stats["p50_ms"] / 1e3),
        "frames_per_s": frames / (stats["p50_ms"] / 1e3),
        "flops": flops,
        "gflop": flops / 1e9,
        "model_config": bench.config.to_dict(),
        "device_name": env["device_name"],
        "versions": {k: env[k] for k in ("torch", "cuda", "cudnn", "onnxruntime", "tensorrt", "python", "package")},
        "env": env,
    }
