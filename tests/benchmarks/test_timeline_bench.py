"""``python -m benchmarks.timeline`` in miniature, as a user runs it: both paths timed in one interleaved run with
their exactness recorded and plotted per STEP, and the peak-memory mode on a short and a longer video (no speed is
asserted: speed is measured, never tested); a rerun replaces the tool's own files, another file is kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from benchmarks.outputs import is_own_output

pytest.importorskip("av")
pytest.importorskip("onnxruntime")


def run_bench(*args):
    proc = run_cli("benchmarks.timeline", *args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_timeline_benchmark_times_both_paths_and_records_exactness(tiny_checkpoint, tiny_export, tmp_path):
    args = ["--out", tmp_path, "--prefix", "mini", "--checkpoint", tiny_checkpoint, "--onnx-dir", tiny_export,
            "--precisions", "fp32", "--frames", "8", "--video-frames", "24", "--video-size", "32", "48", "--rounds",
            "1", "--gap", "0"]
    proc = run_bench(*args, "--steps", "1", "4")
    data = json.loads((tmp_path / "mini.json").read_text())
    result = data["result"]
    assert data["command"].startswith("python -m benchmarks.timeline --out ") and "round 1/1" in proc.stderr
    assert len(result["load_average_before"]) == 3 and len(result["load_average_after"]) == 3
    assert [(r["precision"], r["step"], r["windows"]) for r in result["rows"]] == [("fp32", 1, 17), ("fp32", 4, 5)]
    assert set(result["samples_ms"]) == {"decode"} | {f"{p} fp32 step {s}" for p in ("timeline", "per-window")
                                                      for s in (1, 4)}
    assert all(len(v) == 1 and v[0] > 0 for v in result["samples_ms"].values())
    assert result["rows"][0]["target"] == 8.0 and result["rows"][1]["target"] == 3.0
    assert max(result["exactness_max_abs_dprob"].values()) <= 1e-5
    assert result["video"]["num_frames"] == 24 and "/" not in result["video"]["path"]
    assert data["environment"]["onnxruntime"] and "| fp32 | 4 | 5 |" in (tmp_path / "mini.md").read_text()
    assert (tmp_path / "mini.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _assert_plotted_per_step(result)
    # A rerun replaces this tool's own files without --force.
    run_bench(*args, "--steps", "8")
    assert [r["step"] for r in json.loads((tmp_path / "mini.json").read_text())["result"]["rows"]] == [8]
    assert "| fp32 | 8 | 3 |" in (tmp_path / "mini.md").read_text()


def _assert_plotted_per_step(result: dict) -> None:
    """The plot: frames per second of both paths (left) and the speedup (right), one point per STEP."""
    plt = pytest.importorskip("matplotlib.pyplot")
    from benchmarks.timeline import plot_timeline

    fig = plot_timeline(result, plt)
    fps, speedup = ({line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}
                    for ax in fig.axes)
    plt.close(fig)
    rows = result["rows"]
    assert fps["timeline fp32"] == ([1, 4], [r["timeline_fps"] for r in rows])
    assert fps["per-window fp32"] == ([1, 4], [r["per_window_fps"] for r in rows])
    assert speedup["fp32"] == ([1, 4], [r["speedup"] for r in rows])


def test_another_file_under_an_output_name_is_kept(tmp_path, capsys):
    from benchmarks.timeline import main

    (tmp_path / "mini.md").write_text("# my notes\n")
    assert main(["--out", str(tmp_path), "--prefix", "mini", "--smoke"]) == 2  # before any export or video
    assert "mini.md" in capsys.readouterr().err and sorted(tmp_path.iterdir()) == [tmp_path / "mini.md"]


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
    assert all(is_own_output(tmp_path / name) for name in ("mem.md", "mem.json"))  # a rerun replaces them


def test_the_recorded_memory_result_renders_to_its_table():
    from benchmarks.timeline_memory import memory_markdown

    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    recorded = results / "2026-12-06-cpu-timeline-memory.json"
    assert memory_markdown(json.loads(recorded.read_text())) == recorded.with_suffix(".md").read_text()
