"""The benchmark suite's helpers: FLOP counting, statistics, timing, contender availability (fast, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.accuracy import TOLERANCES, rel_error
from benchmarks.contenders import BASELINE, CONTENDER_TABLE, CONTENDERS, ORT_CONTENDERS, prepare_contender
from benchmarks.context import BenchContext, Prepared
from benchmarks.environment import Unavailable
from benchmarks.flops import bilstm_flops, cnn_flops_per_frame, stated_peak, workload_flops
from benchmarks.timing import LatencyRecorder, Task, paired_speedup, percentiles, time_interleaved
from benchmarks.workloads import reference_config
from tests.conftest import TINY_CONFIG, run_cli


def test_reference_flops_match_the_measured_baseline():
    config = reference_config()
    # The reference model's 37.1 GFLOP for B=1, T=16, as torch's FlopCounterMode counts its convolutions (no LSTM)
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


def test_flops_of_a_net_whose_last_maps_are_1x1():
    # The cifar10-cpu preset (ImageNet stem on 32x32 frames) ends in 1x1 maps, which training-mode BatchNorm refuses.
    from runtime.model import ModelConfig

    config = ModelConfig(num_classes=10, backbone="resnet18", stem="imagenet", frame_size=(32, 32), hidden_size=64,
                         num_layers=1)
    assert 0.05e9 < cnn_flops_per_frame(config) < 0.1e9  # resnet18's 1.8 GMAC at 224x224, scaled by (32/224)^2


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
            prepare_contender(ctx, contender, "model", 1, 2)
    with pytest.raises(ValueError, match="unknown contender"):
        prepare_contender(ctx, "numba", "model", 1, 2)
    pool = ctx.host_pool("model", 2, 3)
    assert len(pool) == 4 and pool[0].shape == (2, 3, 3, 16, 16)
    assert not np.allclose(pool[0], pool[1]) and (pool[0] != 0).all()
    eager = prepare_contender(ctx, "eager-fp32", "stream", 1, 16)
    # the eager streaming step after `window` pushes equals the model on the window
    assert rel_error(eager.probe(), ctx.reference("stream", 1, 16)) < 1e-5
    ctx.close()


def test_contenders_are_one_table_and_the_runtime_stream_matches_eager(tiny_checkpoint, tmp_path):
    assert CONTENDERS == tuple(CONTENDER_TABLE) and CONTENDERS[0] == BASELINE
    assert set(ORT_CONTENDERS) == {c for c in CONTENDERS if c.startswith("ort-")}
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    ctx = BenchContext(tiny_checkpoint, "cpu", tmp_path)
    try:
        stream = prepare_contender(ctx, "ort-fp32", "stream", 1, 16)  # runtime.StreamingClassifier over the exported graphs
        out = stream.probe()
        assert set(out) == {"frame_logits", "clip_logits"} and out["clip_logits"].shape == (1, TINY_CONFIG.num_classes)
        assert rel_error(out, ctx.reference("stream", 1, 16)) <= TOLERANCES["fp32"]
        assert ctx.artifacts.onnx_dir("fp32") == tmp_path / "onnx-fp32"  # exported once, then cached
        with pytest.raises(Unavailable, match="one stream"):
            prepare_contender(ctx, "ort-fp32", "stream", 2, 16)
    finally:
        ctx.close()


def _busy(ms: float):
    import time

    def fn(_x):
        end = time.perf_counter() + ms / 1e3
        while time.perf_counter() < end:
            pass

    return fn


def test_time_interleaved_pairs_rounds_and_shuffles_order():
    calls = []

    def contender(name, ms):
        busy = _busy(ms)

        def fn(x):
            calls.append((name, x))
            busy(x)

        return Prepared(fn=fn, inputs=[0, 1, 2], timer="perf-counter", precision="fp32", probe=dict)

    prepared = {"slow": contender("slow", 3.0), "fast": contender("fast", 1.0)}
    result = time_interleaved(prepared, 12, warmup=2, seed=3, gap_s=0.001, cpu_time=True, keep_results=True)
    samples = result.wall_ms
    assert {k: len(v) for k, v in samples.items()} == {"slow": 12, "fast": 12}  # warm-up rounds are not kept
    assert len(calls) == 2 * 14
    timed = calls[4:]
    rounds = [tuple(name for name, _ in timed[i:i + 2]) for i in range(0, len(timed), 2)]
    assert all(sorted(r) == ["fast", "slow"] for r in rounds)  # each round runs every contender once
    assert len(set(rounds)) == 2  # ... in an order that changes between rounds
    assert [x for name, x in calls if name == "slow"][:4] == [1, 2, 0, 1]  # inputs rotate (cycle starts after 0)
    assert min(samples["slow"]) >= 2.9 and min(samples["fast"]) >= 0.9
    assert {k: len(v) for k, v in result.cpu_ms.items()} == {"slow": 12, "fast": 12}
    assert result.results["slow"] == [None] * 12 and len(result.load_before) == 3  # what each call returned
    assert paired_speedup(samples["slow"], samples["fast"])["median"] > 1.5
    with pytest.raises(ValueError, match="rounds >= 1"):
        time_interleaved(prepared, 0)
    with pytest.raises(ValueError, match="no contenders"):
        time_interleaved({}, 3)


def test_time_interleaved_cpu_time_is_this_process_cpu_not_wall_time():
    import time

    def sleep(_x):
        time.sleep(0.02)
        return "slept"

    timed = time_interleaved({"sleep": Task(fn=sleep)}, 5, warmup=0, cpu_time=True, keep_results=True)
    assert min(timed.wall_ms["sleep"]) >= 19.9 and timed.results["sleep"] == ["slept"] * 5
    # a sleeping call takes 20 ms but almost no CPU (the 2 ms margin: other threads of this process)
    assert len(timed.cpu_ms["sleep"]) == 5 and 0 <= np.median(timed.cpu_ms["sleep"]) < 2.0
    plain = time_interleaved({"sleep": Task(fn=sleep)}, 2, warmup=0)
    assert plain.cpu_ms == {"sleep": []} and plain.results == {"sleep": []}  # only when asked for


def test_paired_speedup_statistics():
    base = [10.0, 12.0, 30.0, 11.0, 10.0]  # a noisy round (30) is shared by both series
    other = [5.0, 6.0, 15.0, 5.5, 5.0]
    result = paired_speedup(base, other, resamples=500)
    assert result["median"] == pytest.approx(2.0) and result["per_round"] == [2.0, 2.0, 2.0, 2.0, 2.0]
    assert result["ci95"] == pytest.approx((2.0, 2.0)) and result["faster_rounds"] == 1.0
    mixed = paired_speedup([10, 10, 10, 10], [5, 20, 10, 8])
    assert mixed["median"] == pytest.approx((1.0 + 1.25) / 2) and mixed["faster_rounds"] == 0.5
    assert mixed["ci95"][0] <= mixed["median"] <= mixed["ci95"][1]
    with pytest.raises(ValueError, match="equally long"):
        paired_speedup([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        paired_speedup([1.0, 0.0], [1.0, 1.0])


def test_paired_cli_writes_checked_results(tiny_checkpoint, tiny_export, tmp_path):
    import json

    out = tmp_path / "out"
    proc = run_cli("benchmarks.paired", "--checkpoint", tiny_checkpoint, "--onnx-dir", tiny_export, "--device",
                      "cpu", "--contenders", "ort-fp32,trt", "--batch", "1", "--time", "3", "--rounds", "4",
                      "--warmup", "1", "--gap-ms", "1", "--out", out, "--prefix", "p")
    assert proc.returncode == 0, proc.stderr
    assert "| ort-fp32 | fp32 |" in proc.stdout and f"wrote {out / 'p.png'}" in proc.stdout
    data = json.loads((out / "p.json").read_text())
    rows = {r["contender"]: r for r in data["result"]["rows"]}
    assert set(rows) == {"eager-fp32", "ort-fp32"}  # the baseline is always added; trt cannot run here
    assert rows["ort-fp32"]["ok"] and rows["ort-fp32"]["rel_error"] < 1e-4
    assert len(rows["ort-fp32"]["samples_ms"]) == 4 and rows["eager-fp32"]["speedup"]["median"] == 1.0
    assert data["result"]["skipped"][0][0] == "trt" and data["result"]["gap_s"] == pytest.approx(0.001)
    md = (out / "p.md").read_text()
    assert "| ort-fp32 | fp32 |" in md and "interleaved rounds" in md
    assert (out / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_quick_cli_checks_then_times_each_contender(tiny_checkpoint, tiny_export):
    proc = run_cli("benchmarks.quick", tiny_checkpoint, "--onnx-dir", tiny_export, "--rounds", "2", "--device",
                      "cpu")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.startswith(("eager", "ort"))}
    assert rows["eager-fp32"][-1] == "ok" and rows["ort-fp32"][1:2] == ["fp32"] and rows["ort-fp32"][-1] == "ok"
    assert "QUICK LOOK, not a benchmark" in proc.stdout
    assert "skipped ort-int8: no --int8-dir (python -m export.quantize) given" in proc.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--gap-ms", "-1"], "--gap-ms must be >= 0"),
    (["--onnx-dir", "."], "has no model.onnx"),
    (["--checkpoint", "missing.pt"], "is not a file"),
])
def test_paired_cli_rejects_bad_arguments(args, message, capsys):
    from benchmarks import paired

    assert paired.main(args) == 2
    assert message in capsys.readouterr().err


def test_paired_cli_without_a_gpu_says_so(capsys):
    import torch

    from benchmarks import paired

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here: --device cuda is valid")
    assert paired.main(["--device", "cuda"]) == 3  # the CLIs' code for "cannot run on this machine"
    assert capsys.readouterr().err == "error: --device cuda, but torch sees no CUDA GPU here; use --device cpu\n"


def test_paired_cli_unknown_contender(tiny_checkpoint, capsys):
    from benchmarks import paired

    assert paired.main(["--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--contenders", "numba"]) == 1
    assert "unknown contender 'numba'" in capsys.readouterr().err
    assert paired.main(["--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--contenders",
                        "runtime-fast+winograd"]) == 1
    assert "unknown variant 'winograd'; valid: fp16-all" in capsys.readouterr().err


def test_fast_path_variants_parse_into_runner_options(tiny_checkpoint, tmp_path):
    from benchmarks.contenders import parse_contender

    assert parse_contender("ort-fp32") == ("ort-fp32", {})
    assert parse_contender("runtime-fast+fp16-all") == ("runtime-fast", {"precision": "fp16-all"})
    for bad, message in (("runtime-fast+fp16-all+fp16-all", "a second time"), ("ort-fp32+fp16-all", "only runtime-fast"),
                         ("runtime-fast+", "unknown variant ''"), ("runtime-fast+fused", "unknown variant 'fused'")):
        with pytest.raises(ValueError, match=message):
            parse_contender(bad)
    ctx = BenchContext(tiny_checkpoint, "cpu", tmp_path)
    with pytest.raises(Unavailable, match="needs CUDA"):  # a variant is the fast path too: CUDA only
        prepare_contender(ctx, "runtime-fast+fp16-all", "model", 1, 2)
    ctx.close()


def test_paired_cli_reports_a_damaged_checkpoint(tmp_path, capsys):
    from benchmarks import paired

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert paired.main(["--checkpoint", str(bad), "--device", "cpu", "--contenders", "ort-fp32"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.pt" in err
