"""benchmarks.op_profile: per-node ONNX Runtime profiles, checked against the suite's independent FLOP counts."""

from __future__ import annotations

import json

import pytest

from benchmarks.flops import bilstm_flops, cnn_flops_per_frame, workload_flops
from benchmarks.op_profile import example_feeds, main, node_flops, profile_onnx
from tests.conftest import TINY_CONFIG, run_cli


@pytest.fixture(scope="module")
def tiny_onnx(tiny_export):
    """The tiny model's fp32 graphs by name (model, cnn, bilstm)."""
    return {graph: tiny_export / f"{graph}.onnx" for graph in ("model", "cnn", "bilstm")}


def _flops(result, op=None):
    return sum(round(n["gflop"] * 1e9) for n in result["nodes"] if n["gflop"] is not None and op in (None, n["op"]))


def test_profile_of_the_whole_model_counts_every_flop(tiny_onnx):
    batch, steps = 2, 5
    result = profile_onnx(tiny_onnx["model"], batch=batch, time_steps=steps, runs=3, warmup=1, threads=1)
    # The Conv/LSTM/MatMul/Gemm nodes ONNX Runtime ran add up to the suite's counts (FlopCounterMode for the CNN,
    # the analytic LSTM + heads formula), whatever ONNX Runtime fused them into.
    assert _flops(result, "Conv") == batch * steps * cnn_flops_per_frame(TINY_CONFIG)
    assert _flops(result) == workload_flops(TINY_CONFIG, "model", batch, steps)
    assert result["nodes"] == sorted(result["nodes"], key=lambda n: -n["ms"])
    assert sum(n["share"] for n in result["nodes"]) == pytest.approx(1.0)
    assert sum(v["ms"] for v in result["ops"].values()) == pytest.approx(result["node_ms_total"])
    assert result["call_ms"] > 0 and all(n["ms"] >= 0 for n in result["nodes"])
    lstm = [n for n in result["nodes"] if n["op"] == "LSTM"]
    assert len(lstm) == TINY_CONFIG.num_layers and lstm[0]["output_shape"] == [steps, 2, batch, TINY_CONFIG.hidden_size]


def test_bilstm_graph_and_a_disabled_transformer(tiny_onnx):
    result = profile_onnx(tiny_onnx["bilstm"], batch=1, time_steps=4, runs=2, warmup=0, threads=1,
                          disabled=["NchwcTransformer"])
    assert result["disabled"] == ["NchwcTransformer"]
    assert _flops(result) == bilstm_flops(TINY_CONFIG, 1, 4)
    cnn = profile_onnx(tiny_onnx["cnn"], batch=1, time_steps=2, runs=1, warmup=0, threads=1,
                       disabled=["NchwcTransformer"])
    assert not any("nchwc" in n["name"].lower() for n in cnn["nodes"])  # the layout transform really was off


def test_node_flops_of_matrix_ops():
    assert node_flops("MatMul", [[2, 5, 8], [8, 3]], [[2, 5, 3]]) == 2 * 2 * 5 * 3 * 8
    assert node_flops("Gemm", [[4, 8], [3, 8], [3]], [[4, 3]]) == 2 * 4 * 3 * 8
    assert node_flops("Gemm", [[8, 4], [8, 3]], [[4, 3]]) == 2 * 4 * 3 * 8  # transA
    assert node_flops("Conv", [[1, 16, 8, 8], [32, 4, 3, 3]], [[1, 32, 8, 8]]) == 2 * 32 * 64 * 4 * 9  # groups=4
    assert node_flops("Relu", [[3]], [[3]]) is None
    assert node_flops("Conv", [[1, 2]], []) is None


def test_example_feeds_name_what_they_cannot_fill():
    class Input:
        def __init__(self, name, shape, type_):
            self.name, self.shape, self.type = name, shape, type_

    feeds = example_feeds([Input("frames", ["batch", "time", 3, 4, 4], "tensor(float)"),
                           Input("lengths", ["batch"], "tensor(int64)")], 2, 3)
    assert feeds["frames"].shape == (2, 3, 3, 4, 4) and feeds["lengths"].tolist() == [3, 3]
    with pytest.raises(ValueError, match="dynamic axis 'height'"):
        example_feeds([Input("frames", ["batch", "height"], "tensor(float)")], 1, 1)
    with pytest.raises(ValueError, match="tensor\\(uint8\\)"):
        example_feeds([Input("frames", [1], "tensor(uint8)")], 1, 1)
    with pytest.raises(ValueError, match="runs must be >= 1"):
        profile_onnx("unused.onnx", runs=0)


def test_cli_writes_markdown_json_and_plot(tiny_onnx, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("benchmarks.op_profile", tiny_onnx["model"], "--batch", "1", "--time", "3", "--runs", "2",
                      "--warmup", "0", "--threads", "1", "--top", "5", "--out", out, "--prefix", "p")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "p.json").read_text())
    assert data["batch"] == 1 and data["time_steps"] == 3 and data["threads"] == 1
    md = (out / "p.md").read_text()
    assert "| Conv |" in md and "Slowest 5 nodes" in md and md == proc.stdout.rstrip("\n") + "\n"
    assert (out / "p.png").read_bytes()[:4] == b"\x89PNG" and f"wrote {out / 'p.png'}" in proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--runs", "0"], "--runs must be >= 1"),
    (["--threads", "0"], "--threads >= 1"),
    (["missing.onnx"], "is not an .onnx file"),
])
def test_cli_rejects_bad_arguments(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err
