"""benchmarks.report: a handcrafted pytest-benchmark JSON in, tables and PNGs out, numbers that match the input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import deny_writing

from benchmarks.flops import stated_peak
from benchmarks.report import build_report, compact_table, main
from benchmarks.suite_results import ReportError, load_results

REPO = Path(__file__).resolve().parents[2]
# Every committed pytest-benchmark JSON of the suite (CPU and GPU runs), found by content.
COMMITTED = sorted(p for p in (REPO / "benchmarks" / "results").rglob("*.json")
                   if isinstance(json.loads(p.read_text()), dict) and "benchmarks" in json.loads(p.read_text()))

pytest.importorskip("matplotlib")

ENV = {"device": "cpu", "device_name": "Test CPU (2 cores)", "torch": "2.x", "cuda": "none", "cudnn": "none",
       "onnxruntime": "1.x", "tensorrt": "not installed", "python": "3.x", "package": "0.1.0"}

# (workload, B, T, contender, median seconds, GFLOP)
ROWS = [
    ("model", 1, 1, "eager-fp32", 0.020, 2.3),
    ("model", 1, 1, "ort-fp32", 0.010, 2.3),
    ("model", 1, 16, "eager-fp32", 0.187, 37.1),
    ("model", 1, 16, "ort-fp32", 0.143, 37.1),
    ("cnn", 1, 16, "eager-fp32", 0.180, 37.1),
    ("cnn", 1, 16, "ort-fp32", 0.120, 37.1),
    ("stream", 1, 16, "eager-fp32", 0.016, 2.4),
]


def _bench(workload, b, t, contender, median_s, gflop, env=ENV):
    return {
        "group": f"{workload}-B{b}-T{t}", "name": f"test_latency[{workload}-B{b}-T{t}-{contender}]",
        "fullname": f"benchmarks/test_latency.py::test_latency[{workload}-B{b}-T{t}-{contender}]",
        "params": None, "param": None,
        "extra_info": {"contender": contender, "workload": workload, "batch": b, "time": t, "precision": "fp32",
                       "p50_ms": median_s * 1e3, "p90_ms": median_s * 1.1e3, "p99_ms": median_s * 1.2e3,
                       "gflop": gflop, "flops": gflop * 1e9, "env": env,
                       "model_config": {"backbone": "resnet34", "stem": "cifar", "frame_size": [32, 32],
                                        "num_layers": 2, "hidden_size": 256, "num_classes": 10}},
        "options": {}, "stats": {"min": median_s * 0.9, "max": median_s * 1.3, "mean": median_s * 1.05,
                                 "stddev": 0.001, "rounds": 5, "median": median_s, "iqr": 0.001, "q1": median_s,
                                 "q3": median_s, "iqr_outliers": 0, "stddev_outliers": 0, "outliers": "0;0",
                                 "ld15iqr": median_s, "hd15iqr": median_s, "ops": 1 / median_s, "total": 1.0,
                                 "iterations": 1},
    }


def _write(path, rows=ROWS, env=ENV, scale=1.0):
    data = {"machine_info": {"cpu": {"brand_raw": "x"}}, "commit_info": {"id": "abcdef1234567890"},
            "benchmarks": [_bench(w, b, t, c, m * scale, g, env) for w, b, t, c, m, g in rows],
            "datetime": "2026-11-27T00:00:00", "version": "5.3.1",
            "cnn_bilstm_skipped": [{"test": "model-B1-T1-eager-fp16", "contender": "eager-fp16",
                                    "reason": "eager fp16 needs CUDA"}]}
    path.write_text(json.dumps(data))
    return path


def _table_row(md: str, header_start: str, b: int, t: int) -> list[str]:
    """Cells of row (B, T) of the first table after the heading starting with ``header_start``."""
    section = md.split(f"### {header_start}", 1)[1].split("###", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:2] == [str(b), str(t)]:
            return cells
    raise AssertionError(f"no row B={b} T={t} in section {header_start!r}")


def test_report_tables_and_plots_match_input(tmp_path):
    res = _write(tmp_path / "cpu.json")
    written = build_report([res], tmp_path / "out", prefix="cpu")
    md = written["markdown"].read_text()
    # model B=1,T=16: eager 187 ms, ORT 143 ms -> speedup 187/143 = 1.31x; floor 37.1 GFLOP / 260 GFLOP/s = 143 ms
    cells = _table_row(md, "model", 1, 16)
    assert cells[2] == "37.1"
    assert cells[3] == "187"
    assert cells[4] == "143 (1.31x)"
    peak = stated_peak("Test CPU (2 cores)")[0]
    assert cells[5] == f"{37.1e9 / peak * 1e3:.0f}"
    assert cells[6] == f"{143 / (37.1e9 / peak * 1e3):.2g}x"  # best / floor keeps two digits below 10 (not "1x")
    cells = _table_row(md, "model", 1, 1)
    assert cells[3:5] == ["20.0", "10.0 (2.00x)"]
    cells = _table_row(md, "cnn", 1, 16)
    assert cells[4] == "120 (1.50x)"
    assert "Test CPU (2 cores)" in md and "2026-11-27" in md
    assert "eager-fp16: eager fp16 needs CUDA" in md  # skipped contenders are listed with their reason
    for key in ("latency", "speedup"):
        png = written[key]
        assert png.name == f"cpu-{key}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert f"![latency]({written['latency'].name})" in md


def test_load_results_rows(tmp_path):
    results = load_results(_write(tmp_path / "r.json"))
    assert len(results.rows) == len(ROWS)
    row = results.row("model", 1, 16, "ort-fp32")
    assert row.median_ms == pytest.approx(143.0)
    assert row.p99_ms == pytest.approx(143.0 * 1.2)
    assert results.contenders() == ["eager-fp32", "ort-fp32"]
    assert results.workloads() == ["model", "cnn", "stream"]
    summary = compact_table(results)
    assert re.search(r"model-B1-T16\s+187\s+143 1\.3x", summary)


def test_compare_two_files(tmp_path):
    cpu = _write(tmp_path / "cpu.json")
    gpu_env = dict(ENV, device="cuda", device_name="NVIDIA H100 80GB HBM3")
    gpu = _write(tmp_path / "gpu.json", env=gpu_env, scale=0.05)  # 20x faster everywhere
    md = build_report([cpu, gpu], tmp_path / "out", plots=False)["markdown"].read_text()
    assert "## Comparison" in md and "NVIDIA H100 80GB HBM3" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| model | 1 | 16 | ort-fp32 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[4:] == ["143", "7.15", "20.00"]
    # the GPU section uses the H100 peak for its floor: 37.1 GFLOP / 732 TFLOP/s = 0.051 ms
    gpu_section = md.split("## NVIDIA H100 80GB HBM3", 1)[1]
    assert _table_row(gpu_section, "model", 1, 16)[5] == "0.051"


@pytest.mark.parametrize("content, match", [
    ("not json at all", "is not JSON"),
    (json.dumps({"hello": 1}), "not a pytest-benchmark JSON"),
    (json.dumps({"benchmarks": []}), "holds no benchmarks"),
    (json.dumps({"benchmarks": [{"name": "x", "stats": {"median": 1.0}, "extra_info": {}}]}), "lacks extra_info"),
    (json.dumps({"benchmarks": [{"name": "x", "extra_info": {}}]}), "no stats.median"),
])
def test_bad_input_is_a_clear_error(tmp_path, content, match):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(ReportError, match=match):
        load_results(bad)
    assert issubclass(ReportError, ValueError)


def test_cli_as_a_user_runs_it_on_committed_results(tmp_path):
    """``python -m benchmarks.report`` in a fresh interpreter (where the module runs as ``__main__``), on the committed
    CPU results compared with another committed run."""
    cpu = [p for p in COMMITTED if p.name.endswith("cpu-xeon-2core.json")]
    other = [p for p in COMMITTED if p not in cpu][:1]
    assert cpu and other, COMMITTED
    proc = subprocess.run([sys.executable, "-m", "benchmarks.report", str(cpu[0]), str(other[0]), "--out",
                           str(tmp_path / "o")], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "o" / "report.md").read_text()
    assert md.startswith("# Latency report: ") and "## Comparison: A = " in md and "| ort-fp32 |" in md
    assert "![latency](report-latency.png)" in md and "model-B1-T16" in proc.stdout
    for name in ("report-latency.png", "report-speedup.png"):
        assert (tmp_path / "o" / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("path", COMMITTED, ids=[p.stem for p in COMMITTED])
def test_every_committed_result_is_reported_with_plots(path, tmp_path):
    written = build_report([path], tmp_path, prefix=path.stem)
    assert set(written) == {"markdown", "latency", "speedup"}
    assert written["markdown"].read_text().count("### ") == len(load_results(path).workloads())
    assert all(written[k].read_bytes()[:4] == b"\x89PNG" for k in ("latency", "speedup"))


def test_cli_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing.json"), "--out", str(tmp_path / "o2")]) == 2
    assert "results file not found" in capsys.readouterr().err


def test_report_out_is_checked_before_any_work(tmp_path, capsys, monkeypatch):
    from benchmarks import report

    results = _write(tmp_path / "r.json")

    def run(out, *extra):
        code = report.main([str(results), "--out", str(out), "--no-plots", *extra])
        return code, capsys.readouterr().err

    afile = tmp_path / "afile"
    afile.write_text("x")
    assert run(afile) == (2, f"error: --out {afile} is a file, not a folder\n")
    out = tmp_path / "out"
    (out / "report.md").mkdir(parents=True)
    code, err = run(out)
    assert code == 2 and "is a folder; give a file path ending in .md" in err
    (out / "report.md").rmdir()
    (out / "report.md").write_text("# My own notes\n")
    code, err = run(out)
    assert code == 2 and "already exists; pass --force to replace it" in err
    assert (out / "report.md").read_text() == "# My own notes\n"
    assert run(out, "--force")[0] == 0 and (out / "report.md").read_text().startswith("# Latency report: ")
    assert run(out)[0] == 0  # its own earlier report is replaced by a rerun without --force
    deny_writing(monkeypatch, out)
    assert run(out) == (2, f"error: --out {out}: cannot write in it (permission denied)\n")
