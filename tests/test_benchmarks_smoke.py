"""The benchmark suite's helpers: FLOP counting, statistics, timing, contender availability (fast, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks._common import (
    BenchContext,
    LatencyRecorder,
    Unavailable,
    bilstm_flops,
    cnn_flops_per_frame,
    percentiles,
    reference_config,
    rel_error,
    stated_peak,
    workload_flops,
)
from tests.conftest import TINY_CONFIG


def test_reference_flops_match_the_measured_baseline():
    config = reference_config()
    # docs/baselines.md: 37.1 GFLOP for B=1, T=16 (FlopCounterMode, convolutions; the LSTM was not counted there)
    assert workload_flops(config, "cnn", 1, 16) / 1e9 == pytest.approx(37.1, abs=0.05)
    # LSTM by hand: per step 2 dirs x [8*256*(512+256) (layer 0) + 8*256*(512+256) (layer 1)]
    per_step = 2 * (8 * 256 * 768 + 8 * 256 * 768)
    heads = 16 * 2 * 512 * 10 + 2 * 512 * 10
    assert bilstm_flops(config, 1, 16) == 16 * per_step + heads
    total = workload_flops(config, "model", 8, 16)
    assert total == workload_flops(config, "cnn", 8, 16) + workload_flops(config, "bilstm", 8, 16)
    assert workload_flops(config, "stream", 1, 16) == cnn_flops_per_frame(config) + bilstm_flops(config, 1, 16)
    with pytest.raises(ValueError, match="unknown workload"):
        workload_flops(config, "everything", 1, 1)


def test_percentiles_and_recorder():
    stats = percentiles(list(range(1, 101)))
    assert stats["p50_ms"] == pytest.approx(50.5) and stats["p99_ms"] == pytest.approx(99.01)
    assert stats["min_ms"] == 1 and stats["samples"] == 100
    with pytest.raises(ValueError, match="no latency samples"):
        percentiles([])
    calls = []
    rec = LatencyRecorder("perf-counter", sync=lambda: calls.append("sync"))
    for x in range(3):
        rec(lambda v: sum(range(10_000 * (v + 1))), x)
    samples = rec.samples_ms()
    assert len(samples) == 3 and all(s > 0 for s in samples) and calls == ["sync"] * 3
    with pytest.raises(ValueError, match="unknown timer"):
        LatencyRecorder("stopwatch")


def test_rel_error():
    ref = {"a": np.ones((2, 3))}
    assert rel_error({"a": torch.ones(2, 3)}, ref) == 0.0
    assert rel_error({"a": np.ones((2, 3)) * 1.01}, ref) == pytest.approx(0.01, rel=1e-4)
    assert rel_error({"a": np.full((2, 3), np.nan)}, ref) == float("inf")
    with pytest.raises(ValueError, match="missing"):
        rel_error({"b": np.ones((2, 3))}, ref)
    with pytest.raises(ValueError, match="shape"):
        rel_error({"a": np.ones((3, 2))}, ref)


def test_stated_peaks():
    assert stated_peak("NVIDIA H100 80GB HBM3")[:2] == (732e12, "H100")
    assert stated_peak("NVIDIA H200")[1] == "H200"
    assert stated_peak("Intel(R) Xeon(R) Processor (2 cores)")[1] == "cpu"


def test_context_on_cpu(tiny_checkpoint, tmp_path):
    ctx = BenchContext(tiny_checkpoint, "cpu", tmp_path)
    assert ctx.config == TINY_CONFIG
    for contender in ("eager-fp16", "runtime-fast", "trt", "ort-fp16"):
        with pytest.raises(Unavailable):
            ctx.prepare(contender, "model", 1, 2)
    with pytest.raises(ValueError, match="unknown contender"):
        ctx.prepare("numba", "model", 1, 2)
    pool = ctx.host_pool("model", 2, 3)
    assert len(pool) == 4 and pool[0].shape == (2, 3, 3, 16, 16)
    assert not np.allclose(pool[0], pool[1]) and (pool[0] != 0).all()
    eager = ctx.prepare("eager-fp32", "stream", 1, 16)
    # the eager streaming step after `window` pushes equals the model on the window
    assert rel_error(eager.probe(), ctx.reference("stream", 1, 16)) < 1e-5
    ctx.close()
