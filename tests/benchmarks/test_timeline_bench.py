"""``python -m benchmarks.timeline`` in miniature, as a user runs it: both paths timed in one interleaved run with
their exactness recorded, and the peak-memory mode on a short and a longer video (no speed is asserted: speed is
measured, never tested)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("av")
pytest.importorskip("onnxruntime")


def run_bench(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.timeline", *map(str, args)], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_timeline_benchmark_times_both_paths_and_records_exactness(tiny_checkpoint, tiny_export, tmp_path):
    run_bench("--out", tmp_path, "--prefix", "mini", "--checkpoint", tiny_checkpoint, "--onnx-dir", tiny_export,
              "--precisions", "fp32", "--frames", "8", "--steps", "1", "4", "--video-frames", "24", "--video-size",
              "32", "48", "--rounds", "1", "--gap", "0")
    data = json.loads((tmp_path / "mini.json").read_text())
    result = data["result"]
    assert [(r["precision"], r["step"], r["windows"]) for r in result["rows"]] == [("fp32", 1, 17), ("fp32", 4, 5)]
    assert set(result["samples_ms"]) == {"decode"} | {f"{p} fp32 step {s}" for p in ("timeline", "per-window")
                                                      for s in (1, 4)}
    assert all(len(v) == 1 and v[0] > 0 for v in result["samples_ms"].values())
    assert result["rows"][0]["target"] == 8.0 and result["rows"][1]["target"] == 3.0
    assert max(result["exactness_max_abs_dprob"].values()) <= 1e-5
    assert result["video"]["num_frames"] == 24 and "/" not in result["video"]["path"]
    assert data["environment"]["onnxruntime"] and "| fp32 | 4 | 5 |" in (tmp_path / "mini.md").read_text()
    assert (tmp_path / "mini.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_peak_memory_mode_measures_a_short_and_a_long_video(tiny_checkpoint, tiny_export, tmp_path):
    run_bench("--peak-memory", "--out", tmp_path, "--prefix", "mem", "--checkpoint", tiny_checkpoint, "--onnx-dir",
              tiny_export, "--frames", "8", "--steps", "1", "--video-frames", "24", "--long-frames", "80",
              "--memory-size", "16", "16")
    rows = json.loads((tmp_path / "mem.json").read_text())["result"]["rows"]
    assert [(r["video"], r["frames"], r["windows"], r["split"]) for r in rows] == [("short", 24, 17, True),
                                                                                ("long", 80, 73, True)]
    assert all(0 < r["baseline_rss_mb"] <= r["peak_rss_mb"] and r["cli_max_rss_mb"] > 0 and r["traced_peak_mb"] > 0
               for r in rows)
    assert not (tmp_path / "mem.png").exists() and "| long | 80 | 73 |" in (tmp_path / "mem.md").read_text()
