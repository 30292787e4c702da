"""benchmarks.perf_analyzer: the input data it writes from an export, and NVIDIA's perf_analyzer run through it
against the bundled tritonserver, clip model and stream model (skipped with the reason where perf_analyzer cannot
run: `make triton-env` installs it, and it needs libb64)."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from benchmarks.perf_analyzer import (
    PerfAnalyzerUnavailable,
    clip_input_data,
    command,
    find_perf_analyzer,
    main,
    stream_input_data,
)


def test_input_data_has_the_served_models_shapes():
    clips = clip_input_data((16, 12), [2, 5], seed=1)
    assert [e["frames"]["shape"] for e in clips["data"]] == [[2, 3, 16, 12], [5, 3, 16, 12]]
    assert [e["lengths"] for e in clips["data"]] == [{"content": [2], "shape": [1]}, {"content": [5], "shape": [1]}]
    assert len(clips["data"][1]["frames"]["content"]) == 5 * 3 * 16 * 12
    assert any(v != 0 for v in clips["data"][0]["frames"]["content"])  # random frames, never zeros
    (stream,) = stream_input_data((16, 12), 3)["data"]
    assert len(stream) == 3 and all(step["frame"]["shape"] == [3, 16, 12] for step in stream)
    assert stream[0]["frame"]["content"] != stream[1]["frame"]["content"]
    assert command("pa", "grpc://127.0.0.1:8001/cnn_bilstm", "in.json", extra=["-f", "x.csv"]) == [
        "pa", "-m", "cnn_bilstm", "-u", "127.0.0.1:8001", "-i", "grpc", "--input-data", "in.json", "-f", "x.csv"]
    assert command("pa", "http://h:8000/m", "in.json", stream=True, sequence_length=5)[2:] == [
        "m_stream", "-u", "h:8000", "-i", "http", "--input-data", "in.json", "--sequence-length", "5"]


@pytest.mark.parametrize("argv, code, message", [
    (["EXPORT", "ftp://h/m"], 2, "must be grpc://HOST:PORT/NAME"),
    (["EXPORT", "grpc://127.0.0.1:1/m", "--time", "0"], 2, "--time takes T or T,T,"),
    (["/nonexistent", "grpc://127.0.0.1:1/m"], 2, "has no model.onnx"),
    (["EXPORT", "grpc://127.0.0.1:1/m", "--perf-analyzer", "/nonexistent/perf_analyzer"], 3, "not installed"),
])
def test_cli_refuses_what_cannot_run(argv, code, message, tiny_export, capsys):
    assert main([str(tiny_export) if a == "EXPORT" else a for a in argv]) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


@pytest.fixture(scope="module")
def perf_analyzer(server_python):
    try:
        return find_perf_analyzer()
    except PerfAnalyzerUnavailable as e:
        pytest.skip(str(e))


# A fixed number of requests, measured once: no stability windows (a busy machine may never stabilise in them).
FLAGS = ["--concurrency-range", "2", "--request-count", "24"]


@pytest.mark.parametrize("stream", [False, True], ids=["clip", "stream"])
def test_perf_analyzer_loads_the_served_model(stream, perf_analyzer, triton_server, tiny_export, tmp_path):
    url = f"{triton_server.grpc_url}/cnn_bilstm"
    extra = ["--stream", "--sequence-length", "6"] if stream else ["--time", "2,4"]
    fixed = ["--sequence-length-variation", "0"] if stream else []  # 4 whole sequences of 6 frames make the 24
    proc = run_cli("benchmarks.perf_analyzer", tiny_export, url, *extra, "--input-json", tmp_path / "in.json",
                      "--", *FLAGS, *fixed, "-f", tmp_path / "out.csv", timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.startswith(f"$ {perf_analyzer} -m cnn_bilstm{'_stream' if stream else ''} ")
    counts = {k: int(line.split(":")[1]) for line in proc.stdout.splitlines() for k in ("Inference count",
                                                                                          "Execution count")
              if line.strip().startswith(k)}
    assert counts["Inference count"] == 24 and 0 < counts["Execution count"] <= 24  # the stream: 4 sequences of 6
    assert "Successful request count: 24" in proc.stdout  # no failed request
    assert json.loads((tmp_path / "in.json").read_text())["data"]
    assert (tmp_path / "out.csv").read_text().startswith("Concurrency,Inferences/Second,")
